package orchestrator

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/state"
)

// invariants watches a service's tasks and checks, after every committed
// transaction, that no slot has two live tasks (stop-first) and that at most
// par slots are away from "one task wanted and running".
type invariants struct {
	svc  string
	par  int
	w    *state.Watcher
	done chan struct{}

	mu          sync.Mutex
	tasks       map[string]*api.Task
	violations  []string
	maxUnsettle int
}

func watchInvariants(t *testing.T, e *env, svc string, par int) *invariants {
	inv := &invariants{svc: svc, par: par, done: make(chan struct{}), tasks: map[string]*api.Task{}}
	inv.w = e.store.ViewAndWatch(func(tx state.ReadTx) {
		ts, err := tx.FindTasks(state.ByServiceID(svc))
		require.NoError(t, err)
		for _, tk := range ts {
			inv.tasks[tk.Id] = tk
		}
	}, state.KindIs(state.KindTask))
	inv.check()
	go func() {
		defer close(inv.done)
		var idx uint64
		for ev := range inv.w.C {
			if ev.Index != idx {
				inv.check() // the previous transaction is complete
				idx = ev.Index
			}
			tk := ev.Task()
			if tk.ServiceId != svc {
				continue
			}
			inv.mu.Lock()
			if ev.Action == state.ActionDelete {
				delete(inv.tasks, tk.Id)
			} else {
				inv.tasks[tk.Id] = tk
			}
			inv.mu.Unlock()
		}
	}()
	return inv
}

func (inv *invariants) check() {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	live := map[uint64]int{}
	settled := map[uint64]bool{}
	all := map[uint64]bool{}
	for _, tk := range inv.tasks {
		if tk.DesiredState == api.TaskState_TASK_STATE_REMOVE {
			continue
		}
		all[tk.Slot] = true
		if tk.Status.State < api.TaskState_TASK_STATE_COMPLETE {
			live[tk.Slot]++
		}
		if running(tk) {
			settled[tk.Slot] = true
		}
	}
	for slot, n := range live {
		if n > 1 {
			inv.violations = append(inv.violations, fmt.Sprintf("slot %d has %d live tasks", slot, n))
		}
	}
	inv.maxUnsettle = max(inv.maxUnsettle, len(all)-len(settled))
}

func (inv *invariants) stop(t *testing.T) {
	inv.w.Cancel()
	<-inv.done
	inv.check()
	assert.Empty(t, inv.violations)
	assert.LessOrEqual(t, inv.maxUnsettle, inv.par, "slots replaced at once")
	assert.Positive(t, inv.maxUnsettle, "the update was observed")
}

func (e *env) service(id string) *api.Service {
	var s *api.Service
	e.store.View(func(tx state.ReadTx) { s = tx.GetService(id) })
	return s
}

// updated reports whether every occupant of the service runs the service's
// spec version and the update is marked completed.
func (e *env) updated(id string, replicas int) bool {
	svc := e.service(id)
	occ := e.occupants(id)
	if len(occ) != replicas || svc.GetUpdateStatus().GetState() != api.UpdateState_UPDATE_STATE_COMPLETED {
		return false
	}
	for _, tk := range occ {
		if tk.SpecVersion != svc.SpecVersion || !running(tk) {
			return false
		}
	}
	return true
}

func changeCommand(cmd string) func(*api.ServiceSpec) {
	return func(s *api.ServiceSpec) { s.Task.Command = []string{cmd} }
}

func TestUpdateStopFirstOneAtATime(t *testing.T) {
	for _, par := range []uint64{0, 1, 2} {
		t.Run(fmt.Sprintf("parallelism=%d", par), func(t *testing.T) {
			e := newEnv(t)
			e.addNode("n1", ready, active, nil)
			e.addNode("n2", ready, active, nil)
			e.start()
			spec := replicatedSpec("web", 5)
			spec.Update = &api.UpdateConfig{Parallelism: par}
			id := e.createService(spec)
			e.eventually(func() bool { return count(e.tasks(id), running) == 5 }, true, "running")
			assert.Nil(t, e.service(id).UpdateStatus, "creating a service is not an update")

			inv := watchInvariants(t, e, id, int(max(par, 1)))
			e.updateService(id, changeCommand("v2"), true)
			e.eventually(func() bool {
				return e.service(id).GetUpdateStatus().GetState() == api.UpdateState_UPDATE_STATE_UPDATING
			}, false, "update started")
			us := e.service(id).UpdateStatus
			assert.Equal(t, e.clock.Now().UnixNano(), us.StartedAt)
			assert.Contains(t, us.Message, "spec version 2")

			e.eventually(func() bool { return e.updated(id, 5) }, true, "update completed")
			inv.stop(t)
			assert.Len(t, e.tasks(id), 10, "5 old tasks kept as history, 5 new")
			for _, tk := range e.occupants(id) {
				assert.Equal(t, []string{"v2"}, tk.Spec.Command)
			}
			us = e.service(id).UpdateStatus
			assert.Equal(t, e.clock.Now().UnixNano(), us.CompletedAt)
			assert.Equal(t, "update to spec version 2 completed", us.Message)
		})
	}
}

