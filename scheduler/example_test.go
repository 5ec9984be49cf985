package scheduler_test

import (
	"fmt"

	"github.com/shoalhq/shoal/scheduler"
)

func ExampleScheduler_Schedule() {
	s := scheduler.New()
	for _, n := range []scheduler.Node{
		{ID: "n1", Hostname: "alpha", Role: scheduler.RoleWorker, State: scheduler.NodeReady,
			Labels: map[string]string{"zone": "a"}, Resources: scheduler.Resources{MemoryBytes: 4 << 30}},
		{ID: "n2", Hostname: "beta", Role: scheduler.RoleWorker, State: scheduler.NodeReady,
			Labels: map[string]string{"zone": "b"}, Resources: scheduler.Resources{MemoryBytes: 4 << 30}},
		{ID: "n3", Hostname: "gamma", Role: scheduler.RoleWorker, State: scheduler.NodeReady,
			Availability: scheduler.AvailabilityDrain},
	} {
		if err := s.UpsertNode(n); err != nil {
			panic(err)
		}
	}

	web := scheduler.Task{ServiceID: "web", SpecVersion: 1}
	db := scheduler.Task{ServiceID: "db", SpecVersion: 1,
		Reservations: scheduler.Resources{MemoryBytes: 3 << 30}}
	db.Constraints, _ = scheduler.ParseConstraints([]string{"node.labels.zone==a"})

	var pending []scheduler.Task
	for _, id := range []string{"web.1", "web.2", "web.3", "web.4"} {
		t := web
		t.ID = id
		pending = append(pending, t)
	}
	for _, id := range []string{"db.1", "db.2"} {
		t := db
		t.ID = id
		pending = append(pending, t)
	}

	for _, d := range s.Schedule(pending) {
		if d.Placed() {
			fmt.Println(d.TaskID, "->", d.NodeID)
		} else {
			fmt.Println(d.TaskID, "pending:", d.Reason)
		}
	}
	// Output:
	// web.1 -> n1
	// web.2 -> n2
	// web.3 -> n1
	// web.4 -> n2
	// db.1 -> n1
	// db.2 pending: no suitable node (1 node drained; 1 node does not satisfy constraint node.labels.zone==a; 1 node lacks 3 GiB memory)
}

func ExampleParseConstraint() {
	c, err := scheduler.ParseConstraint(" NODE.Labels.zone == eu-west ")
	fmt.Println(c, err)
	_, err = scheduler.ParseConstraint("node.labels.zone=a")
	fmt.Println(err)
	_, err = scheduler.ParseConstraint("node.foo==x")
	fmt.Println(err)
	// Output:
	// node.labels.zone==eu-west <nil>
	// constraint "node.labels.zone=a": operator must be == or !=
	// constraint "node.foo==x": unknown attribute "node.foo" (want node.id, node.hostname, node.role, node.platform.os, node.platform.arch or node.labels.<key>)
}

// A driver keeps the tasks that fit nowhere and retries them when the
// cluster changes; it calls RemoveTask when it cannot commit a decision.
func ExampleScheduler_Generation() {
	s := scheduler.New()
	small := scheduler.Node{ID: "n1", State: scheduler.NodeReady,
		Resources: scheduler.Resources{NanoCPUs: 1e9, MemoryBytes: 1 << 30}}
	if err := s.UpsertNode(small); err != nil {
		panic(err)
	}
	pending := []scheduler.Task{{ID: "big.1", ServiceID: "big",
		Reservations: scheduler.Resources{NanoCPUs: 2e9}}}

	d := s.Schedule(pending)[0]
	fmt.Println(d.Reason)
	seen := s.Generation()

	// Nothing changed: no need to retry.
	fmt.Println("retry:", s.Generation() != seen)

	// The node is resized; now the task fits.
	small.Resources.NanoCPUs = 4e9
	if err := s.UpsertNode(small); err != nil {
		panic(err)
	}
	fmt.Println("retry:", s.Generation() != seen)
	d = s.Schedule(pending)[0]
	fmt.Println(d.TaskID, "->", d.NodeID)

	// Committing the decision failed: forget it.
	s.RemoveTask(d.TaskID)
	u, _ := s.Usage("n1")
	fmt.Println("tasks on n1:", u.Tasks)
	// Output:
	// no suitable node (1 node lacks 2 CPUs)
	// retry: false
	// retry: true
	// big.1 -> n1
	// tasks on n1: 0
}

// Tasks already running are recorded with AddTask so that spread and the
// replica limit see them.
func ExampleScheduler_AddTask() {
	s := scheduler.New()
	for _, id := range []string{"n1", "n2"} {
		if err := s.UpsertNode(scheduler.Node{ID: id, State: scheduler.NodeReady}); err != nil {
			panic(err)
		}
	}
	if err := s.AddTask(scheduler.Task{ID: "web.1", ServiceID: "web"}, "n1"); err != nil {
		panic(err)
	}
	pending := []scheduler.Task{
		{ID: "web.2", ServiceID: "web", MaxReplicasPerNode: 1},
		{ID: "web.3", ServiceID: "web", MaxReplicasPerNode: 1},
	}
	for _, d := range s.Schedule(pending) {
		if d.Placed() {
			fmt.Println(d.TaskID, "->", d.NodeID)
		} else {
			fmt.Println(d.TaskID, "pending:", d.Reason)
		}
	}
	// Output:
	// web.2 -> n2
	// web.3 pending: no suitable node (2 nodes at max replicas (1) for this service)
}

func ExampleParsePreference() {
	p, err := scheduler.ParsePreference("spread=node.labels.zone")
	fmt.Println(p.SpreadLabel, err)
	_, err = scheduler.ParsePreference("spread=node.hostname")
	fmt.Println(err)
	_, err = scheduler.ParsePreference("binpack=node.labels.zone")
	fmt.Println(err)
	// Output:
	// zone <nil>
	// preference "spread=node.hostname": descriptor "node.hostname" must be node.labels.<key>
	// preference "binpack=node.labels.zone": strategy "binpack" is not supported (want spread=node.labels.<key>)
}

// Preferences spread a service over the values of a node label, whatever
// the number of nodes with each value; the nodes without the label form one
// more group.
func ExampleTask_preferences() {
	s := scheduler.New()
	zones := map[string]string{"n1": "a", "n2": "b", "n3": "b", "n4": "b"} // n5 and n6 have no zone
	for _, id := range []string{"n1", "n2", "n3", "n4", "n5", "n6"} {
		n := scheduler.Node{ID: id, State: scheduler.NodeReady}
		if z, ok := zones[id]; ok {
			n.Labels = map[string]string{"zone": z}
		}
		if err := s.UpsertNode(n); err != nil {
			panic(err)
		}
	}
	prefs, err := scheduler.ParsePreferences([]string{"spread=node.labels.zone"})
	if err != nil {
		panic(err)
	}
	var pending []scheduler.Task
	for i := range 6 {
		pending = append(pending, scheduler.Task{ID: fmt.Sprintf("web.%d", i+1), ServiceID: "web", Preferences: prefs})
	}
	count := map[string]int{}
	for _, d := range s.Schedule(pending) {
		count[zones[d.NodeID]]++
	}
	fmt.Printf("zone a: %d, zone b: %d, no zone: %d\n", count["a"], count["b"], count[""])
	// Output:
	// zone a: 2, zone b: 2, no zone: 2
}
