package dispatch

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/state"
)

func TestDispatcherConfigValidation(t *testing.T) {
	st := newStore(t)
	_, err := NewDispatcher(nil, DispatcherConfig{})
	require.Error(t, err)
	for name, c := range map[string]struct {
		mutate func(*DispatcherConfig)
		field  string
	}{
		"period":     {func(c *DispatcherConfig) { c.HeartbeatPeriod = time.Microsecond }, "HeartbeatPeriod"},
		"jitter":     {func(c *DispatcherConfig) { c.HeartbeatJitter = 1.5 }, "HeartbeatJitter"},
		"multiplier": {func(c *DispatcherConfig) { c.GracePeriodMultiplier = -1 }, "GracePeriodMultiplier"},
		"interval":   {func(c *DispatcherConfig) { c.StatusBatchInterval = -time.Second }, "StatusBatchInterval"},
		"size":       {func(c *DispatcherConfig) { c.StatusBatchSize = -3 }, "StatusBatchSize"},
	} {
		t.Run(name, func(t *testing.T) {
			cfg := DispatcherConfig{}
			c.mutate(&cfg)
			before := cfg
			_, err := NewDispatcher(st, cfg)
			require.Error(t, err)
			assert.Contains(t, err.Error(), "DispatcherConfig."+c.field)
			assert.Equal(t, before.HeartbeatPeriod, cfg.HeartbeatPeriod, "caller's struct is not changed")
		})
	}
	d, err := NewDispatcher(st, DispatcherConfig{})
	require.NoError(t, err)
	assert.Equal(t, 5*time.Second, d.cfg.HeartbeatPeriod)
	assert.Equal(t, 3, d.cfg.GracePeriodMultiplier)
}

func TestUnavailableBeforeStartAndAfterStop(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	d, err := NewDispatcher(st, fastConfig())
	require.NoError(t, err)
	ctx := context.Background()
	_, err = d.Heartbeat(ctx, &api.HeartbeatRequest{NodeId: "n1", SessionId: "x"})
	assert.Equal(t, codes.Unavailable, status.Code(err))
	_, err = d.UpdateTaskStatus(ctx, &api.UpdateTaskStatusRequest{NodeId: "n1", SessionId: "x"})
	assert.Equal(t, codes.Unavailable, status.Code(err))

	s := startServer(t, st, fastConfig(), "")
	c := dial(t, s.addr)
	_, stream, _ := openSession(t, c, "n1")
	s.stop(t)
	_, err = stream.Recv()
	assert.Error(t, err, "stop ends the session stream")
	require.NoError(t, s.d.Stop(ctx), "Stop is idempotent")
	_, err = s.d.Heartbeat(ctx, &api.HeartbeatRequest{NodeId: "n1", SessionId: "x"})
	assert.Equal(t, codes.Unavailable, status.Code(err))
	require.Error(t, s.d.Start(ctx), "a stopped dispatcher cannot start again")
}

func TestSessionMarksNodeReady(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	cfg := fastConfig()
	cfg.Managers = func() []string { return []string{"m1:4242", "m2:4242"} }
	s := startServer(t, st, cfg, "")
	c := dial(t, s.addr)

	stream, err := c.Session(context.Background(), &api.SessionRequest{NodeId: "n1", Addr: "10.0.0.9:1234",
		Description: &api.NodeDescription{Hostname: "worker-1"}})
	require.NoError(t, err)
	msg, err := stream.Recv()
	require.NoError(t, err)
	assert.NotEmpty(t, msg.GetSessionId())
	assert.Equal(t, int64(cfg.HeartbeatPeriod), msg.GetHeartbeatPeriod())
	assert.Equal(t, []string{"m1:4242", "m2:4242"}, msg.GetManagers())

	n := getNode(st, "n1")
	assert.Equal(t, api.NodeState_NODE_STATE_READY, n.GetStatus().GetState())
	assert.Equal(t, "10.0.0.9:1234", n.GetStatus().GetAddr())
	assert.NotZero(t, n.GetStatus().GetTimestamp())
	assert.Equal(t, "worker-1", n.GetDescription().GetHostname())

	resp, err := c.Heartbeat(context.Background(), &api.HeartbeatRequest{NodeId: "n1", SessionId: msg.GetSessionId()})
	require.NoError(t, err)
	p := time.Duration(resp.GetPeriod())
	assert.InDelta(t, float64(cfg.HeartbeatPeriod), float64(p), float64(cfg.HeartbeatPeriod)*cfg.HeartbeatJitter+1)
}

