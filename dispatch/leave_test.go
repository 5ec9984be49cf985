package dispatch

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/runtime/runtimetest"
)

// leaveConfig is a dispatcher configuration whose heartbeat deadline cannot
// pass during a test: whatever marks a node DOWN, it is not expiry.
func leaveConfig() DispatcherConfig {
	cfg := fastConfig()
	cfg.HeartbeatPeriod = time.Minute
	return cfg
}

func TestLeaveBadSessionRefused(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)

	d, err := NewDispatcher(st, leaveConfig())
	require.NoError(t, err)
	_, err = d.Leave(context.Background(), &api.LeaveRequest{NodeId: "n1", SessionId: "x"})
	assert.Equal(t, codes.Unavailable, status.Code(err), "before Start")

	s := startServer(t, st, leaveConfig(), "")
	c := dial(t, s.addr)
	ctx := context.Background()
	old, _, _ := openSession(t, c, "n1")
	cur, _, _ := openSession(t, c, "n1") // replaces old

	for name, tc := range map[string]struct {
		req  *api.LeaveRequest
		code codes.Code
	}{
		"unknown session":  {&api.LeaveRequest{NodeId: "n1", SessionId: "nope"}, codes.NotFound},
		"replaced session": {&api.LeaveRequest{NodeId: "n1", SessionId: old}, codes.NotFound},
		"other node":       {&api.LeaveRequest{NodeId: "n2", SessionId: cur}, codes.NotFound},
		"no session":       {&api.LeaveRequest{NodeId: "n1"}, codes.InvalidArgument},
		"no node":          {&api.LeaveRequest{SessionId: cur}, codes.InvalidArgument},
	} {
		_, err := c.Leave(ctx, tc.req)
		assert.Equal(t, tc.code, status.Code(err), name)
		hbErr := func() error {
			_, err := c.Heartbeat(ctx, &api.HeartbeatRequest{NodeId: tc.req.GetNodeId(), SessionId: tc.req.GetSessionId()})
			return err
		}()
		assert.Equal(t, status.Code(hbErr), status.Code(err), "%s: same code as Heartbeat", name)
	}
	n := getNode(st, "n1")
	assert.Equal(t, api.NodeState_NODE_STATE_READY, n.GetStatus().GetState(), "a refused Leave writes nothing")
	assert.Empty(t, n.GetStatus().GetMessage())
	_, err = c.Heartbeat(ctx, &api.HeartbeatRequest{NodeId: "n1", SessionId: cur})
	assert.NoError(t, err, "the live session is untouched")
}

