package scheduler

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const gib = 1 << 30

func readyNode(id string) Node {
	return Node{ID: id, Hostname: "host-" + id, Role: RoleWorker, OS: "linux", Arch: "amd64", State: NodeReady}
}

func newWithNodes(t testing.TB, nodes ...Node) *Scheduler {
	t.Helper()
	s := New()
	for _, n := range nodes {
		require.NoError(t, s.UpsertNode(n))
	}
	return s
}

// tasks returns n tasks of a service, IDs "<svc>.<i>", built from a template.
func tasks(tmpl Task, n int) []Task {
	out := make([]Task, n)
	for i := range out {
		out[i] = tmpl
		out[i].ID = fmt.Sprintf("%s.%d", tmpl.ServiceID, i+1)
	}
	return out
}

func placements(ds []Decision) map[string]int {
	m := map[string]int{}
	for _, d := range ds {
		if d.Placed() {
			m[d.NodeID]++
		}
	}
	return m
}

func mustParse(t testing.TB, ss ...string) []Constraint {
	t.Helper()
	cs, err := ParseConstraints(ss)
	require.NoError(t, err)
	return cs
}

func TestEnumStrings(t *testing.T) {
	assert.Equal(t, "unknown", NodeUnknown.String())
	assert.Equal(t, "down", NodeDown.String())
	assert.Equal(t, "ready", NodeReady.String())
	assert.Equal(t, "disconnected", NodeDisconnected.String())
	assert.Equal(t, "NodeState(9)", NodeState(9).String())
	assert.Equal(t, "active", AvailabilityActive.String())
	assert.Equal(t, "pause", AvailabilityPause.String())
	assert.Equal(t, "drain", AvailabilityDrain.String())
	assert.Equal(t, "Availability(-1)", Availability(-1).String())
}

func TestSpreadEvenly(t *testing.T) {
	s := newWithNodes(t, readyNode("a"), readyNode("b"), readyNode("c"))
	ds := s.Schedule(tasks(Task{ServiceID: "web"}, 6))
	require.Len(t, ds, 6)
	for i, d := range ds {
		assert.Equal(t, fmt.Sprintf("web.%d", i+1), d.TaskID)
		assert.True(t, d.Placed(), d.Reason)
		assert.Empty(t, d.Reason)
	}
	assert.Equal(t, map[string]int{"a": 2, "b": 2, "c": 2}, placements(ds))
	// Round robin in node ID order, the tie-break.
	assert.Equal(t, []string{"a", "b", "c", "a", "b", "c"}, nodeIDs(ds))
	assert.Equal(t, 6, s.TaskCount())
	for _, id := range []string{"a", "b", "c"} {
		assert.Equal(t, 2, s.ServiceTasks("web", id))
	}
}

func nodeIDs(ds []Decision) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.NodeID
	}
	return out
}

func TestSpreadPrefersFewestOfServiceOverTotal(t *testing.T) {
	s := newWithNodes(t, readyNode("a"), readyNode("b"), readyNode("c"))
	// a is busy with other services, b already runs one web task.
	for i := range 5 {
		require.NoError(t, s.AddTask(Task{ID: fmt.Sprintf("db.%d", i), ServiceID: "db"}, "a"))
	}
	require.NoError(t, s.AddTask(Task{ID: "web.0", ServiceID: "web"}, "b"))

	ds := s.Schedule(tasks(Task{ServiceID: "web"}, 2))
	// First: a and c have 0 web tasks; c has fewer in total.
	// Second: a has 0 web tasks, b and c have 1: a despite its 5 tasks.
	assert.Equal(t, []string{"c", "a"}, nodeIDs(ds))
}

func TestSpreadTieBreaksByTotalThenID(t *testing.T) {
	s := newWithNodes(t, readyNode("a"), readyNode("b"), readyNode("c"))
	require.NoError(t, s.AddTask(Task{ID: "x.1", ServiceID: "x"}, "a"))
	require.NoError(t, s.AddTask(Task{ID: "x.2", ServiceID: "x"}, "a"))
	require.NoError(t, s.AddTask(Task{ID: "x.3", ServiceID: "x"}, "c"))
	ds := s.Schedule(tasks(Task{ServiceID: "web"}, 3))
	// totals a=2, b=0, c=1 -> b; then b=1,c=1 -> b (ID) has web already -> c; then a.
	assert.Equal(t, []string{"b", "c", "a"}, nodeIDs(ds))
}