func TestSessionUnknownNodeRefused(t *testing.T) {
	st := newStore(t)
	s := startServer(t, st, fastConfig(), "")
	c := dial(t, s.addr)
	stream, err := c.Session(context.Background(), &api.SessionRequest{NodeId: "ghost"})
	require.NoError(t, err)
	_, err = stream.Recv()
	assert.Equal(t, codes.NotFound, status.Code(err))
	assert.Nil(t, getNode(st, "ghost"))

	stream, err = c.Session(context.Background(), &api.SessionRequest{})
	require.NoError(t, err)
	_, err = stream.Recv()
	assert.Equal(t, codes.InvalidArgument, status.Code(err))
}

func TestHeartbeatBadSession(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	s := startServer(t, st, fastConfig(), "")
	c := dial(t, s.addr)
	_, err := c.Heartbeat(context.Background(), &api.HeartbeatRequest{NodeId: "n1", SessionId: "nope"})
	assert.Equal(t, codes.NotFound, status.Code(err))
	_, err = c.Heartbeat(context.Background(), &api.HeartbeatRequest{NodeId: "n1"})
	assert.Equal(t, codes.InvalidArgument, status.Code(err))
	_, err = c.UpdateTaskStatus(context.Background(), &api.UpdateTaskStatusRequest{NodeId: "n1", SessionId: "nope"})
	assert.Equal(t, codes.NotFound, status.Code(err))
	as, err := c.Assignments(context.Background(), &api.AssignmentsRequest{NodeId: "n1", SessionId: "nope"})
	require.NoError(t, err)
	_, err = as.Recv()
	assert.Equal(t, codes.NotFound, status.Code(err))
}

func TestNewSessionReplacesOld(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	s := startServer(t, st, fastConfig(), "")
	c := dial(t, s.addr)
	old, oldStream, _ := openSession(t, c, "n1")
	cur, _, _ := openSession(t, c, "n1")
	require.NotEqual(t, old, cur)
	_, err := oldStream.Recv()
	assert.Equal(t, codes.Aborted, status.Code(err))
	_, err = c.Heartbeat(context.Background(), &api.HeartbeatRequest{NodeId: "n1", SessionId: old})
	assert.Equal(t, codes.NotFound, status.Code(err))
	_, err = c.Heartbeat(context.Background(), &api.HeartbeatRequest{NodeId: "n1", SessionId: cur})
	assert.NoError(t, err)
	assert.Equal(t, api.NodeState_NODE_STATE_READY, nodeState(st, "n1"))
}

// The heartbeat deadline, driven by an injected clock: deterministic.
func TestHeartbeatDeadlineFakeClock(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	clk := newFakeClock()
	cfg := DefaultDispatcherConfig() // 5s period, 3 periods
	cfg.Clock = clk
	s := startServer(t, st, cfg, "")
	c := dial(t, s.addr)
	sid, stream, _ := openSession(t, c, "n1")

	hb := func() error {
		_, err := c.Heartbeat(context.Background(), &api.HeartbeatRequest{NodeId: "n1", SessionId: sid})
		return err
	}
	for range 5 { // 5 × 14s with a heartbeat each time: never late
		clk.Advance(14 * time.Second)
		require.NoError(t, hb())
	}
	assert.Equal(t, api.NodeState_NODE_STATE_READY, nodeState(st, "n1"))

	clk.Advance(15 * time.Second) // three periods without a heartbeat
	require.Eventually(t, func() bool { return nodeState(st, "n1") == api.NodeState_NODE_STATE_DOWN }, waitFor, tick)
	assert.Equal(t, HeartbeatFailureMessage, getNode(st, "n1").GetStatus().GetMessage())
	_, err := stream.Recv()
	assert.Equal(t, codes.DeadlineExceeded, status.Code(err), "the session ends with the node down")
	assert.Equal(t, codes.NotFound, status.Code(hb()))

	// The node comes back with a new session.
	openSession(t, c, "n1")
	assert.Equal(t, api.NodeState_NODE_STATE_READY, nodeState(st, "n1"))
}

