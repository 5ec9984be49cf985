package scheduler

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// labelled returns a ready node with the given labels.
func labelled(id string, labels map[string]string) Node {
	n := readyNode(id)
	n.Labels = labels
	return n
}

// zoneNodes returns ready nodes "<zone><i>" with the label zone=<zone>, per
// zone the count given.
func zoneNodes(counts map[string]int) []Node {
	var out []Node
	for _, z := range []string{"a", "b", "c", "d"} {
		for i := range counts[z] {
			out = append(out, labelled(fmt.Sprintf("%s%d", z, i), map[string]string{"zone": z}))
		}
	}
	return out
}

func mustPrefs(t testing.TB, ss ...string) []Preference {
	t.Helper()
	ps, err := ParsePreferences(ss)
	require.NoError(t, err)
	return ps
}

// byLabel counts the placed decisions per value of a node label; "-" for
// nodes without it.
func byLabel(t *testing.T, nodes []Node, ds []Decision, key string) map[string]int {
	t.Helper()
	labels := map[string]string{}
	for _, n := range nodes {
		v, ok := n.Labels[key]
		if !ok {
			v = "-"
		}
		labels[n.ID] = v
	}
	out := map[string]int{}
	for _, d := range ds {
		if d.Placed() {
			v, ok := labels[d.NodeID]
			require.True(t, ok, "placed on unknown node %s", d.NodeID)
			out[v]++
		}
	}
	return out
}

func TestPreferenceUnequalZones(t *testing.T) {
	nodes := zoneNodes(map[string]int{"a": 1, "b": 2, "c": 5})
	web := Task{ServiceID: "web", SpecVersion: 1}

	s := newWithNodes(t, nodes...)
	ds := s.Schedule(tasks(web, 9))
	assert.Equal(t, map[string]int{"a": 2, "b": 2, "c": 5}, byLabel(t, nodes, ds, "zone"),
		"without a preference the tasks spread over the nodes")

	web.Preferences = mustPrefs(t, "spread=node.labels.zone")
	s = newWithNodes(t, nodes...)
	ds = s.Schedule(tasks(web, 9))
	for _, d := range ds {
		require.True(t, d.Placed(), d.Reason)
	}
	assert.Equal(t, map[string]int{"a": 3, "b": 3, "c": 3}, byLabel(t, nodes, ds, "zone"))
	// Within a zone the tasks spread over its nodes.
	assert.Equal(t, map[string]int{"a0": 3, "b0": 2, "b1": 1, "c0": 1, "c1": 1, "c2": 1}, placements(ds))
	// Zones take turns, ties going to the smaller value.
	assert.Equal(t, []string{"a0", "b0", "c0", "a0", "b1", "c1", "a0", "b0", "c2"}, nodeIDs(ds))
}

func TestPreferenceNested(t *testing.T) {
	zr := func(id, zone, rack string) Node {
		return labelled(id, map[string]string{"zone": zone, "rack": rack})
	}
	nodes := []Node{
		zr("a-r1-0", "a", "r1"),
		zr("a-r2-0", "a", "r2"), zr("a-r2-1", "a", "r2"), zr("a-r2-2", "a", "r2"),
		zr("b-r1-0", "b", "r1"), zr("b-r1-1", "b", "r1"),
		labelled("b-none", map[string]string{"zone": "b"}),
	}
	s := newWithNodes(t, nodes...)
	ds := s.Schedule(tasks(Task{ServiceID: "web", Preferences: mustPrefs(t, "spread=node.labels.zone", "spread=node.labels.rack")}, 12))
	assert.Equal(t, map[string]int{"a": 6, "b": 6}, byLabel(t, nodes, ds, "zone"))
	// Zone a: 3 per rack. Zone b: 3 on rack r1 and 3 on its node without a rack.
	assert.Equal(t, map[string]int{
		"a-r1-0": 3, "a-r2-0": 1, "a-r2-1": 1, "a-r2-2": 1,
		"b-r1-0": 2, "b-r1-1": 1, "b-none": 3,
	}, placements(ds))

	// The other order: racks first, zones within each rack.
	s = newWithNodes(t, nodes...)
	ds = s.Schedule(tasks(Task{ServiceID: "web", Preferences: mustPrefs(t, "spread=node.labels.rack", "spread=node.labels.zone")}, 12))
	assert.Equal(t, map[string]int{"r1": 4, "r2": 4, "-": 4}, byLabel(t, nodes, ds, "rack"))
	assert.Equal(t, map[string]int{
		"a-r1-0": 2, "b-r1-0": 1, "b-r1-1": 1, // rack r1: 2 in zone a, 2 in zone b
		"a-r2-0": 2, "a-r2-1": 1, "a-r2-2": 1,
		"b-none": 4,
	}, placements(ds))
}