func TestGroupsMixedServices(t *testing.T) {
	s := newWithNodes(t, readyNode("a"), readyNode("b"))
	pending := []Task{
		{ID: "web.1", ServiceID: "web", SpecVersion: 1},
		{ID: "db.1", ServiceID: "db", SpecVersion: 1},
		{ID: "web.2", ServiceID: "web", SpecVersion: 1},
		{ID: "db.2", ServiceID: "db", SpecVersion: 1},
		{ID: "web.3", ServiceID: "web", SpecVersion: 2},
		{ID: "cache.1", ServiceID: "cache", SpecVersion: 1, Constraints: mustParse(t, "node.id==b")},
	}
	ds := s.Schedule(pending)
	require.Len(t, ds, len(pending))
	// Decisions come back in pending order.
	for i, d := range ds {
		assert.Equal(t, pending[i].ID, d.TaskID)
		assert.True(t, d.Placed(), d.Reason)
	}
	// Groups in order of first appearance: web v1 (a, b), db (a, b: totals
	// equal), web v2 (a: web 1 each, totals 2 each), cache (b).
	assert.Equal(t, []string{"a", "a", "b", "b", "a", "b"}, nodeIDs(ds))
	assert.Equal(t, 2, s.ServiceTasks("web", "a"))
	assert.Equal(t, 1, s.ServiceTasks("web", "b"))
	assert.Equal(t, 1, s.ServiceTasks("db", "a"))
	assert.Equal(t, 1, s.ServiceTasks("cache", "b"))
}

func TestGroupKeyIncludesConstraintsAndReservations(t *testing.T) {
	s := newWithNodes(t, readyNode("a"), readyNode("b"))
	pending := []Task{
		{ID: "t1", ServiceID: "svc", Constraints: mustParse(t, "node.id==a")},
		{ID: "t2", ServiceID: "svc", Constraints: mustParse(t, "node.id==b")},
		{ID: "t3", ServiceID: "svc", Constraints: mustParse(t, "node.id==a")},
		{ID: "t4", ServiceID: "svc", Reservations: Resources{MemoryBytes: 1}},
	}
	ds := s.Schedule(pending)
	assert.Equal(t, []string{"a", "b", "a", ""}, nodeIDs(ds))
	assert.Equal(t, "no suitable node (2 nodes lack 1 B memory)", ds[3].Reason)
}

func TestFilterNodeState(t *testing.T) {
	down := readyNode("down")
	down.State = NodeDown
	unknown := readyNode("unknown")
	unknown.State = NodeUnknown
	disc := readyNode("disc")
	disc.State = NodeDisconnected
	s := newWithNodes(t, down, unknown, disc, readyNode("ok"))
	ds := s.Schedule(tasks(Task{ServiceID: "web"}, 3))
	assert.Equal(t, []string{"ok", "ok", "ok"}, nodeIDs(ds))

	require.True(t, s.RemoveNode("ok"))
	ds = s.Schedule(tasks(Task{ServiceID: "api"}, 1))
	assert.Equal(t, "no suitable node (3 nodes not ready)", ds[0].Reason)
}

func TestFilterAvailability(t *testing.T) {
	paused := readyNode("p")
	paused.Availability = AvailabilityPause
	drained1, drained2 := readyNode("d1"), readyNode("d2")
	drained1.Availability, drained2.Availability = AvailabilityDrain, AvailabilityDrain
	s := newWithNodes(t, paused, drained1, drained2)
	ds := s.Schedule(tasks(Task{ServiceID: "web"}, 2))
	for _, d := range ds {
		assert.False(t, d.Placed())
		assert.Equal(t, "no suitable node (1 node paused; 2 nodes drained)", d.Reason)
	}
	assert.Zero(t, s.TaskCount())

	// Reactivating a node lets the retry succeed.
	gen := s.Generation()
	paused.Availability = AvailabilityActive
	require.NoError(t, s.UpsertNode(paused))
	assert.NotEqual(t, gen, s.Generation())
	ds = s.Schedule(tasks(Task{ServiceID: "web"}, 2))
	assert.Equal(t, []string{"p", "p"}, nodeIDs(ds))
}