func TestHeartbeatTimeoutMarksNodeDown(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	cfg := fastConfig()
	cfg.HeartbeatPeriod = 50 * time.Millisecond
	cfg.GracePeriodMultiplier = 3
	s := startServer(t, st, cfg, "")
	c := dial(t, s.addr)
	_, stream, _ := openSession(t, c, "n1")
	require.Eventually(t, func() bool { return nodeState(st, "n1") == api.NodeState_NODE_STATE_DOWN }, waitFor, tick)
	_, err := stream.Recv()
	assert.Equal(t, codes.DeadlineExceeded, status.Code(err), "the session ends with the node down: %v", err)
}

func TestStartGraceMarksSilentNodesDown(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "gone", api.NodeState_NODE_STATE_READY)
	createNode(t, st, "back", api.NodeState_NODE_STATE_READY)
	createNode(t, st, "down", api.NodeState_NODE_STATE_DOWN)
	clk := newFakeClock()
	cfg := DefaultDispatcherConfig()
	cfg.Clock = clk
	s := startServer(t, st, cfg, "")
	c := dial(t, s.addr)

	clk.Advance(10 * time.Second)
	sid, _, _ := openSession(t, c, "back")
	clk.Advance(6 * time.Second) // past the 15s grace of the start
	_, err := c.Heartbeat(context.Background(), &api.HeartbeatRequest{NodeId: "back", SessionId: sid})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return nodeState(st, "gone") == api.NodeState_NODE_STATE_DOWN }, waitFor, tick)
	assert.Equal(t, api.NodeState_NODE_STATE_READY, nodeState(st, "back"))
	assert.Equal(t, HeartbeatFailureMessage, getNode(st, "gone").GetStatus().GetMessage())
}

func recvAssignments(t *testing.T, as api.Dispatcher_AssignmentsClient) *api.AssignmentsMessage {
	t.Helper()
	m, err := as.Recv()
	require.NoError(t, err)
	return m
}

func ids(tasks []*api.Task) []string {
	out := make([]string, len(tasks))
	for i, t := range tasks {
		out[i] = t.GetId()
	}
	return out
}

