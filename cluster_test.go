package shoal_test

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

	"github.com/shoalhq/shoal"
	"github.com/shoalhq/shoal/shoaltest"
)

func TestMain(m *testing.M) {
	runCrashChildIfAsked()
	goleak.VerifyTestMain(m)
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func webSpec(name string, replicas int) shoal.ServiceSpec {
	return shoal.ServiceSpec{Name: name, Replicas: replicas, Task: shoal.TaskSpec{Command: []string{"server"}}}
}

func TestReplicatedServiceConvergesAndSpreads(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Workers: 3})
	ctx := ctxT(t)
	svc, err := c.Client().CreateService(ctx, webSpec("web", 6))
	require.NoError(t, err)
	per := c.WaitRunning(svc.ID, 6)
	assert.Len(t, per, 3)
	for node, n := range per {
		assert.Equal(t, 2, n, "node %s", node)
	}
	slots := map[uint64]bool{}
	for _, tk := range c.Tasks(svc.ID) {
		slots[tk.Slot] = true
		assert.Equal(t, "web", tk.ServiceName)
		assert.Equal(t, fmt.Sprintf("web.%d", tk.Slot), tk.Name())
	}
	assert.Len(t, slots, 6)
	for s := uint64(1); s <= 6; s++ {
		assert.True(t, slots[s], "slot %d", s)
	}
}

func TestScaleUpAndDown(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Workers: 3})
	ctx := ctxT(t)
	cl := c.Client()
	svc, err := cl.CreateService(ctx, webSpec("web", 6))
	require.NoError(t, err)
	c.WaitRunning(svc.ID, 6)

	_, err = cl.ScaleService(ctx, svc.ID, 9)
	require.NoError(t, err)
	per := c.WaitRunning(svc.ID, 9)
	for node, n := range per {
		assert.Equal(t, 3, n, "node %s", node)
	}

	_, err = cl.ScaleService(ctx, "web", 4)
	require.NoError(t, err)
	c.WaitRunning(svc.ID, 4)
	for _, tk := range c.Tasks(svc.ID) {
		if tk.DesiredState <= shoal.TaskRunning {
			assert.LessOrEqual(t, tk.Slot, uint64(4), "scale down removes the highest slots")
		}
	}
	// Removed slots' tasks are stopped and then deleted by the reaper.
	c.WaitFor("scaled-down tasks removed", func() bool {
		for _, tk := range c.Tasks(svc.ID) {
			if tk.Slot > 4 {
				return false
			}
		}
		return true
	})
	// The fake runtimes agree: 4 tasks run in total.
	c.WaitFor("4 tasks running on the workers", func() bool {
		n := 0
		for _, w := range c.Workers() {
			n += len(w.Fake().Running())
		}
		return n == 4
	})

	_, err = cl.ScaleService(ctx, svc.ID, -1)
	require.ErrorIs(t, err, shoal.ErrInvalidSpec)
	assert.Contains(t, err.Error(), "ServiceSpec.Replicas: must be >= 0")
}

func TestGlobalServiceCoversEveryNodeIncludingLateJoiners(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Workers: 2, ManagersRunTasks: true})
	ctx := ctxT(t)
	svc, err := c.Client().CreateService(ctx, shoal.ServiceSpec{Name: "agent", Mode: shoal.Global,
		Task: shoal.TaskSpec{Command: []string{"agent"}}})
	require.NoError(t, err)
	per := c.WaitRunning(svc.ID, 3)
	assert.Len(t, per, 3, "one task on each node")

	w3, err := c.AddWorker()
	require.NoError(t, err)
	per = c.WaitRunningWhere(svc.ID, 4, func(per map[string]int) bool { return per[w3.ID()] == 1 })
	assert.Len(t, per, 4, "the node that joined later gets one")
	for _, tk := range c.Tasks(svc.ID) {
		assert.Zero(t, tk.Slot)
	}

	// Draining a node shuts its global task down.
	_, err = c.Client().UpdateNode(ctx, w3.ID(), shoal.NodeUpdate{Availability: shoal.Drain})
	require.NoError(t, err)
	per = c.WaitRunningWhere(svc.ID, 3, func(per map[string]int) bool { return per[w3.ID()] == 0 })
	assert.Len(t, per, 3)
}