func TestPreferenceNodesWithoutLabel(t *testing.T) {
	nodes := []Node{
		labelled("a0", map[string]string{"zone": "a"}),
		labelled("a1", map[string]string{"zone": "a"}),
		labelled("b0", map[string]string{"zone": "b"}),
		readyNode("n0"), readyNode("n1"),
		labelled("n2", map[string]string{"rack": "r1"}),
		labelled("e0", map[string]string{"zone": ""}), // an empty value is a value, not a missing label
	}
	s := newWithNodes(t, nodes...)
	ds := s.Schedule(tasks(Task{ServiceID: "web", Preferences: mustPrefs(t, "spread=node.labels.zone")}, 8))
	assert.Equal(t, map[string]int{"": 2, "a": 2, "b": 2, "-": 2}, byLabel(t, nodes, ds, "zone"))
	// Values in order, the group without the label last.
	assert.Equal(t, []string{"e0", "a0", "b0", "n0", "e0", "a1", "b0", "n1"}, nodeIDs(ds))

	// No node has the label: one group, the plain spread.
	s = newWithNodes(t, nodes...)
	ds = s.Schedule(tasks(Task{ServiceID: "web", Preferences: mustPrefs(t, "spread=node.labels.nothing")}, 7))
	for _, n := range nodes {
		assert.Equal(t, 1, s.ServiceTasks("web", n.ID), n.ID)
	}
	assert.Len(t, placements(ds), 7)
}

func TestPreferenceCountsRecordedTasks(t *testing.T) {
	nodes := zoneNodes(map[string]int{"a": 2, "b": 2, "c": 2})
	drained := labelled("c9", map[string]string{"zone": "c"})
	drained.Availability = AvailabilityDrain
	nodes = append(nodes, drained)
	s := newWithNodes(t, nodes...)
	// Zone a already runs 3 web tasks, zone c 2 on its drained node: they
	// count although c9 takes no more. Other services do not count.
	for i := range 3 {
		require.NoError(t, s.AddTask(Task{ID: fmt.Sprintf("old.a%d", i), ServiceID: "web"}, "a0"))
	}
	require.NoError(t, s.AddTask(Task{ID: "old.c1", ServiceID: "web"}, "c9"))
	require.NoError(t, s.AddTask(Task{ID: "old.c2", ServiceID: "web"}, "c9"))
	for i := range 5 {
		require.NoError(t, s.AddTask(Task{ID: fmt.Sprintf("db.%d", i), ServiceID: "db"}, "b0"))
	}
	// Tasks recorded on a node that is not described have no labels and
	// count nowhere.
	require.NoError(t, s.AddTask(Task{ID: "old.ghost", ServiceID: "web"}, "ghost"))

	web := Task{ServiceID: "web", SpecVersion: 2, Preferences: mustPrefs(t, "spread=node.labels.zone")}
	ds := s.Schedule(tasks(web, 4))
	// Zones at a 3, b 0, c 2: b twice (b1 has fewer tasks in total than
	// b0, then b0 has fewer web tasks), b again (b and c tie at 2, b is the
	// smaller value), then c (a and b at 3).
	assert.Equal(t, []string{"b1", "b0", "b1", "c0"}, nodeIDs(ds))

	// The next pass sees this one's placements: every zone at 3.
	more := tasks(web, 3)
	for i := range more {
		more[i].ID = fmt.Sprintf("web.more%d", i)
	}
	ds = s.Schedule(more)
	assert.Equal(t, []string{"a1", "b0", "c1"}, nodeIDs(ds))
}

func TestPreferenceCountsEarlierGroupsOfThePass(t *testing.T) {
	nodes := zoneNodes(map[string]int{"a": 1, "b": 1})
	s := newWithNodes(t, nodes...)
	prefs := mustPrefs(t, "spread=node.labels.zone")
	pending := []Task{
		{ID: "v1.1", ServiceID: "web", SpecVersion: 1, Preferences: prefs, Constraints: mustParse(t, "node.labels.zone==a")},
		{ID: "v1.2", ServiceID: "web", SpecVersion: 1, Preferences: prefs, Constraints: mustParse(t, "node.labels.zone==a")},
		{ID: "v2.1", ServiceID: "web", SpecVersion: 2, Preferences: prefs},
		{ID: "v2.2", ServiceID: "web", SpecVersion: 2, Preferences: prefs},
		{ID: "v2.3", ServiceID: "web", SpecVersion: 2, Preferences: prefs},
	}
	ds := s.Schedule(pending)
	// Version 1 is confined to zone a; version 2 evens the zones out first.
	assert.Equal(t, []string{"a0", "a0", "b0", "b0", "a0"}, nodeIDs(ds))
}