// Leave marks the node DOWN at once; the session survives for status
// reports, is exempt from expiry, and ends when the agent closes it. A new
// session marks the node READY again. Time is a fake clock: deterministic.
func TestLeaveMarksDownKeepsSessionForReports(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	createTask(t, st, assignedTask("t1", "n1"))
	updateTask(t, st, "t1", func(x *api.Task) { x.Status.State = api.TaskState_TASK_STATE_RUNNING })
	clk := newFakeClock()
	cfg := DefaultDispatcherConfig() // 5s period, 3 periods
	cfg.Clock = clk
	s := startServer(t, st, cfg, "")
	c := dial(t, s.addr)
	ctx := context.Background()
	sid, stream, closeSession := openSession(t, c, "n1")
	require.Equal(t, api.NodeState_NODE_STATE_READY, nodeState(st, "n1"))

	clk.Advance(time.Second)
	_, err := c.Leave(ctx, &api.LeaveRequest{NodeId: "n1", SessionId: sid})
	require.NoError(t, err)
	n := getNode(st, "n1")
	assert.Equal(t, api.NodeState_NODE_STATE_DOWN, n.GetStatus().GetState(), "DOWN as soon as Leave returns")
	assert.Equal(t, NodeLeftMessage, n.GetStatus().GetMessage())
	assert.Equal(t, clk.Now().UnixNano(), n.GetStatus().GetTimestamp(), "timestamp from the dispatcher's clock")
	assert.Equal(t, "10.0.0.9:1234", n.GetStatus().GetAddr(), "the address is kept")
	leftAt := n.GetStatus().GetTimestamp()

	_, err = c.Leave(ctx, &api.LeaveRequest{NodeId: "n1", SessionId: sid})
	require.NoError(t, err, "Leave is idempotent")
	assert.Equal(t, leftAt, getNode(st, "n1").GetStatus().GetTimestamp(), "a repeated Leave writes nothing")

	// Far past the heartbeat deadline, with no heartbeat: no expiry
	// processing, the node stays DOWN because it left, the session lasts.
	clk.Advance(time.Hour)
	done := make(chan error, 1)
	go func() {
		_, err := c.UpdateTaskStatus(ctx, &api.UpdateTaskStatusRequest{NodeId: "n1", SessionId: sid,
			Updates: []*api.TaskStatusUpdate{{TaskId: "t1", Status: &api.TaskStatus{State: api.TaskState_TASK_STATE_SHUTDOWN}}}})
		done <- err
	}()
	// The status batcher waits on the fake clock: move it until the write.
	require.Eventually(t, func() bool {
		clk.Advance(cfg.StatusBatchInterval)
		return taskState(st, "t1") == api.TaskState_TASK_STATE_SHUTDOWN
	}, waitFor, tick)
	require.NoError(t, <-done, "the session of a node that left still takes status reports")
	n = getNode(st, "n1")
	assert.Equal(t, NodeLeftMessage, n.GetStatus().GetMessage(), "not re-marked as a heartbeat failure")
	assert.Equal(t, leftAt, n.GetStatus().GetTimestamp())
	assert.True(t, s.d.isLive("n1"))

	// The agent closes its session: the session ends.
	closeSession()
	_, err = stream.Recv()
	require.Error(t, err)
	require.Eventually(t, func() bool { return !s.d.isLive("n1") }, waitFor, tick)
	_, err = c.UpdateTaskStatus(ctx, &api.UpdateTaskStatusRequest{NodeId: "n1", SessionId: sid})
	assert.Equal(t, codes.NotFound, status.Code(err))
	_, err = c.Leave(ctx, &api.LeaveRequest{NodeId: "n1", SessionId: sid})
	assert.Equal(t, codes.NotFound, status.Code(err))

	// The node restarts: a new session marks it READY again.
	clk.Advance(time.Minute)
	openSession(t, c, "n1")
	n = getNode(st, "n1")
	assert.Equal(t, api.NodeState_NODE_STATE_READY, n.GetStatus().GetState())
	assert.Empty(t, n.GetStatus().GetMessage())
	assert.Equal(t, clk.Now().UnixNano(), n.GetStatus().GetTimestamp())
}

// A new session that replaces one that left is a normal session again: it
// expires on its heartbeat deadline.
func TestSessionAfterLeaveExpiresAgain(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	clk := newFakeClock()
	cfg := DefaultDispatcherConfig()
	cfg.Clock = clk
	s := startServer(t, st, cfg, "")
	c := dial(t, s.addr)
	sid, _, _ := openSession(t, c, "n1")
	_, err := c.Leave(context.Background(), &api.LeaveRequest{NodeId: "n1", SessionId: sid})
	require.NoError(t, err)
	_, stream, _ := openSession(t, c, "n1")
	require.Equal(t, api.NodeState_NODE_STATE_READY, nodeState(st, "n1"))

	clk.Advance(15 * time.Second)
	// The expiry loop may re-arm its timer from a reading of the clock taken
	// before the advance: keep time moving until it notices.
	require.Eventually(t, func() bool {
		clk.Advance(time.Second)
		return nodeState(st, "n1") == api.NodeState_NODE_STATE_DOWN
	}, waitFor, tick)
	assert.Equal(t, HeartbeatFailureMessage, getNode(st, "n1").GetStatus().GetMessage())
	_, err = stream.Recv()
	assert.Equal(t, codes.DeadlineExceeded, status.Code(err))
}