func TestStoppedWorkersTasksMove(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Workers: 3})
	ctx := ctxT(t)
	svc, err := c.Client().CreateService(ctx, webSpec("web", 6))
	require.NoError(t, err)
	c.WaitRunning(svc.ID, 6)

	victim := c.Workers()[0]
	victimID := victim.ID()
	require.NoError(t, victim.Crash())
	per := c.WaitRunningWhere(svc.ID, 6, func(per map[string]int) bool { return per[victimID] == 0 })
	assert.Zero(t, per[victimID], "no task runs on the dead node")
	for _, w := range c.Workers()[1:] {
		assert.Equal(t, 3, per[w.ID()])
	}
	n, err := c.Client().GetNode(ctx, victimID)
	require.NoError(t, err)
	assert.Equal(t, shoal.NodeDown, n.State)
	assert.Contains(t, n.StateMessage, "heartbeat")
}

func TestDrainMovesTasksAndKeepsNewOnesAway(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Workers: 3})
	ctx := ctxT(t)
	cl := c.Client()
	svc, err := cl.CreateService(ctx, webSpec("web", 6))
	require.NoError(t, err)
	c.WaitRunning(svc.ID, 6)

	drained := c.Workers()[2]
	info, err := cl.UpdateNode(ctx, drained.ID(), shoal.NodeUpdate{Availability: shoal.Drain})
	require.NoError(t, err)
	assert.Equal(t, shoal.Drain, info.Availability)
	per := c.WaitRunningWhere(svc.ID, 6, func(per map[string]int) bool { return per[drained.ID()] == 0 })
	assert.Zero(t, per[drained.ID()])
	c.WaitFor("drained node's runtime is empty", func() bool { return len(drained.Fake().Running()) == 0 })

	_, err = cl.ScaleService(ctx, svc.ID, 10)
	require.NoError(t, err)
	per = c.WaitRunning(svc.ID, 10)
	assert.Zero(t, per[drained.ID()], "no new task lands on a drained node")

	// Back to active: new tasks may land there again.
	_, err = cl.UpdateNode(ctx, drained.ID(), shoal.NodeUpdate{Availability: shoal.Active})
	require.NoError(t, err)
	_, err = cl.ScaleService(ctx, svc.ID, 14)
	require.NoError(t, err)
	per = c.WaitRunning(svc.ID, 14)
	assert.Equal(t, 4, per[drained.ID()], "the emptiest node takes the new tasks")
}