func TestPreferenceGroupsByPreferences(t *testing.T) {
	s := newWithNodes(t, zoneNodes(map[string]int{"a": 1, "b": 3})...)
	prefs := mustPrefs(t, "spread=node.labels.zone")
	pending := []Task{
		{ID: "p1", ServiceID: "web", Preferences: prefs},
		{ID: "n1", ServiceID: "web"},
		{ID: "p2", ServiceID: "web", Preferences: mustPrefs(t, "spread=node.labels.zone")}, // equal, another slice
		{ID: "n2", ServiceID: "web"},
	}
	ds := s.Schedule(pending)
	// Group with the preference first: a0, b0. Then the plain spread: b1, b2.
	assert.Equal(t, []string{"a0", "b1", "b0", "b2"}, nodeIDs(ds))
}

func TestPreferenceFiltersStillApply(t *testing.T) {
	prefs := mustPrefs(t, "spread=node.labels.zone")

	t.Run("constraints", func(t *testing.T) {
		s := newWithNodes(t, zoneNodes(map[string]int{"a": 1, "b": 2, "c": 3})...)
		ds := s.Schedule(tasks(Task{ServiceID: "web", Preferences: prefs, Constraints: mustParse(t, "node.labels.zone!=c")}, 6))
		assert.Equal(t, map[string]int{"a0": 3, "b0": 2, "b1": 1}, placements(ds))
	})

	t.Run("not ready and paused nodes", func(t *testing.T) {
		nodes := zoneNodes(map[string]int{"a": 2, "b": 1, "c": 1})
		nodes[0].State = NodeDown                 // a0
		nodes[1].Availability = AvailabilityPause // a1: zone a has no candidate
		s := newWithNodes(t, nodes...)
		ds := s.Schedule(tasks(Task{ServiceID: "web", Preferences: prefs}, 4))
		assert.Equal(t, map[string]int{"b0": 2, "c0": 2}, placements(ds))
	})

	t.Run("max replicas per node fill a zone", func(t *testing.T) {
		s := newWithNodes(t, zoneNodes(map[string]int{"a": 1, "b": 3})...)
		ds := s.Schedule(tasks(Task{ServiceID: "web", Preferences: prefs, MaxReplicasPerNode: 1}, 5))
		// Zone a fills after one task; b takes the rest, one per node.
		assert.Equal(t, []string{"a0", "b0", "b1", "b2", ""}, nodeIDs(ds))
		assert.Equal(t, "no suitable node (4 nodes at max replicas (1) for this service)", ds[4].Reason)
	})

	t.Run("resources fill a zone", func(t *testing.T) {
		nodes := zoneNodes(map[string]int{"a": 1, "b": 1, "c": 1})
		for i := range nodes {
			nodes[i].Resources = Resources{NanoCPUs: 4e9, MemoryBytes: 4 * gib}
		}
		nodes[0].Resources.MemoryBytes = gib // a0 takes one task
		s := newWithNodes(t, nodes...)
		ds := s.Schedule(tasks(Task{ServiceID: "web", Preferences: prefs, Reservations: Resources{MemoryBytes: gib}}, 10))
		assert.Equal(t, map[string]int{"a0": 1, "b0": 4, "c0": 4}, placements(ds))
		assert.Equal(t, "no suitable node (3 nodes lack 1 GiB memory)", ds[9].Reason)
	})

	t.Run("host ports", func(t *testing.T) {
		s := newWithNodes(t, zoneNodes(map[string]int{"a": 1, "b": 2})...)
		require.NoError(t, s.AddTask(Task{ID: "api.1", ServiceID: "api", HostPorts: []HostPort{{80, ProtocolTCP}}}, "b0"))
		ds := s.Schedule(tasks(Task{ServiceID: "web", Preferences: prefs, HostPorts: []HostPort{{80, ProtocolTCP}}}, 3))
		assert.Equal(t, []string{"a0", "b1", ""}, nodeIDs(ds))
		assert.Equal(t, "no suitable node (3 nodes have host port 80/tcp in use)", ds[2].Reason)
	})
}