// The acceptance test: a graceful Stop, with a heartbeat period so long that
// expiry cannot be what marks the node down.
func TestAgentStopLeavesAndReportsFinalStatus(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	for _, id := range []string{"t1", "t2", "done"} {
		createTask(t, st, assignedTask(id, "n1"))
	}
	s := startServer(t, st, leaveConfig(), "")
	rt := runtimetest.New()
	a, err := NewAgent(agentConfig("n1", newManagerList(s.addr).get, rt))
	require.NoError(t, err)
	require.NoError(t, a.Start(context.Background()))
	sv := storeView{st}
	for _, id := range []string{"t1", "t2", "done"} {
		requireTaskState(t, sv, id, api.TaskState_TASK_STATE_RUNNING)
	}
	// One task ends on its own just before the stop: its COMPLETE must not be
	// lost or turned into SHUTDOWN.
	require.NoError(t, rt.Exit("done", 0))
	requireFakeState(t, rt, "done", runtimetest.StateExited)

	before := time.Now().UnixNano()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, a.Stop(ctx))

	// Right after Stop returns: no polling.
	n := getNode(st, "n1")
	assert.Equal(t, api.NodeState_NODE_STATE_DOWN, n.GetStatus().GetState())
	assert.Equal(t, NodeLeftMessage, n.GetStatus().GetMessage())
	assert.GreaterOrEqual(t, n.GetStatus().GetTimestamp(), before)
	for _, id := range []string{"t1", "t2"} {
		ts := getTask(st, id).GetStatus()
		assert.Equal(t, api.TaskState_TASK_STATE_SHUTDOWN, ts.GetState(), id)
		assert.Contains(t, ts.GetMessage(), "the worker is stopping", id)
		fs, _ := rt.State(id)
		assert.Equal(t, runtimetest.StateRemoved, fs, id)
	}
	assert.Equal(t, api.TaskState_TASK_STATE_COMPLETE, taskState(st, "done"))
	assert.Empty(t, rt.Running())
	assert.False(t, a.Connected())
	require.NoError(t, a.Stop(ctx), "Stop is idempotent")

	// The agent closed its session: the dispatcher forgets it.
	require.Eventually(t, func() bool { return !s.d.isLive("n1") }, waitFor, tick)
	assert.Equal(t, NodeLeftMessage, getNode(st, "n1").GetStatus().GetMessage())

	// The worker comes back: READY again; the tasks that were shut down are
	// not started again.
	rt2 := runtimetest.New()
	a2 := startAgent(t, agentConfig("n1", newManagerList(s.addr).get, rt2))
	waitConnected(t, a2)
	n = getNode(st, "n1")
	assert.Equal(t, api.NodeState_NODE_STATE_READY, n.GetStatus().GetState())
	assert.Empty(t, n.GetStatus().GetMessage())
	assert.Empty(t, rt2.Running())
}

// Tasks still being prepared when the agent stops are reported SHUTDOWN too.
func TestAgentStopReportsTasksNotYetStarted(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	createTask(t, st, assignedTask("slow", "n1"))
	s := startServer(t, st, leaveConfig(), "")
	rt := runtimetest.New()
	rt.SetTaskBehavior("slow", runtimetest.Behavior{HoldPrepare: true})
	a, err := NewAgent(agentConfig("n1", newManagerList(s.addr).get, rt))
	require.NoError(t, err)
	require.NoError(t, a.Start(context.Background()))
	requireTaskState(t, storeView{st}, "slow", api.TaskState_TASK_STATE_PREPARING)

	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, a.Stop(ctx))
	assert.Equal(t, api.TaskState_TASK_STATE_SHUTDOWN, taskState(st, "slow"))
	assert.Equal(t, NodeLeftMessage, getNode(st, "n1").GetStatus().GetMessage())
}