func TestConstraintsAndReservationsPlaceAndExplain(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{
		Workers: 3,
		Labels:  map[string]map[string]string{"w1": {"zone": "a"}, "w2": {"zone": "b"}, "w3": {"zone": "b"}},
		Resources: map[string]shoal.Resources{
			"w1": {NanoCPUs: 2e9, MemoryBytes: 2 << 30},
			"w2": {NanoCPUs: 2e9, MemoryBytes: 2 << 30},
			"w3": {NanoCPUs: 2e9, MemoryBytes: 1 << 30},
		},
	})
	ctx := ctxT(t)
	cl := c.Client()
	w1 := c.NodeByName("w1").ID()

	zoned := webSpec("zoned", 3)
	zoned.Task.Constraints = []string{"node.labels.zone==a"}
	svc, err := cl.CreateService(ctx, zoned)
	require.NoError(t, err)
	per := c.WaitRunning(svc.ID, 3)
	assert.Equal(t, map[string]int{w1: 3}, per)

	// 1.5 GiB each: w1 and w2 take one each; w3 has 1 GiB; the third waits.
	big := webSpec("big", 3)
	big.Task.Reservations = shoal.Resources{MemoryBytes: 3 << 29}
	svc2, err := cl.CreateService(ctx, big)
	require.NoError(t, err)
	c.WaitFor("2 of 3 big tasks running", func() bool { return sum(c.Running(svc2.ID)) == 2 })
	var pending *shoal.Task
	c.WaitFor("an explained pending task", func() bool {
		for _, tk := range c.Tasks(svc2.ID) {
			if tk.Status.State == shoal.TaskPending && tk.Status.Message != "" && tk.Status.Message != "pending task scheduling" {
				pending = tk
				return true
			}
		}
		return false
	})
	assert.Contains(t, pending.Status.Message, "no suitable node")
	assert.Contains(t, pending.Status.Message, "3 nodes lack")
	assert.Contains(t, pending.Status.Message, "memory")

	nowhere := webSpec("nowhere", 1)
	nowhere.Task.Constraints = []string{"node.labels.zone==c"}
	svc3, err := cl.CreateService(ctx, nowhere)
	require.NoError(t, err)
	c.WaitFor("constraint explanation", func() bool {
		ts := c.Tasks(svc3.ID)
		return len(ts) == 1 && ts[0].Status.State == shoal.TaskPending &&
			len(ts[0].Status.Message) > 0 && ts[0].Status.Message != "pending task scheduling"
	})
	msg := c.Tasks(svc3.ID)[0].Status.Message
	assert.Contains(t, msg, "3 nodes")
	assert.Contains(t, msg, "node.labels.zone==c")

	// A node that satisfies the constraint arrives: the task is placed.
	_, err = cl.UpdateNode(ctx, c.NodeByName("w3").ID(), shoal.NodeUpdate{Labels: map[string]string{"zone": "c"}})
	require.NoError(t, err)
	per = c.WaitRunning(svc3.ID, 1)
	assert.Equal(t, 1, per[c.NodeByName("w3").ID()])

	// Max replicas per node.
	capped := webSpec("capped", 5)
	capped.Task.MaxReplicasPerNode = 1
	svc4, err := cl.CreateService(ctx, capped)
	require.NoError(t, err)
	c.WaitFor("one capped task per node", func() bool {
		per := c.Running(svc4.ID)
		return len(per) == 3 && sum(per) == 3
	})
	c.WaitFor("the other two explained", func() bool {
		n := 0
		for _, tk := range c.Tasks(svc4.ID) {
			if tk.Status.State == shoal.TaskPending && len(tk.Status.Message) > len("pending task scheduling") {
				n++
				assert.Contains(t, tk.Status.Message, "max replicas")
			}
		}
		return n == 2
	})
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func TestManagerRestartKeepsState(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Workers: 2})
	ctx := ctxT(t)
	cl := c.Client()
	svc, err := cl.CreateService(ctx, webSpec("web", 4))
	require.NoError(t, err)
	glob, err := cl.CreateService(ctx, shoal.ServiceSpec{Name: "mon", Mode: shoal.Global, Task: shoal.TaskSpec{Command: []string{"mon"}}})
	require.NoError(t, err)
	c.WaitRunning(svc.ID, 4)
	c.WaitRunning(glob.ID, 2)
	before := map[string]shoal.TaskState{}
	for _, tk := range append(c.Tasks(svc.ID), c.Tasks(glob.ID)...) {
		before[tk.ID] = tk.Status.State
	}

	m := c.Manager()
	require.NoError(t, m.Stop())
	require.NoError(t, m.Restart())
	cl = c.Client()
	services, err := cl.ListServices(ctx)
	require.NoError(t, err)
	require.Len(t, services, 2)
	assert.Equal(t, "mon", services[0].Spec.Name)
	assert.Equal(t, "web", services[1].Spec.Name)
	after := map[string]shoal.TaskState{}
	for _, tk := range append(c.Tasks(svc.ID), c.Tasks(glob.ID)...) {
		after[tk.ID] = tk.Status.State
	}
	assert.Equal(t, before, after, "every task, with its state, survives the restart")

	// The workers reconnect and the cluster keeps working on the same tasks.
	c.WaitFor("workers ready again", func() bool {
		nodes, err := cl.ListNodes(ctx)
		if err != nil {
			return false
		}
		ready := 0
		for _, n := range nodes {
			if n.Role == shoal.Worker && n.State == shoal.NodeReady {
				ready++
			}
		}
		return ready == 2
	})
	_, err = cl.ScaleService(ctx, svc.ID, 6)
	require.NoError(t, err)
	c.WaitRunning(svc.ID, 6)
	for id := range before {
		tk, err := cl.GetTask(ctx, id)
		require.NoError(t, err)
		assert.Equal(t, shoal.TaskRunning, tk.Status.State, "original tasks were not restarted")
	}
}

