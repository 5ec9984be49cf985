package schedule

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/clock/clocktest"
	"github.com/shoalhq/shoal/internal/state"
	"github.com/shoalhq/shoal/internal/state/statetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// newCheckedStore returns an in-memory store with the immutability checker
// on: the test fails if the driver (or anything else) modified a stored
// object in place, such as a shared watch event's task. Registered first, the
// check runs after the driver's own cleanup.
func newCheckedStore(t *testing.T) *state.Store {
	t.Helper()
	st := statetest.NewStore(state.Config{CheckImmutable: true})
	t.Cleanup(func() { assert.NoError(t, st.Verify(), "stored objects were modified in place") })
	return st
}

func node(id string, st api.NodeState, av api.NodeAvailability, labels map[string]string) *api.Node {
	return &api.Node{
		Id:          id,
		Spec:        &api.NodeSpec{Availability: av, Labels: labels},
		Description: &api.NodeDescription{Hostname: id, Resources: &api.Resources{NanoCpus: 4e9, MemoryBytes: 4 << 30}},
		Status:      &api.NodeStatus{State: st},
	}
}

func pendingTask(id, svc string, slot uint64, spec *api.TaskSpec) *api.Task {
	if spec == nil {
		spec = &api.TaskSpec{Command: []string{"x"}}
	}
	return &api.Task{Id: id, ServiceId: svc, Slot: slot, SpecVersion: 1, Spec: spec, DesiredState: api.TaskState_TASK_STATE_RUNNING,
		Status: &api.TaskStatus{State: api.TaskState_TASK_STATE_PENDING}}
}