// An agent with no session stops at once: it neither waits for a
// connection nor leaves, and the node is left to the heartbeat deadline.
func TestAgentStopWithoutSessionDoesNotLeave(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	createTask(t, st, assignedTask("t1", "n1"))
	s := startServer(t, st, leaveConfig(), "")
	rt := runtimetest.New()
	pd := &partitionDialer{}
	acfg := agentConfig("n1", newManagerList(s.addr).get, rt)
	acfg.Dial = pd.dial
	acfg.BackoffMin, acfg.BackoffMax = time.Millisecond, time.Millisecond // retries all the time
	a, err := NewAgent(acfg)
	require.NoError(t, err)
	require.NoError(t, a.Start(context.Background()))
	requireTaskState(t, storeView{st}, "t1", api.TaskState_TASK_STATE_RUNNING)

	pd.setBlocked(true)
	require.Eventually(t, func() bool { return !a.Connected() && !hasLiveSession(a) }, waitFor, tick)
	// A stop context far longer than the test: Stop must not wait on it.
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	stopped := make(chan error, 1)
	go func() { stopped <- a.Stop(ctx) }()
	select {
	case err := <-stopped:
		require.NoError(t, err)
	case <-time.After(waitFor):
		t.Fatal("Stop waited for a session that could not open")
	}
	fs, _ := rt.State("t1")
	assert.Equal(t, runtimetest.StateRemoved, fs, "tasks are shut down all the same")
	n := getNode(st, "n1")
	assert.NotEqual(t, NodeLeftMessage, n.GetStatus().GetMessage(), "no Leave without a session")
	assert.Equal(t, api.NodeState_NODE_STATE_READY, n.GetStatus().GetState(), "the heartbeat deadline decides")
	assert.Equal(t, api.TaskState_TASK_STATE_RUNNING, taskState(st, "t1"), "nothing was reported")
}

func hasLiveSession(a *Agent) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.live != nil
}

// faultyDispatcher wraps a dispatcher to play an old manager (no Leave), a
// hung Leave, or a hung status write.
type faultyDispatcher struct {
	*Dispatcher
	leave  func(context.Context) error // nil: pass through
	status bool                        // hang UpdateTaskStatus until the caller gives up
	// failShutdown makes UpdateTaskStatus fail a report of a SHUTDOWN state.
	failShutdown bool
}

func (f *faultyDispatcher) Leave(ctx context.Context, req *api.LeaveRequest) (*api.LeaveResponse, error) {
	if f.leave != nil {
		return nil, f.leave(ctx)
	}
	return f.Dispatcher.Leave(ctx, req)
}

func (f *faultyDispatcher) UpdateTaskStatus(ctx context.Context, req *api.UpdateTaskStatusRequest) (*api.UpdateTaskStatusResponse, error) {
	if f.status {
		<-ctx.Done()
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	if f.failShutdown {
		for _, u := range req.GetUpdates() {
			if u.GetStatus().GetState() == api.TaskState_TASK_STATE_SHUTDOWN {
				return nil, status.Error(codes.Unavailable, "injected failure")
			}
		}
	}
	return f.Dispatcher.UpdateTaskStatus(ctx, req)
}

// startFaultyServer serves f, wrapping base's dispatcher, on a new server.
func startFaultyServer(t *testing.T, f *faultyDispatcher, base *server) string {
	t.Helper()
	f.Dispatcher = base.d
	srv := grpc.NewServer()
	api.RegisterDispatcherServer(srv, f)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(lis) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	return lis.Addr().String()
}

// A manager that does not know Leave (or fails it) does not stop the
// agent from shutting its tasks down and reporting them.
func TestAgentStopLeaveUnimplemented(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	createTask(t, st, assignedTask("t1", "n1"))
	base := startServer(t, st, leaveConfig(), "")
	addr := startFaultyServer(t, &faultyDispatcher{leave: func(context.Context) error {
		return status.Error(codes.Unimplemented, "method Leave not implemented")
	}}, base)
	a, err := NewAgent(agentConfig("n1", newManagerList(addr).get, runtimetest.New()))
	require.NoError(t, err)
	require.NoError(t, a.Start(context.Background()))
	requireTaskState(t, storeView{st}, "t1", api.TaskState_TASK_STATE_RUNNING)

	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, a.Stop(ctx))
	assert.Equal(t, api.TaskState_TASK_STATE_SHUTDOWN, taskState(st, "t1"), "final status flushed")
	assert.Equal(t, api.NodeState_NODE_STATE_READY, nodeState(st, "n1"), "without Leave the deadline decides")
}

