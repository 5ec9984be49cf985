package orchestrator

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/state"
)

const (
	ready  = api.NodeState_NODE_STATE_READY
	down   = api.NodeState_NODE_STATE_DOWN
	active = api.NodeAvailability_NODE_AVAILABILITY_ACTIVE
	pause  = api.NodeAvailability_NODE_AVAILABILITY_PAUSE
	drain  = api.NodeAvailability_NODE_AVAILABILITY_DRAIN
)

func nodesOf(ts []*api.Task) []string {
	var out []string
	for _, t := range ts {
		out = append(out, t.NodeId)
	}
	return out
}

func TestGlobalOneTaskPerEligibleNode(t *testing.T) {
	e := newEnv(t)
	e.addNode("n1", ready, active, nil)
	e.addNode("n2", ready, active, nil)
	e.addNode("paused", ready, pause, nil)
	e.addNode("drained", ready, drain, nil)
	e.addNode("dead", down, active, nil)
	e.addNode("unknown", api.NodeState_NODE_STATE_UNKNOWN, active, nil)
	e.start()
	id := e.createService(globalSpec("agent"))
	e.eventually(func() bool { return len(e.tasks(id)) == 2 }, false, "tasks on n1, n2")
	ts := e.tasks(id)
	assert.ElementsMatch(t, []string{"n1", "n2"}, nodesOf(ts))
	for _, tk := range ts {
		assert.Equal(t, uint64(0), tk.Slot)
		assert.Equal(t, api.TaskState_TASK_STATE_PENDING, tk.Status.State)
		assert.Equal(t, api.TaskState_TASK_STATE_RUNNING, tk.DesiredState)
	}

	// A node that joins later gets one; so does one that becomes ready.
	e.addNode("n3", ready, active, nil)
	e.setNode("unknown", func(n *api.Node) { n.Status.State = ready })
	e.eventually(func() bool { return len(e.occupants(id)) == 4 }, true, "joined nodes get a task")
	assert.ElementsMatch(t, []string{"n1", "n2", "n3", "unknown"}, nodesOf(e.occupants(id)))
	e.eventually(func() bool { return count(e.tasks(id), running) == 4 }, true, "all running")
	assert.Len(t, e.tasks(id), 4, "no duplicates")
}

func TestGlobalDrainAndDown(t *testing.T) {
	e := newEnv(t)
	e.addNode("n1", ready, active, nil)
	e.addNode("n2", ready, active, nil)
	e.addNode("n3", ready, active, nil)
	e.start()
	id := e.createService(globalSpec("agent"))
	e.eventually(func() bool { return count(e.tasks(id), running) == 3 }, true, "running")

	e.setNode("n1", func(n *api.Node) { n.Spec.Availability = drain })
	e.setNode("n2", func(n *api.Node) { n.Status.State = down })
	e.setNode("n3", func(n *api.Node) { n.Spec.Availability = pause })
	e.eventually(func() bool { return len(e.occupants(id)) == 1 }, true, "drained and down nodes' tasks shut down")
	occ := e.occupants(id)
	assert.Equal(t, "n3", occ[0].NodeId, "a paused node keeps its task")
	for _, tk := range e.tasks(id) {
		if tk.NodeId != "n3" {
			assert.Equal(t, api.TaskState_TASK_STATE_SHUTDOWN, tk.DesiredState, tk.NodeId)
		}
	}
	e.eventually(func() bool {
		return count(e.tasks(id), func(t *api.Task) bool {
			return t.NodeId == "n1" && t.Status.State == api.TaskState_TASK_STATE_SHUTDOWN
		}) == 1
	}, true, "drained task stopped")

	// Back to active: the node gets a new task.
	e.setNode("n1", func(n *api.Node) { n.Spec.Availability = active })
	e.eventually(func() bool {
		return count(e.occupants(id), func(t *api.Task) bool { return t.NodeId == "n1" && running(t) }) == 1
	}, true, "n1 runs the service again")

	// A removed node's tasks are deleted.
	require.NoError(t, e.store.Update(e.ctx, func(tx state.WriteTx) error { return tx.DeleteNode("n2") }))
	e.eventually(func() bool {
		return count(e.tasks(id), func(t *api.Task) bool { return t.NodeId == "n2" }) == 0
	}, false, "tasks of the removed node deleted")
}