func TestWorkerKeepsTasksWithoutManagerAndReconciles(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Workers: 2, HeartbeatPeriod: time.Second})
	ctx := ctxT(t)
	cl := c.Client()
	svc, err := cl.CreateService(ctx, webSpec("web", 4))
	require.NoError(t, err)
	c.WaitRunning(svc.ID, 4)
	w := c.Workers()[0]
	running := w.Fake().Running()
	require.Len(t, running, 2)

	// The manager goes away; the worker's tasks keep running.
	m := c.Manager()
	require.NoError(t, m.Stop())
	time.Sleep(300 * time.Millisecond) // let the agent notice and back off
	assert.Len(t, w.Fake().Running(), 2, "tasks keep running while the manager is away")
	for _, rt := range running {
		assert.True(t, w.Fake().Started(rt.ID))
	}

	require.NoError(t, m.Restart())
	cl = c.Client()
	// Reconcile: scale down while connected again; the worker follows.
	c.WaitFor("worker reconnected", func() bool {
		n, err := cl.GetNode(ctx, w.ID())
		return err == nil && n.State == shoal.NodeReady
	})
	c.WaitRunning(svc.ID, 4)
	for _, rt := range running {
		tk, err := cl.GetTask(ctx, rt.ID)
		require.NoError(t, err)
		assert.Equal(t, shoal.TaskRunning, tk.Status.State, "the same task kept running: %s", rt.ID)
	}
	_, err = cl.ScaleService(ctx, svc.ID, 2)
	require.NoError(t, err)
	c.WaitRunning(svc.ID, 2)
	c.WaitFor("runtimes follow the scale-down", func() bool {
		n := 0
		for _, w := range c.Workers() {
			n += len(w.Fake().Running())
		}
		return n == 2
	})
}

func TestWorkerPartitionedFromManagerReconciles(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Workers: 2})
	ctx := ctxT(t)
	cl := c.Client()
	svc, err := cl.CreateService(ctx, webSpec("web", 4))
	require.NoError(t, err)
	c.WaitRunning(svc.ID, 4)
	w := c.Workers()[0]
	wid := w.ID()

	c.Isolate(w)
	// The manager sees the node down and replaces its tasks on the other one.
	per := c.WaitRunningWhere(svc.ID, 4, func(per map[string]int) bool { return per[wid] == 0 })
	assert.Equal(t, 4, per[c.Workers()[1].ID()])
	// The partitioned worker still runs its old tasks meanwhile.
	assert.Len(t, w.Fake().Running(), 2)

	c.Heal()
	// Back in touch: the old tasks (replaced) are shut down on it.
	c.WaitFor("stale tasks stopped on the healed worker", func() bool { return len(w.Fake().Running()) == 0 })
	c.WaitFor("node ready again", func() bool {
		n, err := cl.GetNode(ctx, wid)
		return err == nil && n.State == shoal.NodeReady
	})
	c.WaitRunning(svc.ID, 4)
}