func TestFilterConstraints(t *testing.T) {
	a := readyNode("a")
	a.Labels = map[string]string{"zone": "a", "ssd": "true"}
	a.Role = RoleManager
	b := readyNode("b")
	b.Labels = map[string]string{"zone": "b"}
	c := readyNode("c")
	c.Arch = "arm64"
	c.Hostname = "Edge"
	s := newWithNodes(t, a, b, c)

	tests := []struct {
		constraints []string
		want        string // node for the one task, or "" when unplaced
		reason      string
	}{
		{[]string{"node.labels.zone==a"}, "a", ""},
		{[]string{"node.labels.zone!=a"}, "b", ""}, // c lacks the label and passes too; b wins by ID
		{[]string{"node.role==manager"}, "a", ""},
		{[]string{"node.role!=manager", "node.platform.arch==ARM64"}, "c", ""},
		{[]string{"node.hostname==edge"}, "c", ""},
		{[]string{"node.id==b"}, "b", ""},
		{[]string{"node.platform.os==windows"}, "", "no suitable node (3 nodes do not satisfy constraint node.platform.os==windows)"},
		{[]string{"node.labels.ssd==true", "node.labels.zone==b"}, "",
			"no suitable node (2 nodes do not satisfy constraint node.labels.ssd==true; 1 node does not satisfy constraint node.labels.zone==b)"},
	}
	for i, tt := range tests {
		t.Run(fmt.Sprint(tt.constraints), func(t *testing.T) {
			svc := fmt.Sprintf("svc%d", i)
			ds := s.Schedule([]Task{{ID: svc + ".1", ServiceID: svc, Constraints: mustParse(t, tt.constraints...)}})
			assert.Equal(t, tt.want, ds[0].NodeID)
			assert.Equal(t, tt.reason, ds[0].Reason)
		})
	}
}

func TestInvalidConstraintInTask(t *testing.T) {
	s := newWithNodes(t, readyNode("a"))
	ds := s.Schedule([]Task{
		{ID: "t1", ServiceID: "svc", Constraints: []Constraint{{Key: "node.foo", Op: OpEq, Value: "x"}}},
		{ID: "t2", ServiceID: "svc"},
	})
	assert.False(t, ds[0].Placed())
	assert.Contains(t, ds[0].Reason, `invalid task "t1": constraint "node.foo==x": unknown attribute "node.foo"`)
	assert.Equal(t, "a", ds[1].NodeID)
}

func TestInvalidPendingTasks(t *testing.T) {
	s := newWithNodes(t, readyNode("a"))
	ds := s.Schedule([]Task{
		{ID: "", ServiceID: "svc"},
		{ID: "t1"},
		{ID: "t2", ServiceID: "svc", Reservations: Resources{NanoCPUs: -1}},
		{ID: "t3", ServiceID: "svc", Reservations: Resources{MemoryBytes: -1}},
		{ID: "t4", ServiceID: "svc"},
	})
	assert.Equal(t, `invalid task "": ID must not be empty`, ds[0].Reason)
	assert.Equal(t, `invalid task "t1": ServiceID must not be empty`, ds[1].Reason)
	assert.Equal(t, `invalid task "t2": Reservations.NanoCPUs must not be negative`, ds[2].Reason)
	assert.Equal(t, `invalid task "t3": Reservations.MemoryBytes must not be negative`, ds[3].Reason)
	assert.Equal(t, []string{"", "", "", "", "a"}, nodeIDs(ds))
	assert.Equal(t, 1, s.TaskCount())
}

func TestDuplicatePendingTaskID(t *testing.T) {
	s := newWithNodes(t, readyNode("a"), readyNode("b"))
	ds := s.Schedule([]Task{{ID: "t", ServiceID: "svc"}, {ID: "t", ServiceID: "svc"}})
	assert.Equal(t, "a", ds[0].NodeID)
	assert.Equal(t, "", ds[1].NodeID)
	assert.Equal(t, `task ID "t" appears more than once in this pass`, ds[1].Reason)
	assert.Equal(t, 1, s.TaskCount())
}