func start(t *testing.T, st *state.Store) *Driver {
	d, err := New(st, Config{RetryInterval: 50 * time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, d.Start(context.Background()))
	t.Cleanup(func() { require.NoError(t, d.Stop(context.Background())) })
	return d
}

func create(t *testing.T, st *state.Store, objs ...state.Object) {
	require.NoError(t, st.Update(context.Background(), func(tx state.WriteTx) error {
		for _, o := range objs {
			var err error
			switch v := o.(type) {
			case *api.Node:
				err = tx.CreateNode(v)
			case *api.Task:
				err = tx.CreateTask(v)
			}
			if err != nil {
				return err
			}
		}
		return nil
	}))
}

func perNode(st *state.Store) (map[string]int, int) {
	counts := map[string]int{}
	pending := 0
	st.View(func(tx state.ReadTx) {
		ts, _ := tx.FindTasks(state.All())
		for _, t := range ts {
			if t.Status.State == api.TaskState_TASK_STATE_ASSIGNED {
				counts[t.NodeId]++
			} else {
				pending++
			}
		}
	})
	return counts, pending
}

func task(st *state.Store, id string) *api.Task {
	var t *api.Task
	st.View(func(tx state.ReadTx) { t = tx.GetTask(id) })
	return t
}

func TestSpreadsAndSkipsUnusableNodes(t *testing.T) {
	st := newCheckedStore(t)
	ready, active := api.NodeState_NODE_STATE_READY, api.NodeAvailability_NODE_AVAILABILITY_ACTIVE
	create(t, st,
		node("n1", ready, active, nil), node("n2", ready, active, nil), node("n3", ready, active, nil),
		node("drained", ready, api.NodeAvailability_NODE_AVAILABILITY_DRAIN, nil),
		node("down", api.NodeState_NODE_STATE_DOWN, active, nil))
	start(t, st)
	var tasks []state.Object
	for i := 1; i <= 6; i++ {
		tasks = append(tasks, pendingTask(fmt.Sprintf("t%d", i), "web", uint64(i), nil))
	}
	create(t, st, tasks...)
	require.Eventually(t, func() bool { _, p := perNode(st); return p == 0 }, 10*time.Second, 5*time.Millisecond)
	counts, _ := perNode(st)
	assert.Equal(t, map[string]int{"n1": 2, "n2": 2, "n3": 2}, counts)
	assert.Equal(t, "scheduler assigned task to node", task(st, "t1").Status.Message)
}

func TestUnplaceableExplainsAndRetriesWhenNodesChange(t *testing.T) {
	st := newCheckedStore(t)
	ready, active := api.NodeState_NODE_STATE_READY, api.NodeAvailability_NODE_AVAILABILITY_ACTIVE
	create(t, st, node("n1", ready, active, map[string]string{"zone": "b"}))
	start(t, st)
	spec := &api.TaskSpec{Command: []string{"x"}, Placement: &api.Placement{Constraints: []string{"node.labels.zone==a"}}}
	create(t, st, pendingTask("t1", "web", 1, spec))
	require.Eventually(t, func() bool {
		tk := task(st, "t1")
		return tk.Status.State == api.TaskState_TASK_STATE_PENDING && tk.Status.Message != ""
	}, 10*time.Second, 5*time.Millisecond)
	msg := task(st, "t1").Status.Message
	assert.Contains(t, msg, "no suitable node")
	assert.Contains(t, msg, "node.labels.zone==a")

	// A node that fits joins: the task is placed there.
	create(t, st, node("n2", ready, active, map[string]string{"zone": "a"}))
	require.Eventually(t, func() bool { return task(st, "t1").NodeId == "n2" }, 10*time.Second, 5*time.Millisecond)
}

func TestMemoryReservationsExplain(t *testing.T) {
	st := newCheckedStore(t)
	ready, active := api.NodeState_NODE_STATE_READY, api.NodeAvailability_NODE_AVAILABILITY_ACTIVE
	create(t, st, node("n1", ready, active, nil), node("n2", ready, active, nil))
	start(t, st)
	spec := &api.TaskSpec{Command: []string{"x"}, Resources: &api.ResourceRequirements{Reservations: &api.Resources{MemoryBytes: 3 << 30}}}
	create(t, st, pendingTask("t1", "db", 1, spec), pendingTask("t2", "db", 2, spec), pendingTask("t3", "db", 3, spec))
	require.Eventually(t, func() bool {
		c, _ := perNode(st)
		return c["n1"] == 1 && c["n2"] == 1
	}, 10*time.Second, 5*time.Millisecond)
	require.Eventually(t, func() bool {
		for _, id := range []string{"t1", "t2", "t3"} {
			if tk := task(st, id); tk.Status.State == api.TaskState_TASK_STATE_PENDING && tk.Status.Message != "" {
				return true
			}
		}
		return false
	}, 10*time.Second, 5*time.Millisecond)
	for _, id := range []string{"t1", "t2", "t3"} {
		if tk := task(st, id); tk.Status.State == api.TaskState_TASK_STATE_PENDING {
			assert.Contains(t, tk.Status.Message, "2 nodes lack")
			assert.Contains(t, tk.Status.Message, "memory")
		}
	}
}

func TestPinnedTasksGoToTheirNode(t *testing.T) {
	st := newCheckedStore(t)
	ready, active := api.NodeState_NODE_STATE_READY, api.NodeAvailability_NODE_AVAILABILITY_ACTIVE
	create(t, st, node("n1", ready, active, nil), node("n2", ready, api.NodeAvailability_NODE_AVAILABILITY_DRAIN, nil))
	start(t, st)
	a := pendingTask("g1", "mon", 0, nil)
	a.NodeId = "n1"
	b := pendingTask("g2", "mon", 0, nil)
	b.NodeId = "n2"
	create(t, st, a, b)
	require.Eventually(t, func() bool { return task(st, "g1").Status.State == api.TaskState_TASK_STATE_ASSIGNED }, 10*time.Second, 5*time.Millisecond)
	assert.Equal(t, "n1", task(st, "g1").NodeId)
	require.Eventually(t, func() bool { return task(st, "g2").Status.Message != "" }, 10*time.Second, 5*time.Millisecond)
	assert.Equal(t, api.TaskState_TASK_STATE_PENDING, task(st, "g2").Status.State)
	assert.Equal(t, "n2", task(st, "g2").NodeId, "a pinned task never moves to another node")
}

func TestRestartedDriverCountsExistingTasks(t *testing.T) {
	// Tasks already running count for spread when a new driver starts (after
	// a leader change).
	st := newCheckedStore(t)
	ready, active := api.NodeState_NODE_STATE_READY, api.NodeAvailability_NODE_AVAILABILITY_ACTIVE
	running := func(id, n string) *api.Task {
		tk := pendingTask(id, "web", 1, nil)
		tk.NodeId = n
		tk.Status.State = api.TaskState_TASK_STATE_RUNNING
		return tk
	}
	create(t, st, node("n1", ready, active, nil), node("n2", ready, active, nil),
		running("r1", "n1"), running("r2", "n1"))
	start(t, st)
	create(t, st, pendingTask("p1", "web", 3, nil), pendingTask("p2", "web", 4, nil))
	require.Eventually(t, func() bool { _, p := perNode(st); return p == 2 /* r1, r2 are RUNNING */ }, 10*time.Second, 5*time.Millisecond)
	assert.Equal(t, "n2", task(st, "p1").NodeId)
	assert.Equal(t, "n2", task(st, "p2").NodeId)
}

func BenchmarkScheduleThroughStore(b *testing.B) {
	// 100 nodes, 1000 pending tasks created in one transaction: time until all
	// are committed as ASSIGNED.
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		st := statetest.NewStore(state.Config{})
		ctx := context.Background()
		require.NoError(b, st.Update(ctx, func(tx state.WriteTx) error {
			for n := 0; n < 100; n++ {
				if err := tx.CreateNode(node(fmt.Sprintf("n%d", n), api.NodeState_NODE_STATE_READY, api.NodeAvailability_NODE_AVAILABILITY_ACTIVE, nil)); err != nil {
					return err
				}
			}
			return nil
		}))
		d, err := New(st, Config{})
		require.NoError(b, err)
		require.NoError(b, d.Start(ctx))
		w := st.Watch(state.KindIs(state.KindTask))
		b.StartTimer()
		require.NoError(b, st.Update(ctx, func(tx state.WriteTx) error {
			for k := 0; k < 1000; k++ {
				if err := tx.CreateTask(pendingTask(fmt.Sprintf("t%d", k), "web", uint64(k+1), nil)); err != nil {
					return err
				}
			}
			return nil
		}))
		assigned := 0
		for assigned < 1000 {
			e := <-w.C
			if e.Action == state.ActionUpdate && e.Task().Status.State == api.TaskState_TASK_STATE_ASSIGNED {
				assigned++
			}
		}
		b.StopTimer()
		w.Cancel()
		require.NoError(b, d.Stop(ctx))
	}
}

