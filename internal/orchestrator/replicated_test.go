package orchestrator

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/identity"
)

func TestNewValidatesConfig(t *testing.T) {
	store := newCheckedStore(t)
	cases := map[string]func(*Config){
		"ReconcileInterval":   func(c *Config) { c.ReconcileInterval = 0 },
		"RetryInterval":       func(c *Config) { c.RetryInterval = -time.Second },
		"MaxBatch":            func(c *Config) { c.MaxBatch = 0 },
		"DefaultRestartDelay": func(c *Config) { c.DefaultRestartDelay = -1 },
	}
	for field, mod := range cases {
		t.Run(field, func(t *testing.T) {
			cfg := DefaultConfig()
			mod(&cfg)
			before := cfg
			_, err := New(store, cfg)
			require.Error(t, err)
			assert.ErrorIs(t, err, errdefs.ErrInvalidSpec)
			assert.Contains(t, err.Error(), "Config."+field)
			assert.Equal(t, before.MaxBatch, cfg.MaxBatch, "caller's config is not mutated")
		})
	}
	_, err := New(nil, DefaultConfig())
	assert.ErrorIs(t, err, errdefs.ErrInvalidSpec)
	o, err := New(store, Config{ReconcileInterval: time.Second, RetryInterval: time.Second, MaxBatch: 1})
	require.NoError(t, err, "nil Logger and Clock get defaults")
	require.NotNil(t, o)
}