func TestPendingTaskAlreadyRecordedIsMoved(t *testing.T) {
	s := newWithNodes(t, readyNode("a"), readyNode("b"))
	require.NoError(t, s.AddTask(Task{ID: "t", ServiceID: "svc", Reservations: Resources{MemoryBytes: 5}}, "a"))
	require.NoError(t, s.AddTask(Task{ID: "u", ServiceID: "other"}, "b"))
	// Pending again: its old record is dropped, so a is empty and wins.
	ds := s.Schedule([]Task{{ID: "t", ServiceID: "svc"}})
	assert.Equal(t, "a", ds[0].NodeID)
	u, _ := s.Usage("a")
	assert.Equal(t, NodeUsage{Tasks: 1}, u)
	assert.Equal(t, 2, s.TaskCount())
}

func TestReservationsExhaustNode(t *testing.T) {
	a := readyNode("a")
	a.Resources = Resources{NanoCPUs: 4e9, MemoryBytes: 4 * gib}
	b := readyNode("b")
	b.Resources = Resources{NanoCPUs: 4e9, MemoryBytes: 2 * gib}
	s := newWithNodes(t, a, b)

	// 1 GiB each: a takes 4, b takes 2; spread alternates until b is full.
	ds := s.Schedule(tasks(Task{ServiceID: "web", Reservations: Resources{MemoryBytes: gib}}, 7))
	assert.Equal(t, map[string]int{"a": 4, "b": 2}, placements(ds))
	assert.Equal(t, []string{"a", "b", "a", "b", "a", "a", ""}, nodeIDs(ds))
	assert.Equal(t, "no suitable node (2 nodes lack 1 GiB memory)", ds[6].Reason)
	ua, _ := s.Usage("a")
	assert.Equal(t, NodeUsage{Tasks: 4, Reserved: Resources{MemoryBytes: 4 * gib}}, ua)

	// Memory is short on both, CPU is not.
	ds = s.Schedule(tasks(Task{ServiceID: "cpu", Reservations: Resources{NanoCPUs: 5e8, MemoryBytes: 512 << 20}}, 1))
	assert.Equal(t, "no suitable node (2 nodes lack 512 MiB memory)", ds[0].Reason)
	// When both are short, the node counts under CPU, checked first.
	ds = s.Schedule(tasks(Task{ServiceID: "cpu2", Reservations: Resources{NanoCPUs: 5e9, MemoryBytes: gib}}, 1))
	assert.Equal(t, "no suitable node (2 nodes lack 5 CPUs)", ds[0].Reason)

	// Removing a task frees its reservation for the next pass.
	require.True(t, s.RemoveTask("web.1"))
	ds = s.Schedule([]Task{{ID: "late", ServiceID: "late", Reservations: Resources{MemoryBytes: gib}}})
	assert.Equal(t, "a", ds[0].NodeID)
}

func TestRemoveTaskFreesResources(t *testing.T) {
	a := readyNode("a")
	a.Resources = Resources{NanoCPUs: 1e9, MemoryBytes: gib}
	s := newWithNodes(t, a)
	tmpl := Task{ServiceID: "web", Reservations: Resources{NanoCPUs: 5e8}}
	ds := s.Schedule(tasks(tmpl, 3))
	assert.Equal(t, []string{"a", "a", ""}, nodeIDs(ds))
	assert.Equal(t, "no suitable node (1 node lacks 0.5 CPU)", ds[2].Reason)

	gen := s.Generation()
	require.True(t, s.RemoveTask("web.1"))
	assert.False(t, s.RemoveTask("web.1"))
	assert.NotEqual(t, gen, s.Generation())
	u, ok := s.Usage("a")
	require.True(t, ok)
	assert.Equal(t, NodeUsage{Tasks: 1, Reserved: Resources{NanoCPUs: 5e8}}, u)
	assert.Equal(t, 1, s.ServiceTasks("web", "a"))

	retry := tmpl
	retry.ID = "web.3"
	ds = s.Schedule([]Task{retry})
	assert.Equal(t, "a", ds[0].NodeID)
}

