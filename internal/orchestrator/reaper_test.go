package orchestrator

import (
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/state"
)

func (e *env) setHistoryLimit(n int64) {
	e.t.Helper()
	require.NoError(e.t, e.store.UpdateRetry(e.ctx, 10, func(tx state.WriteTx) error {
		cs, err := tx.FindClusters(state.All())
		if err != nil {
			return err
		}
		cs[0].Spec.TaskHistoryLimit = n
		return tx.UpdateCluster(cs[0])
	}))
}

// crashLoop fails the service's single task n times, a second apart, and
// returns the failed tasks' IDs, oldest first.
func (e *env) crashLoop(id string, n int) []string {
	var failedIDs []string
	for i := range n {
		e.eventually(func() bool { return count(e.occupants(id), running) == 1 }, true, "running before failure %d", i)
		occ := e.occupants(id)[0]
		e.clock.Advance(time.Second)
		e.report(occ.Id, api.TaskState_TASK_STATE_FAILED)
		failedIDs = append(failedIDs, occ.Id)
		e.eventually(func() bool { return e.task(occ.Id).GetDesiredState() != api.TaskState_TASK_STATE_RUNNING }, false, "restart %d", i)
	}
	return failedIDs
}

func TestReaperKeepsHistory(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cluster int64 // cluster TaskHistoryLimit
		deflt   int64 // Config.DefaultTaskHistoryLimit
		keep    int
	}{
		{"default 5", 0, 5, 5},
		{"cluster limit", 2, 5, 2},
		{"config default", 0, 3, 3},
		{"negative keeps none", -1, 5, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.cfg.DefaultTaskHistoryLimit = tc.deflt
			e.addNode("n1", ready, active, nil)
			if tc.cluster != 0 {
				e.setHistoryLimit(tc.cluster)
			}
			e.start()
			id := e.createService(replicatedSpec("web", 1))
			failedIDs := e.crashLoop(id, 8)
			e.eventually(func() bool { return len(e.tasks(id)) == tc.keep+1 }, true, "history trimmed")
			var kept []string
			for _, tk := range e.tasks(id) {
				if tk.DesiredState != api.TaskState_TASK_STATE_RUNNING {
					kept = append(kept, tk.Id)
				}
			}
			want := failedIDs[len(failedIDs)-tc.keep:]
			slices.Sort(want)
			slices.Sort(kept)
			if tc.keep == 0 {
				want = nil
			}
			assert.Equal(t, want, kept, "the newest dead tasks are kept")
		})
	}
}

func TestReaperFollowsClusterLimitChanges(t *testing.T) {
	e := newEnv(t)
	e.addNode("n1", ready, active, nil)
	e.start()
	id := e.createService(replicatedSpec("web", 1))
	e.crashLoop(id, 4)
	e.eventually(func() bool { return len(e.tasks(id)) == 5 }, true, "4 dead + 1")
	e.setHistoryLimit(1)
	e.eventually(func() bool { return len(e.tasks(id)) == 2 }, false, "trimmed to the new limit")
}

func TestReaperKeepsEnoughForMaxAttempts(t *testing.T) {
	e := newEnv(t)
	e.addNode("n1", ready, active, nil)
	e.setHistoryLimit(1)
	e.start()
	spec := replicatedSpec("web", 1)
	spec.Task.Restart = &api.RestartPolicy{MaxAttempts: 3}
	id := e.createService(spec)
	e.crashLoop(id, 3)
	// The 4th failure is the last: 3 restarts were made.
	e.eventually(func() bool { return count(e.occupants(id), running) == 1 }, true, "running")
	e.report(e.occupants(id)[0].Id, api.TaskState_TASK_STATE_FAILED)
	e.clock.Advance(e.cfg.ReconcileInterval)
	e.eventually(func() bool { return e.clock.hasTimerAt(e.clock.Now().Add(e.cfg.ReconcileInterval)) }, false, "sweep done")
	ts := e.tasks(id)
	assert.Len(t, ts, 4, "history kept beyond the limit of 1 to count the attempts")
	assert.Equal(t, 0, count(ts, func(t *api.Task) bool { return t.Status.State < api.TaskState_TASK_STATE_COMPLETE }))
}

func TestReaperDeletesRemovedTasksOnDownNodes(t *testing.T) {
	e := newEnv(t)
	e.addNode("n1", ready, active, nil)
	e.start()
	id := e.createService(replicatedSpec("web", 2))
	e.eventually(func() bool { return count(e.tasks(id), running) == 2 }, true, "running")
	e.setNode("n1", func(n *api.Node) { n.Status.State = down })
	e.deleteService(id)
	e.eventually(func() bool { return len(e.tasks(id)) == 0 }, false, "nobody will report them; deleted")
}
