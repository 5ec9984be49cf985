package orchestrator

import (
	"context"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/identity"
	"github.com/shoalhq/shoal/internal/state"
	"github.com/shoalhq/shoal/internal/state/statetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeClock is a Clock that moves only when told to.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers map[*fakeTimer]struct{}
}

type fakeTimer struct {
	c  *fakeClock
	at time.Time
	ch chan time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Unix(1_700_000_000, 0), timers: map[*fakeTimer]struct{}{}}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, at: c.now.Add(d), ch: make(chan time.Time, 1)}
	if d <= 0 {
		t.ch <- c.now
	} else {
		c.timers[t] = struct{}{}
	}
	return t
}

func (t *fakeTimer) C() <-chan time.Time { return t.ch }

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	_, ok := t.c.timers[t]
	delete(t.c.timers, t)
	return ok
}

func (t *fakeTimer) Reset(d time.Duration) {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	t.at = t.c.now.Add(d)
	if d <= 0 {
		delete(t.c.timers, t)
		select {
		case t.ch <- t.c.now:
		default:
		}
		return
	}
	t.c.timers[t] = struct{}{}
}

// Advance moves the clock and fires the timers that came due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	for t := range c.timers {
		if !t.at.After(c.now) {
			t.ch <- c.now
			delete(c.timers, t)
		}
	}
}

// hasTimerAt reports whether a timer is armed to fire at exactly at.
func (c *fakeClock) hasTimerAt(at time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for t := range c.timers {
		if t.at.Equal(at) {
			return true
		}
	}
	return false
}

var _ Clock = (*fakeClock)(nil)

const (
	waitFor = 10 * time.Second
	tick    = 2 * time.Millisecond
)

// env is a store, a fake clock, and a fake scheduler and worker that move
// tasks through their states by store writes.
type env struct {
	t     *testing.T
	ctx   context.Context
	store *state.Store
	clock *fakeClock
	cfg   Config
	rr    int
}

// newCheckedStore returns an in-memory store with the immutability checker
// on: the test fails if anything (the orchestrator's shared reads included)
// modified a stored object in place. The check runs after the test's other
// cleanups (the orchestrator has stopped).
func newCheckedStore(t *testing.T) *state.Store {
	t.Helper()
	st := statetest.NewStore(state.Config{CheckImmutable: true})
	t.Cleanup(func() { assert.NoError(t, st.Verify(), "stored objects were modified in place") })
	return st
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, ctx: context.Background(), store: newCheckedStore(t), clock: newFakeClock()}
	e.cfg = DefaultConfig()
	e.cfg.Clock = e.clock
	e.cfg.DefaultRestartDelay = 0
	require.NoError(t, e.store.Update(e.ctx, func(tx state.WriteTx) error {
		return tx.CreateCluster(&api.Cluster{Id: identity.NewID(), Spec: &api.ClusterSpec{Name: "default"}})
	}))
	return e
}

// start starts an orchestrator and stops it when the test ends.
func (e *env) start() *Orchestrator {
	e.t.Helper()
	o, err := New(e.store, e.cfg)
	require.NoError(e.t, err)
	require.NoError(e.t, o.Start(e.ctx))
	e.t.Cleanup(func() { require.NoError(e.t, o.Stop(context.Background())) })
	select {
	case <-o.Ready():
	case <-time.After(waitFor):
		e.t.Fatal("orchestrator not ready")
	}
	return o
}

func (e *env) addNode(id string, st api.NodeState, avail api.NodeAvailability, labels map[string]string) {
	e.t.Helper()
	require.NoError(e.t, e.store.Update(e.ctx, func(tx state.WriteTx) error {
		return tx.CreateNode(&api.Node{
			Id:          id,
			Spec:        &api.NodeSpec{Availability: avail, Labels: labels},
			Description: &api.NodeDescription{Hostname: id},
			Status:      &api.NodeStatus{State: st},
		})
	}))
}

func (e *env) setNode(id string, fn func(n *api.Node)) {
	e.t.Helper()
	require.NoError(e.t, e.store.UpdateRetry(e.ctx, 10, func(tx state.WriteTx) error {
		n := tx.GetNode(id)
		fn(n)
		return tx.UpdateNode(n)
	}))
}

func replicatedSpec(name string, replicas uint64) *api.ServiceSpec {
	return &api.ServiceSpec{
		Name: name,
		Task: &api.TaskSpec{Command: []string{"sleep", "1000"}},
		Mode: &api.ServiceSpec_Replicated{Replicated: &api.ReplicatedService{Replicas: replicas}},
	}
}

func globalSpec(name string, constraints ...string) *api.ServiceSpec {
	return &api.ServiceSpec{
		Name: name,
		Task: &api.TaskSpec{Command: []string{"agent"}, Placement: &api.Placement{Constraints: constraints}},
		Mode: &api.ServiceSpec_Global{Global: &api.GlobalService{}},
	}
}

func (e *env) createService(spec *api.ServiceSpec) string {
	e.t.Helper()
	id := identity.NewID()
	require.NoError(e.t, e.store.Update(e.ctx, func(tx state.WriteTx) error {
		return tx.CreateService(&api.Service{Id: id, Spec: spec, SpecVersion: 1})
	}))
	return id
}