func TestZeroCapacityMeansNotReported(t *testing.T) {
	s := newWithNodes(t, readyNode("a")) // no Resources reported
	ds := s.Schedule([]Task{
		{ID: "free", ServiceID: "x"},
		{ID: "cpu", ServiceID: "y", Reservations: Resources{NanoCPUs: 1}},
		{ID: "mem", ServiceID: "z", Reservations: Resources{MemoryBytes: 3 << 20}},
	})
	assert.Equal(t, "a", ds[0].NodeID)
	assert.Equal(t, "no suitable node (1 node lacks 0.000000001 CPU)", ds[1].Reason)
	assert.Equal(t, "no suitable node (1 node lacks 3 MiB memory)", ds[2].Reason)
}

func TestMaxReplicasPerNode(t *testing.T) {
	s := newWithNodes(t, readyNode("a"), readyNode("b"))
	require.NoError(t, s.AddTask(Task{ID: "web.0", ServiceID: "web"}, "a"))
	ds := s.Schedule(tasks(Task{ServiceID: "web", MaxReplicasPerNode: 2}, 4))
	assert.Equal(t, []string{"b", "a", "b", ""}, nodeIDs(ds))
	assert.Equal(t, "no suitable node (2 nodes at max replicas (2) for this service)", ds[3].Reason)

	// Another service is not limited by web's tasks.
	ds = s.Schedule(tasks(Task{ServiceID: "api", MaxReplicasPerNode: 1}, 2))
	assert.Equal(t, []string{"a", "b"}, nodeIDs(ds))

	// Max replicas counts every spec version of the service.
	ds = s.Schedule([]Task{{ID: "web.9", ServiceID: "web", SpecVersion: 7, MaxReplicasPerNode: 2}})
	assert.Equal(t, "no suitable node (2 nodes at max replicas (2) for this service)", ds[0].Reason)
}

func TestExplanationCountsFirstFailingFilter(t *testing.T) {
	var nodes []Node
	add := func(n Node) { nodes = append(nodes, n) }
	for i := range 2 { // not ready (and also drained: counted once)
		n := readyNode(fmt.Sprintf("nr%d", i))
		n.State = NodeDown
		n.Availability = AvailabilityDrain
		add(n)
	}
	d := readyNode("dr")
	d.Availability = AvailabilityDrain
	add(d)
	for i := range 3 { // lack memory
		n := readyNode(fmt.Sprintf("mem%d", i))
		n.Labels = map[string]string{"zone": "a"}
		n.Resources = Resources{NanoCPUs: 8e9, MemoryBytes: 512 << 20}
		add(n)
	}
	z := readyNode("zb")
	z.Labels = map[string]string{"zone": "b"}
	add(z)
	for i := range 2 { // at max replicas
		n := readyNode(fmt.Sprintf("max%d", i))
		n.Labels = map[string]string{"zone": "a"}
		n.Resources = Resources{NanoCPUs: 8e9, MemoryBytes: 8 * gib}
		add(n)
	}
	s := newWithNodes(t, nodes...)
	require.NoError(t, s.AddTask(Task{ID: "old1", ServiceID: "web"}, "max0"))
	require.NoError(t, s.AddTask(Task{ID: "old2", ServiceID: "web"}, "max1"))

	ds := s.Schedule([]Task{{ID: "web.1", ServiceID: "web", MaxReplicasPerNode: 1,
		Constraints:  mustParse(t, "node.labels.zone==a"),
		Reservations: Resources{NanoCPUs: 1e9, MemoryBytes: gib}}})
	assert.Equal(t, "no suitable node (2 nodes not ready; 1 node drained; "+
		"1 node does not satisfy constraint node.labels.zone==a; "+
		"3 nodes lack 1 GiB memory; 2 nodes at max replicas (1) for this service)", ds[0].Reason)
}

func TestExplanationAfterPartialPlacement(t *testing.T) {
	a := readyNode("a")
	a.Resources = Resources{MemoryBytes: 3 * gib / 2}
	b := readyNode("b")
	b.Resources = Resources{MemoryBytes: 4 * gib}
	d := readyNode("d")
	d.Availability = AvailabilityDrain
	s := newWithNodes(t, a, b, d)
	ds := s.Schedule(tasks(Task{ServiceID: "web", Reservations: Resources{MemoryBytes: gib}}, 6))
	assert.Equal(t, []string{"a", "b", "b", "b", "b", ""}, nodeIDs(ds))
	assert.Equal(t, "no suitable node (1 node drained; 2 nodes lack 1 GiB memory)", ds[5].Reason)
}

