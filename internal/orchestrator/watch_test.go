package orchestrator

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/internal/api"
)

func TestWatchResetAfterRestore(t *testing.T) {
	e := newEnv(t)
	e.start()
	a := e.createService(replicatedSpec("a", 2))
	e.eventually(func() bool { return len(e.tasks(a)) == 2 }, false, "a's tasks")
	snap, err := e.store.Snapshot()
	require.NoError(t, err)
	require.NoError(t, e.store.Restore(e.store.Index(), snap)) // closes watchers with ErrWatchReset
	b := e.createService(replicatedSpec("b", 3))
	e.eventually(func() bool { return len(e.tasks(b)) == 3 }, false, "watching again after the reset")
}

func TestWatchAfterStoreClosed(t *testing.T) {
	e := newEnv(t)
	e.start()
	e.store.Close()
	b := e.createService(replicatedSpec("b", 1))
	// The watch comes back after RetryInterval; the sweep that follows finds b.
	e.eventually(func() bool {
		e.clock.Advance(e.cfg.RetryInterval)
		return len(e.tasks(b)) == 1
	}, false, "reconciled after watching again")
	require.Equal(t, api.TaskState_TASK_STATE_PENDING, e.tasks(b)[0].Status.State)
}
