package dispatch

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/state"
	"github.com/shoalhq/shoal/runtime/runtimetest"
)

// managerList is a Managers func whose answer tests change.
type managerList struct{ v atomic.Value }

func newManagerList(addrs ...string) *managerList {
	m := &managerList{}
	m.set(addrs...)
	return m
}

func (m *managerList) set(addrs ...string) { m.v.Store(addrs) }
func (m *managerList) get() []string       { return m.v.Load().([]string) }

func agentConfig(node string, managers func() []string, rt *runtimetest.Runtime) AgentConfig {
	return AgentConfig{
		NodeID:              node,
		Managers:            managers,
		Runtime:             rt,
		BackoffMin:          10 * time.Millisecond,
		BackoffMax:          50 * time.Millisecond,
		StatusBatchInterval: 2 * time.Millisecond,
		Description:         &api.NodeDescription{Hostname: node + "-host"},
		Insecure:            true, // the test dispatchers serve plaintext
	}
}

func startAgent(t *testing.T, cfg AgentConfig) *Agent {
	t.Helper()
	a, err := NewAgent(cfg)
	require.NoError(t, err)
	require.NoError(t, a.Start(context.Background()))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		require.NoError(t, a.Stop(ctx))
	})
	return a
}

func waitConnected(t *testing.T, a *Agent) {
	t.Helper()
	require.Eventually(t, a.Connected, waitFor, tick, "agent never connected")
}

func requireTaskState(t *testing.T, s storeView, id string, want api.TaskState) {
	t.Helper()
	require.Eventually(t, func() bool { return taskState(s.store, id) == want }, waitFor, tick,
		"task %s never reached %v (is %v)", id, want, func() api.TaskState { return taskState(s.store, id) }())
}

func requireFakeState(t *testing.T, rt *runtimetest.Runtime, id string, want runtimetest.State) {
	t.Helper()
	require.Eventually(t, func() bool { s, ok := rt.State(id); return ok && s == want }, waitFor, tick,
		"fake task %s never reached %v", id, want)
}

func TestAgentConfigValidation(t *testing.T) {
	_, err := NewAgent(AgentConfig{})
	require.Error(t, err)
	for _, field := range []string{"AgentConfig.NodeID", "AgentConfig.Managers", "AgentConfig.Runtime", "AgentConfig.TransportCredentials"} {
		assert.Contains(t, err.Error(), field)
	}

	// Without credentials the agent is refused unless plaintext is asked for.
	cfg := agentConfig("n1", func() []string { return nil }, runtimetest.New())
	cfg.Insecure = false
	_, err = NewAgent(cfg)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "AgentConfig.TransportCredentials: must not be nil")
	cfg.TransportCredentials = insecure.NewCredentials() // any credentials will do for validation
	_, err = NewAgent(cfg)
	require.NoError(t, err)

	cfg = agentConfig("n1", func() []string { return nil }, runtimetest.New())
	cfg.BackoffMin, cfg.BackoffMax = time.Second, time.Millisecond
	_, err = NewAgent(cfg)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "AgentConfig.BackoffMax")

	a, err := NewAgent(agentConfig("n1", func() []string { return nil }, runtimetest.New()))
	require.NoError(t, err)
	require.NoError(t, a.Stop(context.Background()), "Stop before Start")
	assert.ErrorIs(t, a.Err(), errdefs.ErrStopped)
	assert.ErrorIs(t, a.Start(context.Background()), errdefs.ErrStopped)
}

func TestAgentRunsTaskLifecycle(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	createTask(t, st, assignedTask("t1", "n1"))
	s := startServer(t, st, agentServerConfig(), "")
	rt := runtimetest.New()
	a := startAgent(t, agentConfig("n1", newManagerList(s.addr).get, rt))
	sv := storeView{st}

	select {
	case <-a.Ready():
	case <-time.After(waitFor):
		t.Fatal("agent never became ready")
	}
	assert.Equal(t, api.NodeState_NODE_STATE_READY, nodeState(st, "n1"))
	assert.Equal(t, "n1-host", getNode(st, "n1").GetDescription().GetHostname())
	requireTaskState(t, sv, "t1", api.TaskState_TASK_STATE_RUNNING)
	requireFakeState(t, rt, "t1", runtimetest.StateRunning)

	// A task assigned later is started too (incremental assignment).
	createTask(t, st, assignedTask("t2", "n1"))
	requireTaskState(t, sv, "t2", api.TaskState_TASK_STATE_RUNNING)

	// Desired SHUTDOWN stops it and reports SHUTDOWN; the dead task then
	// leaves the assignments and is removed from the runtime.
	updateTask(t, st, "t1", func(x *api.Task) { x.DesiredState = api.TaskState_TASK_STATE_SHUTDOWN })
	requireTaskState(t, sv, "t1", api.TaskState_TASK_STATE_SHUTDOWN)
	requireFakeState(t, rt, "t1", runtimetest.StateRemoved)
	assert.Equal(t, 1, rt.CallCount("t1", "Start"))
	_, ok := rt.State("t2")
	require.True(t, ok)
	requireFakeState(t, rt, "t2", runtimetest.StateRunning)
}