func TestPreferenceExplanationMatchesPlainSpread(t *testing.T) {
	nodes := zoneNodes(map[string]int{"a": 2, "b": 2, "c": 2})
	nodes[0].State = NodeDown
	nodes[1].Availability = AvailabilityDrain
	for i := 2; i < len(nodes); i++ {
		nodes[i].Resources = Resources{NanoCPUs: 2e9, MemoryBytes: 2 * gib}
	}
	nodes[5].Labels["disk"] = "hdd"
	tmpl := Task{ServiceID: "db", MaxReplicasPerNode: 2, Constraints: mustParse(t, "node.labels.disk!=hdd"),
		Reservations: Resources{NanoCPUs: 1e9}}

	plain := newWithNodes(t, nodes...).Schedule(tasks(tmpl, 8))
	tmpl.Preferences = mustPrefs(t, "spread=node.labels.zone", "spread=node.labels.disk")
	spread := newWithNodes(t, nodes...).Schedule(tasks(tmpl, 8))
	require.Equal(t, len(plain), len(spread))
	assert.Equal(t, placements(plain), placements(spread))
	want := "no suitable node (1 node not ready; 1 node drained; 1 node does not satisfy constraint node.labels.disk!=hdd; " +
		"3 nodes lack 1 CPU)"
	for i := range plain {
		assert.Equal(t, plain[i].Reason, spread[i].Reason, plain[i].TaskID)
	}
	assert.Equal(t, map[string]int{"b0": 2, "b1": 2, "c0": 2}, placements(spread))
	assert.False(t, spread[6].Placed())
	assert.Equal(t, want, spread[7].Reason)
}

func TestPreferenceInvalidInTask(t *testing.T) {
	s := newWithNodes(t, readyNode("a"))
	ds := s.Schedule([]Task{
		{ID: "bad.1", ServiceID: "bad", Preferences: []Preference{{SpreadLabel: "zone"}, {SpreadLabel: "my rack"}}},
		{ID: "good.1", ServiceID: "good", Preferences: []Preference{{SpreadLabel: "zone"}}},
	})
	assert.False(t, ds[0].Placed())
	assert.Equal(t, `invalid task "bad.1": preference "spread=node.labels.my rack": label key "my rack" must not contain white space`, ds[0].Reason)
	assert.Equal(t, "a", ds[1].NodeID)
	assert.Equal(t, 1, s.TaskCount())
}

func TestPreferenceNoCandidates(t *testing.T) {
	s := New()
	ds := s.Schedule(tasks(Task{ServiceID: "web", Preferences: mustPrefs(t, "spread=node.labels.zone")}, 2))
	assert.Equal(t, "no suitable node (no nodes in the cluster)", ds[0].Reason)

	down := labelled("a0", map[string]string{"zone": "a"})
	down.State = NodeDown
	s = newWithNodes(t, down)
	require.NoError(t, s.AddTask(Task{ID: "old", ServiceID: "web"}, "a0"))
	ds = s.Schedule(tasks(Task{ServiceID: "web", Preferences: mustPrefs(t, "spread=node.labels.zone")}, 1))
	assert.Equal(t, "no suitable node (1 node not ready)", ds[0].Reason)
}

func TestPreferenceDuplicateTaskID(t *testing.T) {
	s := newWithNodes(t, zoneNodes(map[string]int{"a": 1, "b": 1})...)
	prefs := mustPrefs(t, "spread=node.labels.zone")
	ds := s.Schedule([]Task{{ID: "t", ServiceID: "web", Preferences: prefs}, {ID: "t", ServiceID: "web", Preferences: prefs}})
	assert.Equal(t, "a0", ds[0].NodeID)
	assert.Equal(t, `task ID "t" appears more than once in this pass`, ds[1].Reason)
}

func TestPreferenceDeterministic(t *testing.T) {
	// The same nodes described in different orders give the same decisions.
	nodes := zoneNodes(map[string]int{"a": 3, "b": 2, "c": 4, "d": 1})
	for i := range nodes {
		if i%3 == 0 {
			nodes[i].Labels["rack"] = fmt.Sprintf("r%d", i%2)
		}
	}
	tmpl := Task{ServiceID: "web", Preferences: mustPrefs(t, "spread=node.labels.zone", "spread=node.labels.rack")}
	var first []string
	for round := range 5 {
		order := append([]Node(nil), nodes...)
		for i := range order {
			j := (i*7 + round*3) % len(order)
			order[i], order[j] = order[j], order[i]
		}
		ds := newWithNodes(t, order...).Schedule(tasks(tmpl, 25))
		if round == 0 {
			first = nodeIDs(ds)
			continue
		}
		assert.Equal(t, first, nodeIDs(ds), "round %d", round)
	}
}