func TestTaskStatesNeverMoveBackward(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Workers: 3})
	ctx := ctxT(t)
	cl := c.Client()
	events, err := cl.Watch(ctx, shoal.WatchFilter{Kinds: []shoal.ObjectKind{shoal.KindTask}})
	require.NoError(t, err)

	var mu sync.Mutex
	var violations []string
	seen := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		last := map[string]shoal.TaskState{}
		for e := range events {
			if e.Action == shoal.Removed {
				continue
			}
			mu.Lock()
			seen++
			if prev, ok := last[e.Task.ID]; ok && e.Task.Status.State < prev {
				violations = append(violations, fmt.Sprintf("%s: %s -> %s", e.Task.ID, prev, e.Task.Status.State))
			}
			last[e.Task.ID] = e.Task.Status.State
			mu.Unlock()
		}
	}()

	svc, err := cl.CreateService(ctx, webSpec("web", 6))
	require.NoError(t, err)
	c.WaitRunning(svc.ID, 6)
	_, err = cl.ScaleService(ctx, svc.ID, 9)
	require.NoError(t, err)
	c.WaitRunning(svc.ID, 9)
	require.NoError(t, c.Workers()[0].Crash())
	c.WaitRunning(svc.ID, 9)
	require.NoError(t, c.Workers()[0].Restart())
	_, err = cl.ScaleService(ctx, svc.ID, 3)
	require.NoError(t, err)
	c.WaitRunning(svc.ID, 3)
	require.NoError(t, cl.RemoveService(ctx, svc.ID))
	c.WaitFor("tasks removed", func() bool { return len(c.Tasks(svc.ID)) == 0 })

	mu.Lock()
	assert.Empty(t, violations)
	assert.Greater(t, seen, 20)
	mu.Unlock()
}

func TestRollingUpdateOneAtATimeStopFirst(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Workers: 2})
	ctx := ctxT(t)
	cl := c.Client()
	svc, err := cl.CreateService(ctx, webSpec("web", 4))
	require.NoError(t, err)
	c.WaitRunning(svc.ID, 4)

	events, err := cl.Watch(ctx, shoal.WatchFilter{Services: []string{svc.ID}, Kinds: []shoal.ObjectKind{shoal.KindTask}})
	require.NoError(t, err)

	live := map[string]*shoal.Task{}
	for _, tk := range c.Tasks(svc.ID) {
		if tk.Status.State == shoal.TaskRunning && tk.DesiredState == shoal.TaskRunning {
			live[tk.ID] = tk
		}
	}
	if !assert.Len(t, live, 4) {
		for _, tk := range c.Tasks(svc.ID) {
			t.Logf("%s slot %d node %s desired %s state %s msg %q err %q", tk.ID, tk.Slot, tk.NodeID, tk.DesiredState, tk.Status.State, tk.Status.Message, tk.Status.Err)
		}
		t.FailNow()
	}
	cur, err := cl.GetService(ctx, svc.ID)
	require.NoError(t, err)
	spec := cur.Spec
	spec.Task.Env = []string{"VERSION=2"}
	up, err := cl.UpdateService(ctx, svc.ID, cur.Version, spec)
	require.NoError(t, err)
	assert.Equal(t, cur.SpecVersion+1, up.SpecVersion)

	// Track tasks that are "up" (running, or meant to run and started) per
	// slot; stop-first with parallelism 1 means at most one slot is ever below
	// strength and no slot ever has two.
	maxPerSlot := 0
	minLive := 4
	deadline := time.After(30 * time.Second)
	for {
		done := true
		for _, tk := range live {
			if tk.SpecVersion != up.SpecVersion {
				done = false
			}
		}
		if done && len(live) == 4 {
			break
		}
		select {
		case e, ok := <-events:
			require.True(t, ok)
			tk := e.Task
			if e.Action == shoal.Removed || tk.Status.State != shoal.TaskRunning || tk.DesiredState > shoal.TaskRunning {
				delete(live, tk.ID)
			} else {
				live[tk.ID] = tk
			}
			perSlot := map[uint64]int{}
			for _, x := range live {
				perSlot[x.Slot]++
				maxPerSlot = max(maxPerSlot, perSlot[x.Slot])
			}
			minLive = min(minLive, len(live))
		case <-deadline:
			t.Fatalf("update did not finish; live=%d", len(live))
		}
	}
	assert.Equal(t, 1, maxPerSlot, "stop-first: never two tasks of a slot")
	assert.GreaterOrEqual(t, minLive, 3, "one task at a time")
	c.WaitFor("update completed", func() bool {
		s, err := cl.GetService(ctx, svc.ID)
		return err == nil && s.UpdateStatus.State == shoal.UpdateCompleted
	})
	for _, tk := range c.Tasks(svc.ID) {
		if tk.DesiredState == shoal.TaskRunning {
			assert.Equal(t, []string{"VERSION=2"}, tk.Spec.Env)
		}
	}
}