func TestNoNodes(t *testing.T) {
	s := New()
	ds := s.Schedule(tasks(Task{ServiceID: "web"}, 2))
	for _, d := range ds {
		assert.Equal(t, "no suitable node (no nodes in the cluster)", d.Reason)
	}
	assert.Empty(t, s.Schedule(nil))
}

func TestDeterministic(t *testing.T) {
	build := func(order []int) *Scheduler {
		s := New()
		for _, i := range order {
			n := readyNode(fmt.Sprintf("n%02d", i))
			n.Labels = map[string]string{"rack": fmt.Sprint(i % 3)}
			n.Resources = Resources{NanoCPUs: int64(1+i%4) * 1e9, MemoryBytes: int64(1+i%5) * gib}
			require.NoError(t, s.UpsertNode(n))
		}
		return s
	}
	pending := append(append(
		tasks(Task{ServiceID: "web", Reservations: Resources{NanoCPUs: 5e8, MemoryBytes: gib / 2}}, 40),
		tasks(Task{ServiceID: "db", MaxReplicasPerNode: 1, Constraints: mustParse(t, "node.labels.rack!=0")}, 20)...),
		tasks(Task{ServiceID: "cache"}, 30)...)

	forward := make([]int, 20)
	backward := make([]int, 20)
	for i := range forward {
		forward[i] = i
		backward[i] = 19 - i
	}
	s1, s2 := build(forward), build(backward)
	// Churn the second one so its internal node order differs further.
	require.True(t, s2.RemoveNode("n05"))
	n := readyNode("n05")
	n.Labels = map[string]string{"rack": "2"}
	n.Resources = Resources{NanoCPUs: 2e9, MemoryBytes: gib}
	require.NoError(t, s2.UpsertNode(n))

	d1 := s1.Schedule(pending)
	d2 := s2.Schedule(pending)
	assert.Equal(t, d1, d2)
	assert.Equal(t, d1, build(forward).Schedule(pending))
	var unplaced int
	for _, d := range d1 {
		if !d.Placed() {
			unplaced++
		}
	}
	assert.Positive(t, unplaced, "the set-up should leave some tasks unplaced")
	assert.Less(t, unplaced, len(pending))
}

func TestRemoveNode(t *testing.T) {
	s := newWithNodes(t, readyNode("a"), readyNode("b"), readyNode("c"))
	assert.Equal(t, 3, s.NodeCount())
	ds := s.Schedule(tasks(Task{ServiceID: "web"}, 3))
	require.Equal(t, []string{"a", "b", "c"}, nodeIDs(ds))

	require.True(t, s.RemoveNode("a"))
	assert.False(t, s.RemoveNode("a"))
	assert.False(t, s.RemoveNode("zzz"))
	assert.Equal(t, 2, s.NodeCount())
	// Its task is still recorded until the driver removes it.
	u, ok := s.Usage("a")
	require.True(t, ok)
	assert.Equal(t, 1, u.Tasks)

	ds = s.Schedule([]Task{{ID: "web.4", ServiceID: "web"}, {ID: "web.5", ServiceID: "web"}})
	assert.Equal(t, []string{"b", "c"}, nodeIDs(ds))

	// Coming back, it still has its web task and the fewest tasks in total.
	require.NoError(t, s.UpsertNode(readyNode("a")))
	ds = s.Schedule([]Task{{ID: "web.6", ServiceID: "web"}})
	assert.Equal(t, "a", ds[0].NodeID)

	// A removed node with no tasks left is forgotten entirely.
	require.True(t, s.RemoveNode("a"))
	require.True(t, s.RemoveTask("web.1"))
	require.True(t, s.RemoveTask("web.6"))
	_, ok = s.Usage("a")
	assert.False(t, ok)
	assert.Zero(t, s.ServiceTasks("web", "a"))
}