func TestLifecycle(t *testing.T) {
	e := newEnv(t)
	o, err := New(e.store, e.cfg)
	require.NoError(t, err)
	require.NoError(t, o.Stop(context.Background()), "stop before start is a no-op")
	require.ErrorIs(t, o.Start(context.Background()), errdefs.ErrStopped)

	o, err = New(e.store, e.cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.ErrorIs(t, o.Start(ctx), context.Canceled)
	require.NoError(t, o.Start(context.Background()))
	require.True(t, errors.Is(o.Start(context.Background()), ErrStarted))
	<-o.Ready()
	require.NoError(t, o.Stop(context.Background()))
	require.NoError(t, o.Stop(context.Background()), "Stop is idempotent")
}

func TestReplicatedCreatesSlots(t *testing.T) {
	e := newEnv(t)
	e.addNode("n1", api.NodeState_NODE_STATE_READY, 0, nil)
	e.start()
	spec := replicatedSpec("web", 3)
	spec.Labels = map[string]string{"a": "b"}
	id := e.createService(spec)

	e.eventually(func() bool { return len(e.tasks(id)) == 3 }, false, "3 tasks created")
	ts := e.tasks(id)
	assert.Equal(t, seq(3), slots(ts))
	for _, tk := range ts {
		assert.True(t, identity.Valid(tk.Id))
		assert.Equal(t, id, tk.ServiceId)
		assert.Equal(t, "web", tk.ServiceName)
		assert.Empty(t, tk.NodeId)
		assert.Equal(t, uint64(1), tk.SpecVersion)
		assert.Equal(t, []string{"sleep", "1000"}, tk.Spec.Command)
		assert.Equal(t, api.TaskState_TASK_STATE_RUNNING, tk.DesiredState)
		assert.Equal(t, api.TaskState_TASK_STATE_PENDING, tk.Status.State)
		assert.Equal(t, "pending task scheduling", tk.Status.Message)
		assert.Equal(t, e.clock.Now().UnixNano(), tk.Status.Timestamp)
	}
	// Running the tasks changes nothing more.
	e.eventually(func() bool { return count(e.tasks(id), running) == 3 }, true, "all running")
	assert.Len(t, e.tasks(id), 3)
}

func TestReplicatedScaleUpAndDown(t *testing.T) {
	e := newEnv(t)
	e.addNode("n1", api.NodeState_NODE_STATE_READY, 0, nil)
	e.start()
	id := e.createService(replicatedSpec("web", 2))
	e.eventually(func() bool { return count(e.tasks(id), running) == 2 }, true, "2 running")

	e.updateService(id, func(s *api.ServiceSpec) { s.GetReplicated().Replicas = 5 }, false)
	e.eventually(func() bool { return count(e.tasks(id), running) == 5 }, true, "5 running")
	assert.Equal(t, seq(5), slots(e.tasks(id)))

	e.updateService(id, func(s *api.ServiceSpec) { s.GetReplicated().Replicas = 2 }, false)
	e.eventually(func() bool {
		return count(e.tasks(id), func(t *api.Task) bool { return t.DesiredState == api.TaskState_TASK_STATE_REMOVE }) == 3
	}, false, "slots 3..5 marked REMOVE")
	for _, tk := range e.tasks(id) {
		if tk.Slot > 2 {
			assert.Equal(t, api.TaskState_TASK_STATE_REMOVE, tk.DesiredState, "slot %d", tk.Slot)
			assert.Equal(t, api.TaskState_TASK_STATE_RUNNING, tk.Status.State, "still running until the worker stops it")
		} else {
			assert.True(t, running(tk))
		}
	}
	// The workers stop them; the reaper deletes them.
	e.eventually(func() bool { return len(e.tasks(id)) == 2 }, true, "removed tasks reaped")
	assert.Equal(t, seq(2), slots(e.tasks(id)))
}

func TestScaleDownDeletesPendingTasks(t *testing.T) {
	e := newEnv(t) // no nodes: tasks stay pending
	e.start()
	id := e.createService(replicatedSpec("web", 4))
	e.eventually(func() bool { return len(e.tasks(id)) == 4 }, false, "4 pending")
	e.updateService(id, func(s *api.ServiceSpec) { s.GetReplicated().Replicas = 1 }, false)
	e.eventually(func() bool { return len(e.tasks(id)) == 1 }, false, "never-assigned tasks deleted at once")
	assert.Equal(t, []uint64{1}, slots(e.tasks(id)))
}

func TestRestartConditions(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cond      api.RestartCondition
		end       api.TaskState
		restarted bool
	}{
		{"any/failed", api.RestartCondition_RESTART_CONDITION_ANY, api.TaskState_TASK_STATE_FAILED, true},
		{"any/complete", api.RestartCondition_RESTART_CONDITION_ANY, api.TaskState_TASK_STATE_COMPLETE, true},
		{"any/unasked-shutdown", api.RestartCondition_RESTART_CONDITION_ANY, api.TaskState_TASK_STATE_SHUTDOWN, true},
		{"on-failure/failed", api.RestartCondition_RESTART_CONDITION_ON_FAILURE, api.TaskState_TASK_STATE_FAILED, true},
		{"on-failure/rejected", api.RestartCondition_RESTART_CONDITION_ON_FAILURE, api.TaskState_TASK_STATE_REJECTED, true},
		{"on-failure/complete", api.RestartCondition_RESTART_CONDITION_ON_FAILURE, api.TaskState_TASK_STATE_COMPLETE, false},
		{"none/failed", api.RestartCondition_RESTART_CONDITION_NONE, api.TaskState_TASK_STATE_FAILED, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.addNode("n1", api.NodeState_NODE_STATE_READY, 0, nil)
			o := e.start()
			spec := replicatedSpec("job", 1)
			spec.Task.Restart = &api.RestartPolicy{Condition: tc.cond}
			id := e.createService(spec)
			e.eventually(func() bool { return count(e.tasks(id), running) == 1 }, true, "running")
			first := e.tasks(id)[0]
			e.report(first.Id, tc.end)

			if tc.restarted {
				e.eventually(func() bool { return len(e.tasks(id)) == 2 }, false, "replacement created")
				old := e.task(first.Id)
				assert.Equal(t, api.TaskState_TASK_STATE_SHUTDOWN, old.DesiredState)
				occ := e.occupants(id)
				require.Len(t, occ, 1)
				assert.Equal(t, uint64(1), occ[0].Slot)
				assert.Equal(t, api.TaskState_TASK_STATE_PENDING, occ[0].Status.State)
				return
			}
			// Not restarted: the dead task keeps its slot. Check after a full
			// sweep has certainly seen it.
			require.NoError(t, o.Stop(context.Background()))
			o2 := e.start()
			_ = o2
			e.clock.Advance(e.cfg.ReconcileInterval)
			e.eventually(func() bool {
				return !e.clock.hasTimerAt(e.clock.Now()) && e.clock.hasTimerAt(e.clock.Now().Add(e.cfg.ReconcileInterval))
			}, false, "sweep done")
			ts := e.tasks(id)
			require.Len(t, ts, 1)
			assert.Equal(t, api.TaskState_TASK_STATE_RUNNING, ts[0].DesiredState)
			assert.Equal(t, tc.end, ts[0].Status.State)
		})
	}
}