func TestFailedTasksAreRestarted(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Workers: 1})
	ctx := ctxT(t)
	cl := c.Client()
	svc, err := cl.CreateService(ctx, webSpec("web", 2))
	require.NoError(t, err)
	c.WaitRunning(svc.ID, 2)
	w := c.Workers()[0]
	victim := w.Fake().Running()[0]
	require.NoError(t, w.Fake().Exit(victim.ID, 3))
	c.WaitFor("failed task recorded and replaced", func() bool {
		tk, err := cl.GetTask(ctx, victim.ID)
		if err != nil || tk.Status.State != shoal.TaskFailed {
			return false
		}
		return len(c.Running(svc.ID)) > 0 && c.Running(svc.ID)[w.ID()] == 2
	})
	tk, err := cl.GetTask(ctx, victim.ID)
	require.NoError(t, err)
	assert.Equal(t, 3, tk.Status.ExitCode)
	assert.Contains(t, tk.Status.Err+tk.Status.Message, "exit code 3")
	// The replacement took the same slot.
	slots := map[uint64]int{}
	for _, x := range c.Tasks(svc.ID) {
		if x.DesiredState == shoal.TaskRunning {
			slots[x.Slot]++
		}
	}
	assert.Equal(t, map[uint64]int{1: 1, 2: 1}, slots)
}