// A hung Leave is bounded by RPCTimeout; the rest of Stop goes on.
func TestAgentStopLeaveBoundedByRPCTimeout(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	createTask(t, st, assignedTask("t1", "n1"))
	base := startServer(t, st, leaveConfig(), "")
	addr := startFaultyServer(t, &faultyDispatcher{leave: func(ctx context.Context) error {
		<-ctx.Done()
		return status.FromContextError(ctx.Err()).Err()
	}}, base)
	acfg := agentConfig("n1", newManagerList(addr).get, runtimetest.New())
	acfg.RPCTimeout = 200 * time.Millisecond
	a, err := NewAgent(acfg)
	require.NoError(t, err)
	require.NoError(t, a.Start(context.Background()))
	requireTaskState(t, storeView{st}, "t1", api.TaskState_TASK_STATE_RUNNING)

	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	require.NoError(t, a.Stop(ctx), "Stop's own context never ends here")
	assert.Equal(t, api.TaskState_TASK_STATE_SHUTDOWN, taskState(st, "t1"))
}

// When the final reports cannot be written, Stop gives up quietly when its
// context ends, after leaving and shutting the tasks down.
func TestAgentStopFlushBoundedByContext(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	createTask(t, st, assignedTask("t1", "n1"))
	base := startServer(t, st, leaveConfig(), "")
	addr := startFaultyServer(t, &faultyDispatcher{status: true}, base)
	rt := runtimetest.New()
	a, err := NewAgent(agentConfig("n1", newManagerList(addr).get, rt))
	require.NoError(t, err)
	require.NoError(t, a.Start(context.Background()))
	waitConnected(t, a)
	requireFakeState(t, rt, "t1", runtimetest.StateRunning)

	// Long enough for Leave and the shutdown of a fake task on a loaded
	// machine; the flush that follows can only end with it.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	require.NoError(t, a.Stop(ctx))
	fs, _ := rt.State("t1")
	assert.Equal(t, runtimetest.StateRemoved, fs)
	assert.Equal(t, NodeLeftMessage, getNode(st, "n1").GetStatus().GetMessage())
	assert.Equal(t, api.TaskState_TASK_STATE_ASSIGNED, taskState(st, "t1"), "no report got through")
}

// The report queue: waitEmpty returns once acknowledgements empty it, and
// gives up with the count left when its contexts end.
func TestReportQueueWaitEmpty(t *testing.T) {
	q := newReportQueue()
	bg := context.Background()
	assert.Zero(t, q.waitEmpty(bg, bg), "an empty queue needs no wait")

	q.put("a", &api.TaskStatus{State: api.TaskState_TASK_STATE_SHUTDOWN})
	q.put("b", &api.TaskStatus{State: api.TaskState_TASK_STATE_COMPLETE})
	ctx, cancel := context.WithCancel(bg)
	cancel()
	assert.Equal(t, 2, q.waitEmpty(ctx, bg))
	assert.Equal(t, 2, q.waitEmpty(bg, ctx), "a broken session ends the wait too")

	_, seqs := q.snapshot()
	q.put("a", &api.TaskStatus{State: api.TaskState_TASK_STATE_REMOVE}) // supersedes the sent one
	left := make(chan int, 1)
	go func() { left <- q.waitEmpty(bg, bg) }()
	q.ack(seqs)
	_, seqs = q.snapshot()
	require.Len(t, seqs, 1, "the superseding report is still pending")
	q.ack(seqs)
	assert.Zero(t, <-left)
}

// When the session breaks during the flush, Stop gives up quietly at once.
func TestAgentStopFlushEndsWithSession(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	createTask(t, st, assignedTask("t1", "n1"))
	base := startServer(t, st, leaveConfig(), "")
	addr := startFaultyServer(t, &faultyDispatcher{failShutdown: true}, base)
	rt := runtimetest.New()
	a, err := NewAgent(agentConfig("n1", newManagerList(addr).get, rt))
	require.NoError(t, err)
	require.NoError(t, a.Start(context.Background()))
	requireTaskState(t, storeView{st}, "t1", api.TaskState_TASK_STATE_RUNNING)

	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	require.NoError(t, a.Stop(ctx), "Stop's own context never ends here")
	fs, _ := rt.State("t1")
	assert.Equal(t, runtimetest.StateRemoved, fs)
	assert.Equal(t, NodeLeftMessage, getNode(st, "n1").GetStatus().GetMessage())
	assert.Equal(t, api.TaskState_TASK_STATE_RUNNING, taskState(st, "t1"), "the SHUTDOWN report was refused")
}