func TestAssignmentsCompleteThenIncremental(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	createNode(t, st, "n2", api.NodeState_NODE_STATE_UNKNOWN)
	createTask(t, st, assignedTask("t1", "n1"))
	createTask(t, st, assignedTask("t2", "n2"))
	pending := assignedTask("t3", "n1")
	pending.Status.State = api.TaskState_TASK_STATE_PENDING
	createTask(t, st, pending)
	dead := assignedTask("t4", "n1")
	dead.Status.State = api.TaskState_TASK_STATE_COMPLETE
	dead.DesiredState = api.TaskState_TASK_STATE_SHUTDOWN
	createTask(t, st, dead)
	deadWanted := assignedTask("t5", "n1") // ended, but still desired running: the agent keeps it
	deadWanted.Status.State = api.TaskState_TASK_STATE_FAILED
	createTask(t, st, deadWanted)

	s := startServer(t, st, fastConfig(), "")
	c := dial(t, s.addr)
	sid, _, _ := openSession(t, c, "n1")
	as, err := c.Assignments(context.Background(), &api.AssignmentsRequest{NodeId: "n1", SessionId: sid})
	require.NoError(t, err)

	m := recvAssignments(t, as)
	assert.Equal(t, api.AssignmentsMessage_TYPE_COMPLETE, m.GetType())
	assert.ElementsMatch(t, []string{"t1", "t5"}, ids(m.GetUpdate()))

	// A status-only change (the agent's own report) sends nothing; the
	// scheduler assigning t3 sends an update.
	updateTask(t, st, "t1", func(x *api.Task) { x.Status.State = api.TaskState_TASK_STATE_RUNNING })
	updateTask(t, st, "t3", func(x *api.Task) { x.Status.State = api.TaskState_TASK_STATE_ASSIGNED })
	m = recvAssignments(t, as)
	assert.Equal(t, api.AssignmentsMessage_TYPE_INCREMENTAL, m.GetType())
	assert.Equal(t, []string{"t3"}, ids(m.GetUpdate()))
	assert.Empty(t, m.GetRemove())

	// Desired state change → update.
	updateTask(t, st, "t1", func(x *api.Task) { x.DesiredState = api.TaskState_TASK_STATE_SHUTDOWN })
	m = recvAssignments(t, as)
	assert.Equal(t, []string{"t1"}, ids(m.GetUpdate()))
	assert.Equal(t, api.TaskState_TASK_STATE_SHUTDOWN, m.GetUpdate()[0].GetDesiredState())

	// Dead with desired shutdown → remove.
	updateTask(t, st, "t1", func(x *api.Task) { x.Status.State = api.TaskState_TASK_STATE_SHUTDOWN })
	m = recvAssignments(t, as)
	assert.Empty(t, m.GetUpdate())
	assert.Equal(t, []string{"t1"}, m.GetRemove())

	// Deleted → remove; moved to another node → remove; a task of another
	// node changes → nothing.
	updateTask(t, st, "t2", func(x *api.Task) { x.DesiredState = api.TaskState_TASK_STATE_SHUTDOWN })
	deleteTask(t, st, "t3")
	m = recvAssignments(t, as)
	assert.Equal(t, []string{"t3"}, m.GetRemove())
	updateTask(t, st, "t5", func(x *api.Task) { x.NodeId = "n2" })
	m = recvAssignments(t, as)
	assert.Equal(t, []string{"t5"}, m.GetRemove())

	// Several tasks in one transaction → one message.
	require.NoError(t, st.Update(context.Background(), func(tx state.WriteTx) error {
		for i := range 5 {
			if err := tx.CreateTask(assignedTask(fmt.Sprintf("b%d", i), "n1")); err != nil {
				return err
			}
		}
		return nil
	}))
	m = recvAssignments(t, as)
	got := ids(m.GetUpdate())
	for len(got) < 5 { // a transaction's events may straddle two reads
		got = append(got, ids(recvAssignments(t, as).GetUpdate())...)
	}
	assert.ElementsMatch(t, []string{"b0", "b1", "b2", "b3", "b4"}, got)
}