func TestBadInputIsRefusedAndWritesNothing(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Workers: 1})
	ctx := ctxT(t)
	cl := c.Client()
	tests := []struct {
		name string
		spec shoal.ServiceSpec
		want string
	}{
		{"negative replicas", webSpec("web", -1), "ServiceSpec.Replicas: must be >= 0"},
		{"no name", webSpec("", 1), "ServiceSpec.Name: is required"},
		{"no command", shoal.ServiceSpec{Name: "x", Replicas: 1}, "ServiceSpec.Task.Command: is required"},
		{"bad constraint", func() shoal.ServiceSpec {
			s := webSpec("x", 1)
			s.Task.Constraints = []string{"node.labels.zone=a"}
			return s
		}(), `constraint "node.labels.zone=a"`},
		{"global with replicas", shoal.ServiceSpec{Name: "g", Mode: shoal.Global, Replicas: 2, Task: shoal.TaskSpec{Command: []string{"x"}}},
			"ServiceSpec.Replicas: must be 0 for a global service"},
		{"bad mode", shoal.ServiceSpec{Name: "g", Mode: 7, Task: shoal.TaskSpec{Command: []string{"x"}}}, "ServiceSpec.Mode"},
		{"negative max replicas", func() shoal.ServiceSpec {
			s := webSpec("x", 1)
			s.Task.MaxReplicasPerNode = -1
			return s
		}(), "ServiceSpec.Task.MaxReplicasPerNode: must be >= 0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := cl.CreateService(ctx, tc.spec)
			require.Error(t, err)
			assert.ErrorIs(t, err, shoal.ErrInvalidSpec)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
	services, err := cl.ListServices(ctx)
	require.NoError(t, err)
	assert.Empty(t, services, "nothing was written")

	_, err = cl.GetService(ctx, "nope")
	assert.ErrorIs(t, err, shoal.ErrNotFound)
	_, err = cl.UpdateNode(ctx, "nope", shoal.NodeUpdate{Availability: shoal.Drain})
	assert.ErrorIs(t, err, shoal.ErrNotFound)
	_, err = cl.UpdateNode(ctx, c.Workers()[0].ID(), shoal.NodeUpdate{Availability: 9})
	assert.ErrorIs(t, err, shoal.ErrInvalidSpec)
	assert.Contains(t, err.Error(), "NodeUpdate.Availability")

	svc, err := cl.CreateService(ctx, webSpec("web", 1))
	require.NoError(t, err)
	_, err = cl.CreateService(ctx, webSpec("web", 1))
	assert.ErrorIs(t, err, shoal.ErrExist)
	spec := svc.Spec
	spec.Replicas = 2
	_, err = cl.UpdateService(ctx, svc.ID, svc.Version, spec)
	require.NoError(t, err)
	_, err = cl.UpdateService(ctx, svc.ID, svc.Version, spec)
	assert.ErrorIs(t, err, shoal.ErrConflict, "stale version")

	// Tokens.
	_, err = shoal.Join(ctx, shoal.Config{StateDir: t.TempDir(), ListenAddr: "127.0.0.1:0"}, c.Manager().Addr, "SHLTKN-1-bad")
	assert.ErrorIs(t, err, shoal.ErrInvalidToken)
}

func TestWorkerClientAndDial(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Workers: 1})
	ctx := ctxT(t)
	_, err := c.Workers()[0].Shoal().Client().ListServices(ctx)
	assert.True(t, errors.Is(err, shoal.ErrNotManager), "a worker has no control API: %v", err)
}

func TestInitAndRestartRefuseWrongStateDirs(t *testing.T) {
	ctx := ctxT(t)
	dir := t.TempDir()
	// Start (restart) on an empty StateDir: nothing to restart.
	n, err := shoal.New(shoal.Config{StateDir: dir, ListenAddr: "127.0.0.1:0"})
	require.NoError(t, err)
	err = n.Start(ctx)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "holds no node; use Init")
	assert.Error(t, n.Err())

	mgr, err := shoal.Init(ctx, shoal.Config{StateDir: dir, ListenAddr: "127.0.0.1:0", DisableAgent: true})
	require.NoError(t, err)
	require.NoError(t, mgr.Stop(ctx))
	require.NoError(t, mgr.Stop(ctx), "Stop is idempotent")
	err = mgr.Start(ctx)
	assert.ErrorIs(t, err, shoal.ErrStopped, "a stopped node does not start again")
	assert.ErrorContains(t, err, "make a new one with New(cfg)")
	again, err := shoal.New(shoal.Config{StateDir: dir, ListenAddr: "127.0.0.1:0", DisableAgent: true})
	require.NoError(t, err)
	require.NoError(t, again.Start(ctx), "a new Node restarts the stopped one's StateDir")
	assert.ErrorIs(t, again.Start(ctx), shoal.ErrExist, "a started node does not start twice")
	require.NoError(t, again.Stop(ctx))
	_, err = shoal.Init(ctx, shoal.Config{StateDir: dir, ListenAddr: "127.0.0.1:0"})
	assert.ErrorIs(t, err, shoal.ErrExist, "a second Init on the same StateDir is refused")

	// Config validation names the field.
	_, err = shoal.New(shoal.Config{ListenAddr: "127.0.0.1:0"})
	assert.ErrorContains(t, err, "Config.StateDir: is required")
	_, err = shoal.New(shoal.Config{StateDir: dir, ListenAddr: "nope"})
	assert.ErrorContains(t, err, "Config.ListenAddr")
	_, err = shoal.New(shoal.Config{StateDir: dir, ListenAddr: "127.0.0.1:0", HeartbeatPeriod: time.Millisecond})
	assert.ErrorContains(t, err, "Config.HeartbeatPeriod: must be at least 10ms")
}