// updateService changes a service as the control API would; a change of the
// task spec bumps SpecVersion.
func (e *env) updateService(id string, fn func(s *api.ServiceSpec), taskChanged bool) {
	e.t.Helper()
	require.NoError(e.t, e.store.UpdateRetry(e.ctx, 50, func(tx state.WriteTx) error {
		s := tx.GetService(id)
		fn(s.Spec)
		if taskChanged {
			s.SpecVersion++
		}
		return tx.UpdateService(s)
	}))
}

func (e *env) deleteService(id string) {
	e.t.Helper()
	require.NoError(e.t, e.store.Update(e.ctx, func(tx state.WriteTx) error { return tx.DeleteService(id) }))
}

func (e *env) tasks(serviceID string) []*api.Task {
	var out []*api.Task
	e.store.View(func(tx state.ReadTx) {
		var err error
		out, err = tx.FindTasks(state.ByServiceID(serviceID))
		require.NoError(e.t, err)
	})
	sort.Slice(out, func(i, j int) bool {
		if out[i].Slot != out[j].Slot {
			return out[i].Slot < out[j].Slot
		}
		return out[i].Meta.CreatedAt < out[j].Meta.CreatedAt
	})
	return out
}

// occupants returns the tasks with desired state RUNNING or lower.
func (e *env) occupants(serviceID string) []*api.Task {
	var out []*api.Task
	for _, t := range e.tasks(serviceID) {
		if t.DesiredState <= api.TaskState_TASK_STATE_RUNNING {
			out = append(out, t)
		}
	}
	return out
}

func (e *env) task(id string) *api.Task {
	var t *api.Task
	e.store.View(func(tx state.ReadTx) { t = tx.GetTask(id) })
	return t
}

// report sets a task's observed state, as a worker's report would.
func (e *env) report(id string, st api.TaskState) {
	e.t.Helper()
	require.NoError(e.t, e.store.UpdateRetry(e.ctx, 50, func(tx state.WriteTx) error {
		t := tx.GetTask(id)
		if t == nil {
			return nil
		}
		t.Status = &api.TaskStatus{State: st, Timestamp: e.clock.Now().UnixNano(), Message: st.String()}
		if st == api.TaskState_TASK_STATE_FAILED {
			t.Status.Err = "exit status 1"
		}
		return tx.UpdateTask(t)
	}))
}

// work is one step of the fake scheduler and workers: pending tasks are
// assigned (replicated ones round-robin to ready active nodes), wanted tasks
// move to RUNNING, and tasks told to stop report SHUTDOWN. Tasks on DOWN
// nodes are left alone: nobody reports for them.
func (e *env) work() {
	e.t.Helper()
	require.NoError(e.t, e.store.UpdateRetry(e.ctx, 50, func(tx state.WriteTx) error {
		nodes, err := tx.FindNodes(state.All())
		if err != nil {
			return err
		}
		var usable []string
		byID := map[string]*api.Node{}
		for _, n := range nodes {
			byID[n.Id] = n
			if n.Status.GetState() == api.NodeState_NODE_STATE_READY && n.Spec.GetAvailability() == api.NodeAvailability_NODE_AVAILABILITY_ACTIVE {
				usable = append(usable, n.Id)
			}
		}
		tasks, err := tx.FindTasks(state.All())
		if err != nil {
			return err
		}
		now := e.clock.Now().UnixNano()
		for _, t := range tasks {
			st := t.Status.GetState()
			if st >= api.TaskState_TASK_STATE_COMPLETE {
				continue
			}
			if n := byID[t.NodeId]; t.NodeId != "" && (n == nil || n.Status.GetState() == api.NodeState_NODE_STATE_DOWN) {
				continue
			}
			switch {
			case t.DesiredState > api.TaskState_TASK_STATE_RUNNING:
				if st < api.TaskState_TASK_STATE_ASSIGNED {
					continue // the orchestrator handles these
				}
				t.Status = &api.TaskStatus{State: api.TaskState_TASK_STATE_SHUTDOWN, Timestamp: now}
			case st == api.TaskState_TASK_STATE_PENDING:
				if t.NodeId == "" {
					if len(usable) == 0 {
						continue
					}
					t.NodeId = usable[e.rr%len(usable)]
					e.rr++
				}
				t.Status = &api.TaskStatus{State: api.TaskState_TASK_STATE_ASSIGNED, Timestamp: now}
			case st < api.TaskState_TASK_STATE_RUNNING:
				t.Status = &api.TaskStatus{State: api.TaskState_TASK_STATE_RUNNING, Timestamp: now}
			default:
				continue
			}
			if err := tx.UpdateTask(t); err != nil {
				return err
			}
		}
		return nil
	}))
}

// eventually polls cond, running a worker step before each poll when work
// is set.
func (e *env) eventually(cond func() bool, work bool, msg string, args ...any) {
	e.t.Helper()
	require.Eventually(e.t, func() bool {
		if work {
			e.work()
		}
		return cond()
	}, waitFor, tick, append([]any{msg}, args...)...)
}

func count(ts []*api.Task, pred func(*api.Task) bool) int {
	n := 0
	for _, t := range ts {
		if pred(t) {
			n++
		}
	}
	return n
}

func running(t *api.Task) bool {
	return t.DesiredState == api.TaskState_TASK_STATE_RUNNING && t.Status.GetState() == api.TaskState_TASK_STATE_RUNNING
}

func slots(ts []*api.Task) []uint64 {
	var out []uint64
	for _, t := range ts {
		out = append(out, t.Slot)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

func seq(n int) []uint64 {
	out := make([]uint64, n)
	for i := range out {
		out[i] = uint64(i + 1)
	}
	return out
}
