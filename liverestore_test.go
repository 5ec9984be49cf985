package shoal_test

import (
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal"
	"github.com/shoalhq/shoal/runtime/process"
	"github.com/shoalhq/shoal/shoaltest"
)

func taskIDs(tasks []*shoal.Task, state shoal.TaskState) []string {
	var ids []string
	for _, t := range tasks {
		if t.Status.State == state {
			ids = append(ids, t.ID)
		}
	}
	sort.Strings(ids)
	return ids
}

// TestLiveRestoreReadoptsTasks stops a worker with LiveRestore: its tasks
// keep running (detached from the runtime's point of view), the managers
// replace nothing while it is back within the heartbeat grace, and the
// restarted node re-adopts the same tasks.
func TestLiveRestoreReadoptsTasks(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{
		Workers: 1, HeartbeatPeriod: time.Second,
		Configure: func(_ string, cfg *shoal.Config) { cfg.LiveRestore = true },
	})
	ctx := ctxT(t)
	svc, err := c.Client().CreateService(ctx, webSpec("web", 3))
	require.NoError(t, err)
	c.WaitRunning(svc.ID, 3)
	before := taskIDs(c.Tasks(svc.ID), shoal.TaskRunning)
	require.Len(t, before, 3)

	w := c.Workers()[0]
	require.NoError(t, w.Stop())
	for _, id := range before {
		assert.True(t, w.Fake().Detached(id), "task %s is left running, detached", id)
	}
	require.NoError(t, w.Restart())
	c.WaitFor("the tasks re-adopted", func() bool {
		for _, id := range before {
			if w.Fake().Detached(id) {
				return false
			}
		}
		return true
	})
	c.WaitRunning(svc.ID, 3)
	assert.Equal(t, before, taskIDs(c.Tasks(svc.ID), shoal.TaskRunning), "the same tasks run: none was replaced")
	for _, id := range before {
		assert.Equal(t, 1, w.Fake().CallCount(id, "Start"), "task %s was started once", id)
	}
}

// TestLiveRestoreLeaveStopsTasks: leaving the cluster stops the tasks even
// with LiveRestore.
func TestLiveRestoreLeaveStopsTasks(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{
		Workers: 1, HeartbeatPeriod: time.Second,
		Configure: func(_ string, cfg *shoal.Config) { cfg.LiveRestore = true },
	})
	ctx := ctxT(t)
	svc, err := c.Client().CreateService(ctx, webSpec("web", 2))
	require.NoError(t, err)
	c.WaitRunning(svc.ID, 2)
	w := c.Workers()[0]
	require.NoError(t, w.Shoal().Leave(ctx))
	assert.Empty(t, w.Fake().Running())
}

func TestLiveRestoreNeedsARestorer(t *testing.T) {
	rt, err := process.New(process.Config{Dir: t.TempDir()})
	require.NoError(t, err)
	cfg := shoal.DefaultConfig(t.TempDir(), "127.0.0.1:0")
	cfg.Runtime = rt
	cfg.LiveRestore = true
	err = cfg.Validate()
	require.ErrorIs(t, err, shoal.ErrInvalidSpec)
	assert.Contains(t, err.Error(), "LiveRestore")
}
