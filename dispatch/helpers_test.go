package dispatch

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/state"
	"github.com/shoalhq/shoal/internal/state/statetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitFor is the generous bound of every require.Eventually: the suite runs
// on loaded 2-core machines.
const (
	waitFor = 10 * time.Second
	tick    = 5 * time.Millisecond
)

func newStore(t *testing.T) *state.Store {
	t.Helper()
	s := statetest.NewStore(state.Config{})
	t.Cleanup(s.Close)
	return s
}

func createNode(t *testing.T, s *state.Store, id string, st api.NodeState) {
	t.Helper()
	require.NoError(t, s.Update(context.Background(), func(tx state.WriteTx) error {
		return tx.CreateNode(&api.Node{Id: id, Status: &api.NodeStatus{State: st}})
	}))
}

func createTask(t *testing.T, s *state.Store, task *api.Task) {
	t.Helper()
	require.NoError(t, s.Update(context.Background(), func(tx state.WriteTx) error {
		return tx.CreateTask(task)
	}))
}

func updateTask(t *testing.T, s *state.Store, id string, fn func(*api.Task)) {
	t.Helper()
	require.NoError(t, s.UpdateRetry(context.Background(), 10, func(tx state.WriteTx) error {
		task := tx.GetTask(id)
		require.NotNil(t, task, "task %s", id)
		fn(task)
		return tx.UpdateTask(task)
	}))
}

func deleteTask(t *testing.T, s *state.Store, id string) {
	t.Helper()
	require.NoError(t, s.Update(context.Background(), func(tx state.WriteTx) error {
		return tx.DeleteTask(id)
	}))
}

// assignedTask is a task as the scheduler leaves it: on a node, ASSIGNED.
func assignedTask(id, node string, cmd ...string) *api.Task {
	if len(cmd) == 0 {
		cmd = []string{"sleep", "1000"}
	}
	return &api.Task{
		Id: id, ServiceId: "svc", ServiceName: "web", Slot: 1, NodeId: node,
		Spec:         &api.TaskSpec{Command: cmd},
		DesiredState: api.TaskState_TASK_STATE_RUNNING,
		Status:       &api.TaskStatus{State: api.TaskState_TASK_STATE_ASSIGNED},
	}
}

func getNode(s *state.Store, id string) *api.Node {
	var n *api.Node
	s.View(func(tx state.ReadTx) { n = tx.GetNode(id) })
	return n
}

func getTask(s *state.Store, id string) *api.Task {
	var t *api.Task
	s.View(func(tx state.ReadTx) { t = tx.GetTask(id) })
	return t
}

func nodeState(s *state.Store, id string) api.NodeState {
	return getNode(s, id).GetStatus().GetState()
}

func taskState(s *state.Store, id string) api.TaskState {
	return getTask(s, id).GetStatus().GetState()
}

// server is a gRPC server with one dispatcher on 127.0.0.1.
type server struct {
	d    *Dispatcher
	srv  *grpc.Server
	addr string
	once sync.Once
	done chan struct{}
}

func (s *server) stop(t testing.TB) {
	t.Helper()
	s.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		require.NoError(t, s.d.Stop(ctx))
		s.srv.Stop()
		<-s.done
	})
}

// startServer starts a dispatcher on a fresh server. addr "" picks a port.
func startServer(t testing.TB, st *state.Store, cfg DispatcherConfig, addr string) *server {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var lis net.Listener
	var err error
	// A port just freed by the previous server may take a moment to reuse.
	require.Eventually(t, func() bool {
		lis, err = net.Listen("tcp", addr)
		return err == nil
	}, waitFor, 20*time.Millisecond, "listen on %s", addr)
	d, err := NewDispatcher(st, cfg)
	require.NoError(t, err)
	require.NoError(t, d.Start(context.Background()))
	srv := grpc.NewServer()
	api.RegisterDispatcherServer(srv, d)
	s := &server{d: d, srv: srv, addr: lis.Addr().String(), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() { s.stop(t) })
	return s
}

func dial(t testing.TB, addr string) api.DispatcherClient {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = cc.Close() })
	return api.NewDispatcherClient(cc)
}

// fastConfig is a dispatcher configuration for tests whose clients do not
// heartbeat: sessions never expire during the test, however loaded the
// machine. Tests of expiry set their own periods.
func fastConfig() DispatcherConfig {
	cfg := DefaultDispatcherConfig()
	cfg.HeartbeatPeriod = time.Hour
	cfg.StatusBatchInterval = 5 * time.Millisecond
	return cfg
}

// agentServerConfig is a dispatcher configuration for tests with real
// agents: they heartbeat every 50ms, and a node is DOWN only after 2s of
// silence, which a loaded machine does not reach by accident.
func agentServerConfig() DispatcherConfig {
	cfg := fastConfig()
	cfg.HeartbeatPeriod = 50 * time.Millisecond
	cfg.GracePeriodMultiplier = 40
	return cfg
}

// openSession opens a session and returns its ID and the stream.
func openSession(t *testing.T, c api.DispatcherClient, node string) (string, api.Dispatcher_SessionClient, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := c.Session(ctx, &api.SessionRequest{NodeId: node, Addr: "10.0.0.9:1234",
		Description: &api.NodeDescription{Hostname: node + "-host"}})
	require.NoError(t, err)
	msg, err := stream.Recv()
	require.NoError(t, err)
	require.NotEmpty(t, msg.GetSessionId())
	return msg.GetSessionId(), stream, cancel
}

// fakeClock is a manually advanced Clock.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, ch: make(chan time.Time, 1)}
	c.timers = append(c.timers, t)
	t.arm(d)
	return t
}

// armedIn reports whether a timer is armed to fire d from now.
func (c *fakeClock) armedIn(d time.Duration) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, t := range c.timers {
		if t.active && t.when.Equal(c.now.Add(d)) {
			return true
		}
	}
	return false
}

// Advance moves time forward and fires the timers that are due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	for _, t := range c.timers {
		t.fireIfDue()
	}
}

type fakeTimer struct {
	c      *fakeClock
	ch     chan time.Time
	when   time.Time
	active bool
}

// arm and fireIfDue run with c.mu held.
func (t *fakeTimer) arm(d time.Duration) {
	t.when = t.c.now.Add(d)
	t.active = true
	t.fireIfDue()
}

func (t *fakeTimer) fireIfDue() {
	if t.active && !t.when.After(t.c.now) {
		t.active = false
		select {
		case t.ch <- t.c.now:
		default:
		}
	}
}

func (t *fakeTimer) C() <-chan time.Time { return t.ch }

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := t.active
	t.active = false
	return was
}

func (t *fakeTimer) Reset(d time.Duration) {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	t.arm(d)
}