func TestAddTaskBeforeNode(t *testing.T) {
	s := New()
	require.NoError(t, s.AddTask(Task{ID: "web.1", ServiceID: "web", Reservations: Resources{MemoryBytes: gib}}, "a"))
	assert.Equal(t, 0, s.NodeCount())
	ds := s.Schedule([]Task{{ID: "web.2", ServiceID: "web"}})
	assert.Equal(t, "no suitable node (no nodes in the cluster)", ds[0].Reason)

	a := readyNode("a")
	a.Resources = Resources{MemoryBytes: gib}
	require.NoError(t, s.UpsertNode(a), "the node arrives after its task")
	require.NoError(t, s.UpsertNode(readyNode("b")))
	ds = s.Schedule([]Task{
		{ID: "web.2", ServiceID: "web"},
		{ID: "mem.1", ServiceID: "mem", Reservations: Resources{MemoryBytes: 1}},
	})
	assert.Equal(t, "b", ds[0].NodeID)
	assert.Equal(t, "no suitable node (2 nodes lack 1 B memory)", ds[1].Reason)
}

func TestAddTaskMovesAndValidates(t *testing.T) {
	s := newWithNodes(t, readyNode("a"), readyNode("b"))
	task := Task{ID: "t", ServiceID: "svc", Reservations: Resources{NanoCPUs: 1e9}}
	require.NoError(t, s.AddTask(task, "a"))
	require.NoError(t, s.AddTask(task, "b"))
	ua, _ := s.Usage("a")
	ub, _ := s.Usage("b")
	assert.Equal(t, NodeUsage{}, ua)
	assert.Equal(t, NodeUsage{Tasks: 1, Reserved: Resources{NanoCPUs: 1e9}}, ub)
	assert.Equal(t, 0, s.ServiceTasks("svc", "a"))
	assert.Equal(t, 1, s.ServiceTasks("svc", "b"))

	err := s.AddTask(Task{ID: "x", ServiceID: "svc"}, "")
	assert.ErrorIs(t, err, ErrInvalidTask)
	assert.EqualError(t, err, `invalid task "x": node ID must not be empty`)
	assert.EqualError(t, s.AddTask(Task{ServiceID: "svc"}, "a"), `invalid task "": ID must not be empty`)
	assert.EqualError(t, s.AddTask(Task{ID: "y"}, "a"), `invalid task "y": ServiceID must not be empty`)
	assert.EqualError(t, s.AddTask(Task{ID: "y", ServiceID: "s", Reservations: Resources{MemoryBytes: -5}}, "a"),
		`invalid task "y": Reservations.MemoryBytes must not be negative`)
	assert.Equal(t, 1, s.TaskCount())
}

func TestUpsertNodeValidates(t *testing.T) {
	s := New()
	tests := []struct {
		n   Node
		err string
	}{
		{Node{}, `invalid node "": ID must not be empty`},
		{Node{ID: "a", Role: "boss"}, `invalid node "a": Role "boss" must be "manager", "worker" or empty`},
		{Node{ID: "a", State: 9}, `invalid node "a": State 9 is not a known NodeState`},
		{Node{ID: "a", Availability: -1}, `invalid node "a": Availability -1 is not a known Availability`},
		{Node{ID: "a", Resources: Resources{NanoCPUs: -1}}, `invalid node "a": Resources.NanoCPUs must not be negative`},
		{Node{ID: "a", Resources: Resources{MemoryBytes: -1}}, `invalid node "a": Resources.MemoryBytes must not be negative`},
	}
	for _, tt := range tests {
		err := s.UpsertNode(tt.n)
		assert.EqualError(t, err, tt.err)
		assert.ErrorIs(t, err, ErrInvalidNode)
	}
	assert.Zero(t, s.NodeCount())
	assert.Zero(t, s.Generation())
}

func TestUpsertNodeCopiesLabels(t *testing.T) {
	labels := map[string]string{"zone": "a"}
	n := readyNode("a")
	n.Labels = labels
	s := newWithNodes(t, n)
	labels["zone"] = "b"
	ds := s.Schedule([]Task{{ID: "t", ServiceID: "s", Constraints: mustParse(t, "node.labels.zone==a")}})
	assert.Equal(t, "a", ds[0].NodeID)
}