func TestHostPortsOnePerNode(t *testing.T) {
	st := newCheckedStore(t)
	ready, active := api.NodeState_NODE_STATE_READY, api.NodeAvailability_NODE_AVAILABILITY_ACTIVE
	create(t, st, node("n1", ready, active, nil))
	start(t, st)
	spec := &api.TaskSpec{Command: []string{"x"}, Ports: []*api.PortConfig{
		{TargetPort: 80, PublishedPort: 8080, Mode: api.PublishMode_PUBLISH_MODE_HOST},
		{TargetPort: 81, PublishedPort: 0}, // ingress: not a host port
	}}
	create(t, st, pendingTask("t1", "web", 1, spec), pendingTask("t2", "web", 2, spec))
	var waiting string
	require.Eventually(t, func() bool {
		c, _ := perNode(st)
		if c["n1"] != 1 {
			return false
		}
		for _, id := range []string{"t1", "t2"} {
			if tk := task(st, id); tk.Status.State == api.TaskState_TASK_STATE_PENDING && tk.Status.Message != "" {
				waiting = id
				return true
			}
		}
		return false
	}, 10*time.Second, 5*time.Millisecond)
	assert.Equal(t, "no suitable node (1 node has host port 8080/tcp in use)", task(st, waiting).Status.Message)

	// A second node: the waiting task goes there.
	create(t, st, node("n2", ready, active, nil))
	require.Eventually(t, func() bool { return task(st, waiting).NodeId == "n2" }, 10*time.Second, 5*time.Millisecond)
}