func TestRestartDelayUsesClock(t *testing.T) {
	e := newEnv(t)
	e.cfg.ReconcileInterval = time.Hour // so the next timer is the restart's
	e.addNode("n1", api.NodeState_NODE_STATE_READY, 0, nil)
	e.start()
	spec := replicatedSpec("web", 1)
	spec.Task.Restart = &api.RestartPolicy{Delay: int64(30 * time.Second)}
	id := e.createService(spec)
	e.eventually(func() bool { return count(e.tasks(id), running) == 1 }, true, "running")
	first := e.tasks(id)[0]
	e.report(first.Id, api.TaskState_TASK_STATE_FAILED)
	due := e.clock.Now().Add(30 * time.Second)
	e.eventually(func() bool { return e.clock.hasTimerAt(due) }, false, "restart timer armed")
	assert.Len(t, e.tasks(id), 1, "no replacement before the delay")
	e.clock.Advance(29 * time.Second)
	assert.Len(t, e.tasks(id), 1)
	e.clock.Advance(time.Second)
	e.eventually(func() bool { return len(e.tasks(id)) == 2 }, false, "replacement after the delay")
}

func TestRestartMaxAttempts(t *testing.T) {
	e := newEnv(t)
	e.addNode("n1", api.NodeState_NODE_STATE_READY, 0, nil)
	e.start()
	spec := replicatedSpec("web", 1)
	spec.Task.Restart = &api.RestartPolicy{MaxAttempts: 2}
	id := e.createService(spec)
	for i := 1; i <= 3; i++ {
		e.eventually(func() bool { return count(e.tasks(id), running) == 1 }, true, "running")
		occ := e.occupants(id)
		require.Len(t, occ, 1)
		e.report(occ[0].Id, api.TaskState_TASK_STATE_FAILED)
		if i < 3 {
			e.eventually(func() bool { return len(e.tasks(id)) == i+1 }, false, "restart %d", i)
		}
	}
	// Third failure: two restarts were made, so no more.
	e.clock.Advance(e.cfg.ReconcileInterval)
	e.eventually(func() bool { return e.clock.hasTimerAt(e.clock.Now().Add(e.cfg.ReconcileInterval)) }, false, "sweep done")
	ts := e.tasks(id)
	assert.Len(t, ts, 3)
	occ := e.occupants(id)
	require.Len(t, occ, 1)
	assert.Equal(t, api.TaskState_TASK_STATE_FAILED, occ[0].Status.State)
}

func TestRestartMaxAttemptsWindow(t *testing.T) {
	e := newEnv(t)
	e.addNode("n1", api.NodeState_NODE_STATE_READY, 0, nil)
	e.start()
	spec := replicatedSpec("web", 1)
	spec.Task.Restart = &api.RestartPolicy{MaxAttempts: 1, Window: int64(time.Minute)}
	id := e.createService(spec)
	e.eventually(func() bool { return count(e.tasks(id), running) == 1 }, true, "running")
	e.report(e.occupants(id)[0].Id, api.TaskState_TASK_STATE_FAILED)
	e.eventually(func() bool { return len(e.tasks(id)) == 2 }, false, "first restart")
	// A failure long after the previous one: the window has moved on.
	e.eventually(func() bool { return count(e.tasks(id), running) == 1 }, true, "running again")
	e.clock.Advance(2 * time.Minute)
	e.report(e.occupants(id)[0].Id, api.TaskState_TASK_STATE_FAILED)
	e.eventually(func() bool { return len(e.tasks(id)) == 3 }, false, "restart outside the window")
	// Two failures within the window: stop.
	e.eventually(func() bool { return count(e.tasks(id), running) == 1 }, true, "running again")
	e.report(e.occupants(id)[0].Id, api.TaskState_TASK_STATE_FAILED)
	e.clock.Advance(e.cfg.ReconcileInterval)
	e.eventually(func() bool { return e.clock.hasTimerAt(e.clock.Now().Add(e.cfg.ReconcileInterval)) }, false, "sweep done")
	assert.Len(t, e.tasks(id), 3)
}