func TestAgentTaskExitCodes(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	rt := runtimetest.New()
	rt.SetTaskBehavior("bad", runtimetest.Behavior{ExitCode: runtimetest.Code(3)})
	rt.SetTaskBehavior("good", runtimetest.Behavior{ExitCode: runtimetest.Code(0)})
	rt.SetTaskBehavior("noprep", runtimetest.Behavior{PrepareErr: errors.New("disk full")})
	createTask(t, st, assignedTask("bad", "n1"))
	createTask(t, st, assignedTask("good", "n1"))
	createTask(t, st, assignedTask("noprep", "n1"))
	createTask(t, st, assignedTask("invalid", "n1", "")) // empty program: the runtime refuses it
	s := startServer(t, st, agentServerConfig(), "")
	startAgent(t, agentConfig("n1", newManagerList(s.addr).get, rt))
	sv := storeView{st}

	requireTaskState(t, sv, "bad", api.TaskState_TASK_STATE_FAILED)
	bad := getTask(st, "bad").GetStatus()
	assert.Equal(t, int32(3), bad.GetExitCode())
	assert.Contains(t, bad.GetErr(), "exit code 3")

	requireTaskState(t, sv, "good", api.TaskState_TASK_STATE_COMPLETE)
	assert.Zero(t, getTask(st, "good").GetStatus().GetExitCode())

	requireTaskState(t, sv, "noprep", api.TaskState_TASK_STATE_FAILED)
	assert.Contains(t, getTask(st, "noprep").GetStatus().GetErr(), "disk full")

	requireTaskState(t, sv, "invalid", api.TaskState_TASK_STATE_REJECTED)
	assert.Contains(t, getTask(st, "invalid").GetStatus().GetErr(), "Spec.Command")
}

func TestAgentReconcilesAfterManagerOutage(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	for _, id := range []string{"keep", "stop", "gone", "exits"} {
		createTask(t, st, assignedTask(id, "n1"))
	}
	s1 := startServer(t, st, agentServerConfig(), "")
	mgrs := newManagerList(s1.addr)
	rt := runtimetest.New()
	a := startAgent(t, agentConfig("n1", mgrs.get, rt))
	sv := storeView{st}
	for _, id := range []string{"keep", "stop", "gone", "exits"} {
		requireTaskState(t, sv, id, api.TaskState_TASK_STATE_RUNNING)
	}

	// The manager goes away (leader lost). Tasks keep running.
	s1.stop(t)
	require.Eventually(t, func() bool { return !a.Connected() }, waitFor, tick)
	assert.Len(t, rt.Running(), 4, "tasks keep running while no manager is reachable")

	// While disconnected: one task exits (its report queues), one is asked
	// to stop, one is deleted, one is added.
	require.NoError(t, rt.Exit("exits", 0))
	updateTask(t, st, "stop", func(x *api.Task) { x.DesiredState = api.TaskState_TASK_STATE_SHUTDOWN })
	deleteTask(t, st, "gone")
	createTask(t, st, assignedTask("new", "n1"))

	// A new leader's dispatcher, on another address.
	s2 := startServer(t, st, agentServerConfig(), "")
	mgrs.set(s2.addr)
	waitConnected(t, a)

	requireTaskState(t, sv, "exits", api.TaskState_TASK_STATE_COMPLETE)
	requireTaskState(t, sv, "stop", api.TaskState_TASK_STATE_SHUTDOWN)
	requireTaskState(t, sv, "new", api.TaskState_TASK_STATE_RUNNING)
	requireFakeState(t, rt, "gone", runtimetest.StateRemoved)
	requireFakeState(t, rt, "stop", runtimetest.StateRemoved)
	requireFakeState(t, rt, "keep", runtimetest.StateRunning)
	assert.Equal(t, api.TaskState_TASK_STATE_RUNNING, taskState(st, "keep"))
	assert.Equal(t, 1, rt.CallCount("keep", "Start"), "a running task is not restarted by a reconnect")
	assert.Equal(t, api.NodeState_NODE_STATE_READY, nodeState(st, "n1"))
}