func TestWorkerLeavesAndJoinsAgain(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Workers: 2, HeartbeatPeriod: 5 * time.Second})
	ctx := ctxT(t)
	cl := c.Client()
	svc, err := cl.CreateService(ctx, webSpec("web", 4))
	require.NoError(t, err)
	c.WaitRunning(svc.ID, 4)

	w := c.Workers()[0]
	oldID := w.ID()
	require.NoError(t, w.Shoal().Leave(ctx))
	// With 5s heartbeats, only the graceful leave can make this fast: the
	// node is down at once and its tasks are replaced on the other worker.
	n, err := cl.GetNode(ctx, oldID)
	require.NoError(t, err)
	assert.Equal(t, shoal.NodeDown, n.State)
	per := c.WaitRunningWhere(svc.ID, 4, func(per map[string]int) bool { return per[oldID] == 0 })
	assert.Equal(t, 4, per[c.Workers()[1].ID()])
	for _, tk := range c.Tasks(svc.ID) {
		if tk.NodeID == oldID {
			assert.Equal(t, shoal.TaskShutdown, tk.Status.State, "the leaving node reported its tasks stopped")
		}
	}

	// The manager cannot leave.
	assert.ErrorIs(t, c.Manager().Shoal().Leave(ctx), shoal.ErrInvalidSpec)

	// The node object stays until removed; the StateDir can join again.
	require.NoError(t, cl.RemoveNode(ctx, oldID, false))
	_, err = cl.GetNode(ctx, oldID)
	assert.ErrorIs(t, err, shoal.ErrNotFound)
}

func TestTaskHistoryIsTrimmedToTheClusterLimit(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Workers: 1})
	ctx := ctxT(t)
	cl := c.Client()
	info, err := cl.Cluster(ctx)
	require.NoError(t, err)
	assert.Equal(t, 5, info.TaskHistoryLimit)
	limit := 2
	info, err = cl.UpdateCluster(ctx, shoal.ClusterUpdate{TaskHistoryLimit: &limit})
	require.NoError(t, err)
	assert.Equal(t, 2, info.TaskHistoryLimit)
	bad := -1
	_, err = cl.UpdateCluster(ctx, shoal.ClusterUpdate{TaskHistoryLimit: &bad})
	assert.ErrorContains(t, err, "ClusterUpdate.TaskHistoryLimit: must be >= 0")

	svc, err := cl.CreateService(ctx, webSpec("web", 1))
	require.NoError(t, err)
	c.WaitRunning(svc.ID, 1)
	w := c.Workers()[0]
	// Make the slot's task fail 5 times; each is replaced.
	for i := 0; i < 5; i++ {
		var cur string
		c.WaitFor("a running task", func() bool {
			r := w.Fake().Running()
			if len(r) == 1 {
				cur = r[0].ID
			}
			return len(r) == 1
		})
		require.NoError(t, w.Fake().Exit(cur, 1))
		c.WaitFor("the failed task replaced", func() bool {
			r := w.Fake().Running()
			return len(r) == 1 && r[0].ID != cur
		})
	}
	c.WaitRunning(svc.ID, 1)
	c.WaitFor("history trimmed to 2 dead tasks", func() bool {
		dead := 0
		for _, tk := range c.Tasks(svc.ID) {
			if tk.Status.State.Terminal() {
				dead++
			}
		}
		return dead == 2
	})
}