func TestNodeDownReplacesTasks(t *testing.T) {
	e := newEnv(t)
	e.addNode("n1", api.NodeState_NODE_STATE_READY, 0, nil)
	e.addNode("n2", api.NodeState_NODE_STATE_READY, 0, nil)
	e.start()
	id := e.createService(replicatedSpec("web", 4))
	e.eventually(func() bool { return count(e.tasks(id), running) == 4 }, true, "running")
	var onN1 []*api.Task
	for _, tk := range e.tasks(id) {
		if tk.NodeId == "n1" {
			onN1 = append(onN1, tk)
		}
	}
	require.NotEmpty(t, onN1)

	e.setNode("n1", func(n *api.Node) { n.Status.State = api.NodeState_NODE_STATE_DOWN })
	e.eventually(func() bool {
		occ := e.occupants(id)
		return count(occ, running) == 4 && len(occ) == 4 && count(occ, func(t *api.Task) bool { return t.NodeId == "n1" }) == 0
	}, true, "replaced on n2")
	for _, old := range onN1 {
		assert.Equal(t, api.TaskState_TASK_STATE_SHUTDOWN, e.task(old.Id).DesiredState)
	}
	for _, occ := range e.occupants(id) {
		assert.Equal(t, "n2", occ.NodeId)
	}
	assert.Equal(t, seq(4), slots(e.occupants(id)))
}

func TestDrainReplacesTasks(t *testing.T) {
	e := newEnv(t)
	e.addNode("n1", api.NodeState_NODE_STATE_READY, 0, nil)
	e.addNode("n2", api.NodeState_NODE_STATE_READY, 0, nil)
	e.start()
	id := e.createService(replicatedSpec("web", 4))
	e.eventually(func() bool { return count(e.tasks(id), running) == 4 }, true, "running")
	e.setNode("n1", func(n *api.Node) { n.Spec.Availability = api.NodeAvailability_NODE_AVAILABILITY_DRAIN })
	e.eventually(func() bool {
		occ := e.occupants(id)
		return len(occ) == 4 && count(occ, running) == 4 && count(occ, func(t *api.Task) bool { return t.NodeId == "n1" }) == 0
	}, true, "moved off the drained node")
	for _, tk := range e.tasks(id) {
		if tk.NodeId == "n1" {
			assert.Equal(t, api.TaskState_TASK_STATE_SHUTDOWN, tk.DesiredState)
			assert.Equal(t, api.TaskState_TASK_STATE_SHUTDOWN, tk.Status.State)
		}
	}
}

func TestServiceRemoval(t *testing.T) {
	e := newEnv(t)
	e.addNode("n1", api.NodeState_NODE_STATE_READY, 0, nil)
	e.start()
	id := e.createService(replicatedSpec("web", 3))
	e.eventually(func() bool { return count(e.tasks(id), running) == 3 }, true, "running")
	e.deleteService(id)
	e.eventually(func() bool {
		return count(e.tasks(id), func(t *api.Task) bool { return t.DesiredState == api.TaskState_TASK_STATE_REMOVE }) == 3
	}, false, "marked REMOVE")
	e.eventually(func() bool { return len(e.tasks(id)) == 0 }, true, "reaped after they stop")
}

func TestServiceRemovalDeletesPendingTasks(t *testing.T) {
	e := newEnv(t)
	e.start()
	id := e.createService(replicatedSpec("web", 3))
	e.eventually(func() bool { return len(e.tasks(id)) == 3 }, false, "pending")
	e.deleteService(id)
	e.eventually(func() bool { return len(e.tasks(id)) == 0 }, false, "deleted")
}

func TestRestartedOrchestratorConverges(t *testing.T) {
	e := newEnv(t)
	e.addNode("n1", api.NodeState_NODE_STATE_READY, 0, nil)
	o := e.start()
	id := e.createService(replicatedSpec("web", 5))
	e.eventually(func() bool { return count(e.tasks(id), running) == 5 }, true, "running")
	require.NoError(t, o.Stop(context.Background()))

	// While no orchestrator runs: scale up, a task fails, a service is deleted.
	other := e.createService(replicatedSpec("other", 2))
	e.updateService(id, func(s *api.ServiceSpec) { s.GetReplicated().Replicas = 7 }, false)
	e.report(e.tasks(id)[0].Id, api.TaskState_TASK_STATE_FAILED)
	e.deleteService(other)

	for range 3 { // several terms in a row converge to the same state
		o := e.start()
		e.eventually(func() bool { return count(e.tasks(id), running) == 7 }, true, "converged")
		require.NoError(t, o.Stop(context.Background()))
	}
	occ := e.occupants(id)
	assert.Len(t, occ, 7)
	assert.Equal(t, seq(7), slots(occ))
	assert.Len(t, e.tasks(id), 8, "7 occupants + the failed task; nothing duplicated")
	assert.Empty(t, e.tasks(other))
}