// partitionDialer cuts every connection it made, and refuses new ones,
// while blocked.
type partitionDialer struct {
	mu      sync.Mutex
	blocked bool
	conns   []net.Conn
}

func (p *partitionDialer) dial(ctx context.Context, addr string) (net.Conn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.blocked {
		return nil, errors.New("partitioned")
	}
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err == nil {
		p.conns = append(p.conns, c)
	}
	return c, err
}

func (p *partitionDialer) setBlocked(b bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blocked = b
	if b {
		for _, c := range p.conns {
			_ = c.Close()
		}
		p.conns = nil
	}
}

func TestAgentPartitionMarksDownThenRecovers(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	createTask(t, st, assignedTask("t1", "n1"))
	cfg := fastConfig()
	cfg.HeartbeatPeriod = 50 * time.Millisecond
	cfg.GracePeriodMultiplier = 3
	s := startServer(t, st, cfg, "")
	rt := runtimetest.New()
	pd := &partitionDialer{}
	acfg := agentConfig("n1", newManagerList(s.addr).get, rt)
	acfg.Dial = pd.dial
	a := startAgent(t, acfg)
	sv := storeView{st}
	requireTaskState(t, sv, "t1", api.TaskState_TASK_STATE_RUNNING)

	pd.setBlocked(true)
	require.Eventually(t, func() bool { return nodeState(st, "n1") == api.NodeState_NODE_STATE_DOWN }, waitFor, tick)
	requireFakeState(t, rt, "t1", runtimetest.StateRunning)

	pd.setBlocked(false)
	require.Eventually(t, func() bool { return nodeState(st, "n1") == api.NodeState_NODE_STATE_READY }, waitFor, tick)
	waitConnected(t, a)
	assert.Equal(t, 1, rt.CallCount("t1", "Start"))
	assert.Equal(t, api.TaskState_TASK_STATE_RUNNING, taskState(st, "t1"))
}

func TestAgentRotatesManagers(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	s := startServer(t, st, agentServerConfig(), "")
	// A closed port first: the agent must move on to the next manager.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	dead := lis.Addr().String()
	require.NoError(t, lis.Close())
	a := startAgent(t, agentConfig("n1", newManagerList(dead, s.addr).get, runtimetest.New()))
	waitConnected(t, a)
}

func TestAgentStopShutsDownTasks(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	createTask(t, st, assignedTask("t1", "n1"))
	createTask(t, st, assignedTask("t2", "n1"))
	s := startServer(t, st, agentServerConfig(), "")
	rt := runtimetest.New()
	a, err := NewAgent(agentConfig("n1", newManagerList(s.addr).get, rt))
	require.NoError(t, err)
	require.NoError(t, a.Start(context.Background()))
	requireTaskState(t, storeView{st}, "t2", api.TaskState_TASK_STATE_RUNNING)
	requireFakeState(t, rt, "t1", runtimetest.StateRunning)

	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, a.Stop(ctx))
	require.NoError(t, a.Stop(ctx), "Stop is idempotent")
	assert.ErrorIs(t, a.Err(), errdefs.ErrStopped)
	assert.Empty(t, rt.Running())
	for _, id := range []string{"t1", "t2"} {
		s, _ := rt.State(id)
		assert.Equal(t, runtimetest.StateRemoved, s)
	}
	assert.False(t, a.Connected())
}

// A hung task shutdown is bounded by Stop's context.
func TestAgentStopBoundedByContext(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	createTask(t, st, assignedTask("t1", "n1"))
	s := startServer(t, st, agentServerConfig(), "")
	rt := runtimetest.New()
	rt.SetTaskBehavior("t1", runtimetest.Behavior{HangOnShutdown: true})
	a, err := NewAgent(agentConfig("n1", newManagerList(s.addr).get, rt))
	require.NoError(t, err)
	require.NoError(t, a.Start(context.Background()))
	requireFakeState(t, rt, "t1", runtimetest.StateRunning)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	assert.ErrorIs(t, a.Stop(ctx), context.DeadlineExceeded)
	assert.ErrorIs(t, a.Err(), errdefs.ErrStopped)
}

// storeView wraps the store for the polling helpers.
type storeView struct{ store *state.Store }