func TestUpdateSurvivesOrchestratorRestart(t *testing.T) {
	e := newEnv(t)
	e.addNode("n1", ready, active, nil)
	o := e.start()
	id := e.createService(replicatedSpec("web", 4))
	e.eventually(func() bool { return count(e.tasks(id), running) == 4 }, true, "running")
	inv := watchInvariants(t, e, id, 1)
	e.updateService(id, changeCommand("v2"), true)
	e.eventually(func() bool {
		return count(e.occupants(id), func(t *api.Task) bool { return t.SpecVersion == 2 && running(t) }) >= 2
	}, true, "half-way")
	require.NoError(t, o.Stop(context.Background()))
	// The workers finish what they were told; nothing new starts meanwhile.
	for range 3 {
		e.work()
	}
	e.start()
	e.eventually(func() bool { return e.updated(id, 4) }, true, "update completed by the new term")
	inv.stop(t)
	assert.Len(t, e.tasks(id), 8, "no task created twice")
}

func TestUpdateDelayUsesClock(t *testing.T) {
	e := newEnv(t)
	e.cfg.ReconcileInterval = time.Hour
	e.addNode("n1", ready, active, nil)
	e.start()
	spec := replicatedSpec("web", 2)
	spec.Update = &api.UpdateConfig{Delay: int64(time.Minute)}
	id := e.createService(spec)
	e.eventually(func() bool { return count(e.tasks(id), running) == 2 }, true, "running")
	e.updateService(id, changeCommand("v2"), true)
	v2running := func() int {
		return count(e.occupants(id), func(t *api.Task) bool { return t.SpecVersion == 2 && running(t) })
	}
	e.eventually(func() bool { return v2running() == 1 }, true, "first slot updated")
	due := e.clock.Now().Add(time.Minute)
	e.eventually(func() bool { return e.clock.hasTimerAt(due) }, true, "delay timer armed")
	e.work()
	assert.Equal(t, 1, count(e.tasks(id), func(t *api.Task) bool { return t.DesiredState == api.TaskState_TASK_STATE_SHUTDOWN }),
		"the second slot waits for the delay")
	e.clock.Advance(time.Minute)
	e.eventually(func() bool { return e.updated(id, 2) }, true, "second slot after the delay")
}

func TestUpdateFailureIsNotedAndUpdateGoesOn(t *testing.T) {
	e := newEnv(t)
	e.addNode("n1", ready, active, nil)
	e.start()
	spec := replicatedSpec("web", 2)
	spec.Task.Restart = &api.RestartPolicy{Condition: api.RestartCondition_RESTART_CONDITION_NONE}
	id := e.createService(spec)
	e.eventually(func() bool { return count(e.tasks(id), running) == 2 }, true, "running")
	e.updateService(id, changeCommand("v2"), true)
	var bad *api.Task
	e.eventually(func() bool {
		for _, tk := range e.occupants(id) {
			if tk.SpecVersion == 2 {
				bad = tk
				return true
			}
		}
		return false
	}, true, "first new task")
	e.report(bad.Id, api.TaskState_TASK_STATE_FAILED)
	e.eventually(func() bool {
		return count(e.occupants(id), func(t *api.Task) bool { return t.SpecVersion == 2 && running(t) }) == 1 &&
			e.service(id).GetUpdateStatus().GetState() == api.UpdateState_UPDATE_STATE_COMPLETED
	}, true, "the update went on to the next slot and completed")
	msg := e.service(id).UpdateStatus.Message
	assert.Contains(t, msg, "1 task(s) failed")
	assert.Contains(t, msg, bad.Id)
	assert.Contains(t, msg, "exit status 1")
}

func TestUpdateRestartsTowardNewestSpec(t *testing.T) {
	e := newEnv(t)
	e.addNode("n1", ready, active, nil)
	e.start()
	id := e.createService(replicatedSpec("web", 3))
	e.eventually(func() bool { return count(e.tasks(id), running) == 3 }, true, "running")
	e.updateService(id, changeCommand("v2"), true)
	e.eventually(func() bool {
		return count(e.occupants(id), func(t *api.Task) bool { return t.SpecVersion == 2 && running(t) }) == 1
	}, true, "one slot at v2")
	started := e.service(id).UpdateStatus.StartedAt
	e.updateService(id, changeCommand("v3"), true)
	e.eventually(func() bool { return e.updated(id, 3) }, true, "all at v3")
	for _, tk := range e.occupants(id) {
		assert.Equal(t, uint64(3), tk.SpecVersion)
		assert.Equal(t, []string{"v3"}, tk.Spec.Command)
	}
	assert.Equal(t, started, e.service(id).UpdateStatus.StartedAt)
	assert.Equal(t, 0, count(e.tasks(id), func(t *api.Task) bool {
		return t.SpecVersion == 2 && t.Status.State < api.TaskState_TASK_STATE_COMPLETE
	}))
}