func TestWorkerCannotReportForeignTask(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	createNode(t, st, "n2", api.NodeState_NODE_STATE_UNKNOWN)
	createTask(t, st, assignedTask("mine", "n1"))
	createTask(t, st, assignedTask("theirs", "n2"))
	s := startServer(t, st, fastConfig(), "")
	c := dial(t, s.addr)
	sid, _, _ := openSession(t, c, "n1")

	running := &api.TaskStatus{State: api.TaskState_TASK_STATE_RUNNING, Message: "started"}
	_, err := c.UpdateTaskStatus(context.Background(), &api.UpdateTaskStatusRequest{NodeId: "n1", SessionId: sid,
		Updates: []*api.TaskStatusUpdate{
			{TaskId: "mine", Status: running},
			{TaskId: "theirs", Status: running},
			{TaskId: "missing", Status: running},
			{TaskId: "mine", Status: nil},
		}})
	require.NoError(t, err)
	assert.Equal(t, api.TaskState_TASK_STATE_RUNNING, taskState(st, "mine"))
	assert.Equal(t, "started", getTask(st, "mine").GetStatus().GetMessage())
	assert.Equal(t, api.TaskState_TASK_STATE_ASSIGNED, taskState(st, "theirs"), "a worker cannot report another node's task")
	assert.Nil(t, getTask(st, "missing"))

	// Another node's session ID does not help either.
	sid2, _, _ := openSession(t, c, "n2")
	_, err = c.UpdateTaskStatus(context.Background(), &api.UpdateTaskStatusRequest{NodeId: "n1", SessionId: sid2,
		Updates: []*api.TaskStatusUpdate{{TaskId: "mine", Status: &api.TaskStatus{State: api.TaskState_TASK_STATE_FAILED}}}})
	assert.Equal(t, codes.NotFound, status.Code(err))
	assert.Equal(t, api.TaskState_TASK_STATE_RUNNING, taskState(st, "mine"))
}

func TestStatusNeverMovesBackward(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	createTask(t, st, assignedTask("t1", "n1"))
	s := startServer(t, st, fastConfig(), "")
	c := dial(t, s.addr)
	sid, _, _ := openSession(t, c, "n1")
	send := func(state api.TaskState) {
		_, err := c.UpdateTaskStatus(context.Background(), &api.UpdateTaskStatusRequest{NodeId: "n1", SessionId: sid,
			Updates: []*api.TaskStatusUpdate{{TaskId: "t1", Status: &api.TaskStatus{State: state}}}})
		require.NoError(t, err)
	}
	send(api.TaskState_TASK_STATE_RUNNING)
	v := getTask(st, "t1").GetMeta().GetVersion()
	send(api.TaskState_TASK_STATE_PREPARING) // late
	send(api.TaskState_TASK_STATE_RUNNING)   // duplicate
	assert.Equal(t, api.TaskState_TASK_STATE_RUNNING, taskState(st, "t1"))
	assert.Equal(t, v, getTask(st, "t1").GetMeta().GetVersion(), "late and duplicate reports write nothing")
	send(api.TaskState_TASK_STATE_FAILED)
	assert.Equal(t, api.TaskState_TASK_STATE_FAILED, taskState(st, "t1"))
}

func TestStatusWritesAreBatched(t *testing.T) {
	const n = 200
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	require.NoError(t, st.Update(context.Background(), func(tx state.WriteTx) error {
		for i := range n {
			if err := tx.CreateTask(assignedTask(fmt.Sprintf("t%03d", i), "n1")); err != nil {
				return err
			}
		}
		return nil
	}))
	cfg := fastConfig()
	cfg.StatusBatchInterval = 50 * time.Millisecond
	s := startServer(t, st, cfg, "")
	c := dial(t, s.addr)
	sid, _, _ := openSession(t, c, "n1")

	w := st.Watch(state.KindIs(state.KindTask))
	defer w.Cancel()
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, err := c.UpdateTaskStatus(context.Background(), &api.UpdateTaskStatusRequest{NodeId: "n1", SessionId: sid,
				Updates: []*api.TaskStatusUpdate{{TaskId: fmt.Sprintf("t%03d", i),
					Status: &api.TaskStatus{State: api.TaskState_TASK_STATE_RUNNING}}}})
			assert.NoError(t, err)
		})
	}
	wg.Wait()
	// Every RPC returned after its write: all are in the store now.
	indexes := map[uint64]bool{}
	for seen := 0; seen < n; seen++ {
		select {
		case e := <-w.C:
			indexes[e.Index] = true
		case <-time.After(waitFor):
			t.Fatalf("only %d of %d task updates seen", seen, n)
		}
	}
	t.Logf("%d status updates in %d transactions", n, len(indexes))
	assert.Less(t, len(indexes), n/4, "status writes are batched")
	for i := range n {
		assert.Equal(t, api.TaskState_TASK_STATE_RUNNING, taskState(st, fmt.Sprintf("t%03d", i)))
	}
}