func TestUpsertNodeUpdatesCapacity(t *testing.T) {
	a := readyNode("a")
	a.Resources = Resources{MemoryBytes: gib}
	s := newWithNodes(t, a)
	tmpl := Task{ServiceID: "web", Reservations: Resources{MemoryBytes: gib}}
	ds := s.Schedule(tasks(tmpl, 2))
	assert.Equal(t, []string{"a", ""}, nodeIDs(ds))

	a.Resources.MemoryBytes = 2 * gib
	require.NoError(t, s.UpsertNode(a))
	ds = s.Schedule(tasks(tmpl, 2)[1:])
	assert.Equal(t, []string{"a"}, nodeIDs(ds))
	u, _ := s.Usage("a")
	assert.Equal(t, NodeUsage{Tasks: 2, Reserved: Resources{MemoryBytes: 2 * gib}}, u)
}

func TestFormatting(t *testing.T) {
	for in, want := range map[int64]string{
		0: "0 B", 100: "100 B", 1023: "1023 B", 1024: "1 KiB", 1536: "1.5 KiB",
		512 << 20: "512 MiB", gib: "1 GiB", 3 * gib / 2: "1.5 GiB", 5 * gib / 4: "1.25 GiB",
		1 << 40: "1 TiB", 1<<63 - 1: "8 EiB",
	} {
		assert.Equal(t, want, formatBytes(in), in)
	}
	for in, want := range map[int64]string{
		5e8: "0.5 CPU", 1e9: "1 CPU", 25e8: "2.5 CPUs", 2e9: "2 CPUs", 1e6: "0.001 CPU",
	} {
		assert.Equal(t, want, formatCPUs(in), in)
	}
}

func TestStateIsConsistentAfterChurn(t *testing.T) {
	s := New()
	for i := range 10 {
		n := readyNode(fmt.Sprintf("n%d", i))
		n.Resources = Resources{NanoCPUs: 4e9, MemoryBytes: 4 * gib}
		require.NoError(t, s.UpsertNode(n))
	}
	res := Resources{NanoCPUs: 1e9, MemoryBytes: gib}
	ds := s.Schedule(tasks(Task{ServiceID: "web", Reservations: res}, 45))
	assert.Len(t, placements(ds), 10)
	placed := 0
	for _, d := range ds {
		if d.Placed() {
			placed++
		}
	}
	assert.Equal(t, 40, placed)
	// Remove everything: all accounting must return to zero.
	for _, d := range ds {
		if d.Placed() {
			require.True(t, s.RemoveTask(d.TaskID))
		}
	}
	assert.Zero(t, s.TaskCount())
	assert.Empty(t, s.services)
	for i := range 10 {
		u, ok := s.Usage(fmt.Sprintf("n%d", i))
		require.True(t, ok)
		assert.Equal(t, NodeUsage{}, u)
	}
	for _, v := range s.svc {
		assert.Zero(t, v, "scratch counts must be reset between passes")
	}
}

func TestGeneration(t *testing.T) {
	s := New()
	g0 := s.Generation()
	a := readyNode("a")
	a.Labels = map[string]string{"zone": "a"}
	require.NoError(t, s.UpsertNode(a))
	g1 := s.Generation()
	assert.NotEqual(t, g0, g1)

	// The same description again (labels in a new map) changes nothing.
	a.Labels = map[string]string{"zone": "a"}
	require.NoError(t, s.UpsertNode(a))
	assert.Equal(t, g1, s.Generation())

	a.Labels["zone"] = "b"
	require.NoError(t, s.UpsertNode(a))
	g2 := s.Generation()
	assert.NotEqual(t, g1, g2)

	// A pass that places nothing and forgets nothing changes nothing.
	ds := s.Schedule([]Task{{ID: "t", ServiceID: "s", Constraints: mustParse(t, "node.labels.zone==a")}})
	require.False(t, ds[0].Placed())
	assert.Equal(t, g2, s.Generation())

	ds = s.Schedule([]Task{{ID: "t", ServiceID: "s"}})
	require.True(t, ds[0].Placed())
	g3 := s.Generation()
	assert.NotEqual(t, g2, g3)

	require.NoError(t, s.AddTask(Task{ID: "u", ServiceID: "s"}, "a"))
	g4 := s.Generation()
	assert.NotEqual(t, g3, g4)
	assert.False(t, s.RemoveTask("nope"))
	assert.False(t, s.RemoveNode("nope"))
	assert.Equal(t, g4, s.Generation())
}