func TestGlobalConstraints(t *testing.T) {
	e := newEnv(t)
	e.addNode("a1", ready, active, map[string]string{"zone": "a"})
	e.addNode("a2", ready, active, map[string]string{"zone": "a"})
	e.addNode("b1", ready, active, map[string]string{"zone": "b"})
	e.addNode("none", ready, active, nil)
	e.start()
	id := e.createService(globalSpec("agent", "node.labels.zone==a"))
	e.eventually(func() bool { return len(e.tasks(id)) == 2 }, true, "tasks on zone a")
	assert.ElementsMatch(t, []string{"a1", "a2"}, nodesOf(e.tasks(id)))

	other := e.createService(globalSpec("not-b", "node.labels.zone!=b", "node.hostname!=a2"))
	e.eventually(func() bool { return len(e.tasks(other)) == 2 }, true, "tasks off zone b and a2")
	assert.ElementsMatch(t, []string{"a1", "none"}, nodesOf(e.tasks(other)))

	// A node whose labels stop matching loses its task.
	e.eventually(func() bool { return count(e.tasks(id), running) == 2 }, true, "running")
	e.setNode("a2", func(n *api.Node) { n.Spec.Labels["zone"] = "c" })
	e.eventually(func() bool { return len(e.occupants(id)) == 1 }, true, "a2 no longer matches")
	assert.Equal(t, "a1", e.occupants(id)[0].NodeId)

	// Malformed constraints match no node.
	bad := e.createService(globalSpec("bad", "node.labels.zone=a"))
	e.eventually(func() bool { return len(e.tasks(other)) == 2 }, true, "")
	assert.Empty(t, e.tasks(bad))
}

func TestGlobalRestartOnItsNode(t *testing.T) {
	e := newEnv(t)
	e.addNode("n1", ready, active, nil)
	e.start()
	id := e.createService(globalSpec("agent"))
	e.eventually(func() bool { return count(e.tasks(id), running) == 1 }, true, "running")
	e.report(e.tasks(id)[0].Id, api.TaskState_TASK_STATE_FAILED)
	e.eventually(func() bool { return count(e.tasks(id), running) == 1 && len(e.tasks(id)) == 2 }, true, "restarted")
	assert.Equal(t, []string{"n1", "n1"}, nodesOf(e.tasks(id)))
}

func TestNodeMatcher(t *testing.T) {
	n := &api.Node{
		Id:          "id1",
		Role:        api.NodeRole_NODE_ROLE_MANAGER,
		Spec:        &api.NodeSpec{Labels: map[string]string{"zone": "a"}},
		Description: &api.NodeDescription{Hostname: "Host1", Platform: &api.Platform{Os: "linux", Arch: "amd64"}},
	}
	for cons, want := range map[string]bool{
		"node.id==id1":               true,
		"node.id!=id1":               false,
		"node.hostname==host1":       true,
		"node.role==manager":         true,
		"node.role!=manager":         false,
		"node.role==worker":          false,
		"node.platform.os==Linux":    true,
		"node.platform.arch==arm64":  false,
		"node.labels.zone==a":        true,
		"node.labels.zone!=a":        false,
		"node.labels.rack==1":        false,
		"node.labels.rack!=1":        true,
		"node.labels.zone=a":         false, // malformed
		"node.colour==blue":          false, // unknown attribute
		"  node.labels.zone  ==  a ": true,
	} {
		m := newNodeMatcher(&api.TaskSpec{Placement: &api.Placement{Constraints: []string{cons}}})
		assert.Equal(t, want, m.matches(n), cons)
	}
	assert.True(t, newNodeMatcher(nil).matches(n), "no constraints match every node")
}