func TestStatusBatchSizeCapsTransactions(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	var updates []*api.TaskStatusUpdate
	for i := range 10 {
		id := fmt.Sprintf("t%d", i)
		createTask(t, st, assignedTask(id, "n1"))
		updates = append(updates, &api.TaskStatusUpdate{TaskId: id, Status: &api.TaskStatus{State: api.TaskState_TASK_STATE_RUNNING}})
	}
	cfg := fastConfig()
	cfg.StatusBatchSize = 4
	s := startServer(t, st, cfg, "")
	c := dial(t, s.addr)
	sid, _, _ := openSession(t, c, "n1")
	w := st.Watch(state.KindIs(state.KindTask))
	defer w.Cancel()
	_, err := c.UpdateTaskStatus(context.Background(), &api.UpdateTaskStatusRequest{NodeId: "n1", SessionId: sid, Updates: updates})
	require.NoError(t, err)
	perIndex := map[uint64]int{}
	for range 10 {
		e := <-w.C
		perIndex[e.Index]++
	}
	for _, k := range perIndex {
		assert.LessOrEqual(t, k, 4)
	}
	assert.GreaterOrEqual(t, len(perIndex), 3)
}

// A promotion or demotion reaches the node's session as soon as it is in the
// store, not at the session's next periodic check (an hour away here).
func TestSessionHearsRoleChangeAtOnce(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	createNode(t, st, "m1", api.NodeState_NODE_STATE_READY)
	updateNode := func(id string, fn func(*api.Node)) {
		require.NoError(t, st.Update(context.Background(), func(tx state.WriteTx) error {
			n := tx.GetNode(id)
			fn(n)
			return tx.UpdateNode(n)
		}))
	}
	updateNode("m1", func(n *api.Node) {
		n.Role = api.NodeRole_NODE_ROLE_MANAGER
		n.ManagerStatus = &api.ManagerStatus{RaftId: 1, Addr: "10.0.0.1:4242"}
	})
	s := startServer(t, st, fastConfig(), "")
	c := dial(t, s.addr)
	_, stream, _ := openSession(t, c, "n1")

	// Another node's role change, and an update of this node that keeps its
	// role, send nothing; the promotion that follows is the next message.
	updateNode("m1", func(n *api.Node) { n.Role = api.NodeRole_NODE_ROLE_WORKER; n.ManagerStatus = nil })
	updateNode("n1", func(n *api.Node) { n.Spec = &api.NodeSpec{Labels: map[string]string{"a": "b"}} })
	updateNode("n1", func(n *api.Node) {
		n.Role = api.NodeRole_NODE_ROLE_MANAGER
		n.ManagerStatus = &api.ManagerStatus{RaftId: 7, Addr: "10.0.0.9:4242"}
	})
	msg, err := stream.Recv()
	require.NoError(t, err)
	assert.Equal(t, api.NodeRole_NODE_ROLE_MANAGER, msg.GetRole())
	assert.Equal(t, uint64(7), msg.GetRaftId())
	require.Len(t, msg.GetPeers(), 1)
	assert.Equal(t, "10.0.0.9:4242", msg.GetPeers()[0].GetAddr())

	updateNode("n1", func(n *api.Node) { n.Role = api.NodeRole_NODE_ROLE_WORKER; n.ManagerStatus = nil })
	msg, err = stream.Recv()
	require.NoError(t, err)
	assert.Equal(t, api.NodeRole_NODE_ROLE_WORKER, msg.GetRole())
	assert.Zero(t, msg.GetRaftId())
}