func TestUpdateGlobalService(t *testing.T) {
	e := newEnv(t)
	for _, n := range []string{"n1", "n2", "n3"} {
		e.addNode(n, ready, active, nil)
	}
	e.start()
	id := e.createService(globalSpec("agent"))
	e.eventually(func() bool { return count(e.tasks(id), running) == 3 }, true, "running")
	e.updateService(id, changeCommand("v2"), true)
	e.eventually(func() bool { return e.updated(id, 3) }, true, "updated")
	assert.ElementsMatch(t, []string{"n1", "n2", "n3"}, nodesOf(e.occupants(id)))
	assert.Len(t, e.tasks(id), 6)
}

func TestUpdateOfPendingTasks(t *testing.T) {
	e := newEnv(t) // no nodes: nothing is ever assigned
	e.start()
	id := e.createService(replicatedSpec("web", 3))
	e.eventually(func() bool { return len(e.tasks(id)) == 3 }, false, "pending")
	e.updateService(id, changeCommand("v2"), true)
	// Unassigned tasks are stopped at once; the update then waits for the
	// first new task to run (it never does without nodes).
	e.eventually(func() bool {
		return count(e.occupants(id), func(t *api.Task) bool { return t.SpecVersion == 2 }) == 1
	}, false, "first slot replaced")
	old := count(e.tasks(id), func(t *api.Task) bool { return t.Status.State == api.TaskState_TASK_STATE_SHUTDOWN })
	assert.Equal(t, 1, old)
	e.addNode("n1", ready, active, nil)
	e.eventually(func() bool { return e.updated(id, 3) }, true, "updated once nodes exist")
}

// TestUpdateStartFirst checks, at every task change, that every slot has a
// task RUNNING and wanted running throughout a start-first update (an old
// task is told to stop only once its slot's new one runs), and that at most
// Parallelism slots have a new task starting.
func TestUpdateStartFirst(t *testing.T) {
	for _, par := range []uint64{1, 2} {
		t.Run(fmt.Sprintf("parallelism=%d", par), func(t *testing.T) {
			e := newEnv(t)
			e.addNode("n1", ready, active, nil)
			e.addNode("n2", ready, active, nil)
			e.start()
			spec := replicatedSpec("web", 4)
			spec.Update = &api.UpdateConfig{Parallelism: par, Order: api.UpdateOrder_UPDATE_ORDER_START_FIRST}
			id := e.createService(spec)
			e.eventually(func() bool { return count(e.tasks(id), running) == 4 }, true, "running")

			w := e.store.Watch(state.KindIs(state.KindTask))
			var (
				mu         sync.Mutex
				violations []string
				tasks      = map[string]*api.Task{}
				done       = make(chan struct{})
			)
			for _, tk := range e.tasks(id) {
				tasks[tk.Id] = tk
			}
			go func() {
				defer close(done)
				for ev := range w.C {
					tk := ev.Task()
					if tk.ServiceId != id {
						continue
					}
					mu.Lock()
					tasks[tk.Id] = tk
					// Serving slots: a task of the slot RUNNING and wanted
					// running. A slot never has none once it had one.
					serving := map[uint64]bool{}
					starting := map[uint64]bool{}
					for _, x := range tasks {
						if x.DesiredState == api.TaskState_TASK_STATE_RUNNING && x.Status.State == api.TaskState_TASK_STATE_RUNNING {
							serving[x.Slot] = true
						}
						if x.SpecVersion == 2 && x.DesiredState == api.TaskState_TASK_STATE_RUNNING && x.Status.State < api.TaskState_TASK_STATE_RUNNING {
							starting[x.Slot] = true
						}
					}
					if len(serving) < 4 {
						violations = append(violations, fmt.Sprintf("only %d slots serving", len(serving)))
					}
					if len(starting) > int(par) {
						violations = append(violations, fmt.Sprintf("%d slots starting at once", len(starting)))
					}
					mu.Unlock()
				}
			}()
			e.updateService(id, func(s *api.ServiceSpec) {
				s.Task.Command = []string{"v2"}
				s.Update = &api.UpdateConfig{Parallelism: par, Order: api.UpdateOrder_UPDATE_ORDER_START_FIRST}
			}, true)
			e.eventually(func() bool { return e.updated(id, 4) }, true, "update completed")
			w.Cancel()
			<-done
			mu.Lock()
			defer mu.Unlock()
			assert.Empty(t, violations, "every slot serves throughout a start-first update")
			for _, tk := range e.occupants(id) {
				assert.Equal(t, []string{"v2"}, tk.Spec.Command)
			}
			assert.Len(t, e.tasks(id), 8, "the old tasks kept as history")
		})
	}
}