// flakyLog is an in-memory log that fails the next writes that assign a
// task, as a log without a quorum would, and reports each failure on failed.
type flakyLog struct {
	*statetest.Log
	failed chan struct{}

	mu    sync.Mutex
	fails int // assignments still to fail; guarded by mu
}

func (l *flakyLog) ProposeRequest(ctx context.Context, req *api.StoreRequest) (any, error) {
	for _, a := range req.Actions {
		if t := a.GetTask(); t != nil && t.GetStatus().GetState() == api.TaskState_TASK_STATE_ASSIGNED {
			l.mu.Lock()
			fail := l.fails > 0
			if fail {
				l.fails--
			}
			l.mu.Unlock()
			if fail {
				l.failed <- struct{}{}
				return nil, errors.New("flaky log: no quorum")
			}
			break
		}
	}
	return l.Log.ProposeRequest(ctx, req)
}

func TestFailedCommitIsRetriedOnTheClock(t *testing.T) {
	// The driver's clock stamps assignments and times the retry of a commit
	// that failed: nothing is retried until the fake clock reaches
	// RetryInterval, and then the task is placed.
	ctx := context.Background()
	clk := clocktest.NewFake()
	st := state.New(state.Config{Clock: clk, CheckImmutable: true})
	t.Cleanup(func() { assert.NoError(t, st.Verify(), "stored objects were modified in place") })
	log := &flakyLog{Log: statetest.NewLog(st), failed: make(chan struct{}, 1), fails: 1}
	st.SetLog(log)
	create(t, st, node("n1", api.NodeState_NODE_STATE_READY, api.NodeAvailability_NODE_AVAILABILITY_ACTIVE, nil))

	d, err := New(st, Config{Clock: clk, RetryInterval: time.Minute})
	require.NoError(t, err)
	require.NoError(t, d.Start(ctx))
	t.Cleanup(func() { require.NoError(t, d.Stop(ctx)) })
	waitCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	require.True(t, clk.WaitTimers(waitCtx, 1), "the driver arms its retry timer")

	create(t, st, pendingTask("t1", "web", 1, nil))
	select {
	case <-log.failed:
	case <-time.After(10 * time.Second):
		t.Fatal("the driver never tried to assign the task")
	}
	assert.Never(t, func() bool { return task(st, "t1").NodeId != "" }, 50*time.Millisecond, 5*time.Millisecond,
		"no retry before the clock moves")

	clk.Advance(time.Minute - time.Nanosecond)
	assert.Never(t, func() bool { return task(st, "t1").NodeId != "" }, 50*time.Millisecond, 5*time.Millisecond,
		"no retry before RetryInterval")
	clk.Advance(time.Nanosecond)
	require.Eventually(t, func() bool { return task(st, "t1").NodeId == "n1" }, 10*time.Second, 5*time.Millisecond)
	tk := task(st, "t1")
	assert.Equal(t, api.TaskState_TASK_STATE_ASSIGNED, tk.Status.State)
	assert.Equal(t, clk.Now().UnixNano(), tk.Status.Timestamp, "the assignment is stamped by the driver's clock")
	assert.Equal(t, clk.Now().UnixNano(), tk.Meta.UpdatedAt, "the store stamps Meta with its clock")
	require.True(t, clk.WaitTimers(waitCtx, 1), "the retry timer is armed again")
}