// Removing a node from the store ends its open session at once.
func TestSessionEndsWhenNodeRemoved(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	s := startServer(t, st, fastConfig(), "")
	c := dial(t, s.addr)
	_, stream, _ := openSession(t, c, "n1")
	require.NoError(t, st.Update(context.Background(), func(tx state.WriteTx) error { return tx.DeleteNode("n1") }))
	_, err := stream.Recv()
	require.Error(t, err)
	assert.Equal(t, codes.PermissionDenied, status.Code(err))
	assert.Contains(t, err.Error(), "removed")
}

// A dispatcher that did not run for longer than the grace period (a paused
// VM, a long GC pause) extends every deadline by its stall rather than
// marking every node DOWN; a node that stays silent afterwards still goes
// DOWN once its extended deadline passes.
func TestDispatcherStallDoesNotMarkNodesDown(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_READY) // in the start grace
	clk := newFakeClock()
	var stall atomic.Int64           // added to the next real-time measurement
	cfg := DefaultDispatcherConfig() // 5s period, 3 periods: grace 15s
	cfg.Clock = clk
	cfg.sinceReal = func(t0 time.Time) time.Duration {
		return time.Since(t0) + time.Duration(stall.Swap(0))
	}
	s := startServer(t, st, cfg, "")
	// The expiry loop sleeps one period at a time.
	require.Eventually(t, func() bool { return clk.armedIn(5 * time.Second) }, waitFor, tick)

	// 20s pass while the dispatcher does not run: its 5s sleep ends 15s late.
	stall.Store(int64(20 * time.Second))
	clk.Advance(20 * time.Second)
	require.Eventually(t, func() bool { return counterValue(s.d.m.stalls) == 1 }, waitFor, tick)
	require.Eventually(t, func() bool { return clk.armedIn(5 * time.Second) }, waitFor, tick)
	assert.Equal(t, api.NodeState_NODE_STATE_READY, nodeState(st, "n1"), "the stall is the dispatcher's, not the node's")

	// The deadline moved by 15s (and the real milliseconds the loop took),
	// to just after 30s: still READY at 25s, DOWN by 31s.
	clk.Advance(5 * time.Second)
	require.Eventually(t, func() bool { return clk.armedIn(5 * time.Second) }, waitFor, tick)
	assert.Equal(t, api.NodeState_NODE_STATE_READY, nodeState(st, "n1"))
	clk.Advance(6 * time.Second)
	require.Eventually(t, func() bool { return nodeState(st, "n1") == api.NodeState_NODE_STATE_DOWN }, waitFor, tick)
	assert.Equal(t, 1.0, counterValue(s.d.m.stalls))
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}

// failingSessionStream is a session stream whose every Send fails, as when
// the agent goes away between opening its session and receiving the first
// message.
type failingSessionStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (f failingSessionStream) Context() context.Context { return f.ctx }
func (f failingSessionStream) Send(*api.SessionMessage) error {
	return status.Error(codes.Canceled, "the agent went away")
}

// A node that went away right after the dispatcher marked it READY, before
// it heard of its session, is still marked DOWN when its deadline passes.
func TestSessionLostBeforeFirstMessageStillExpires(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	clk := newFakeClock()
	cfg := DefaultDispatcherConfig() // 5s period, 3 periods
	cfg.Clock = clk
	s := startServer(t, st, cfg, "")

	err := s.d.Session(&api.SessionRequest{NodeId: "n1"}, failingSessionStream{ctx: context.Background()})
	require.Error(t, err)
	assert.Equal(t, api.NodeState_NODE_STATE_READY, nodeState(st, "n1"), "the session was recorded before the send failed")

	require.Eventually(t, func() bool { return clk.armedIn(5 * time.Second) }, waitFor, tick)
	for range 3 {
		clk.Advance(5 * time.Second)
	}
	require.Eventually(t, func() bool { return nodeState(st, "n1") == api.NodeState_NODE_STATE_DOWN }, waitFor, tick,
		"a node READY without a session must not stay READY")
	assert.Equal(t, HeartbeatFailureMessage, getNode(st, "n1").GetStatus().GetMessage())
}
