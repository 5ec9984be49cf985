package shoal_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal"
	"github.com/shoalhq/shoal/internal/keys"
)

func lockConfig(dir string) shoal.Config {
	return shoal.Config{StateDir: dir, ListenAddr: "127.0.0.1:0", DisableAgent: true, Hostname: "locked"}
}

// restartLocked stops m and starts it again from dir; with autolock on it
// comes back locked.
func restartNode(ctx context.Context, t *testing.T, m *shoal.Node, dir string) *shoal.Node {
	t.Helper()
	require.NoError(t, m.Stop(ctx))
	n, err := shoal.New(lockConfig(dir))
	require.NoError(t, err)
	require.NoError(t, n.Start(ctx))
	t.Cleanup(func() { _ = n.Stop(context.Background()) })
	return n
}

func waitUnlocked(ctx context.Context, t *testing.T, n *shoal.Node) {
	t.Helper()
	select {
	case <-n.Ready():
	case <-ctx.Done():
		t.Fatal("node not ready after unlock")
	}
}

// The Raft log never holds the cluster state in the clear, and with
// autolock a restarted manager serves nothing until it is given the unlock
// key; a wrong or malformed key leaves it locked; rotating the key retires
// the old one; turning autolock off lets it start by itself again.
func TestAutolockAndEncryptionAtRest(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	cfg := lockConfig(dir)
	cfg.AutoLock = true
	m, err := shoal.Init(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = m.Stop(context.Background()) })
	key := m.UnlockKey()
	require.NotEmpty(t, key)
	info, err := m.Client().Cluster(ctx)
	require.NoError(t, err)
	assert.True(t, info.AutoLock)
	assert.Equal(t, key, info.UnlockKey)
	const marker = "at-rest-marker-7f3a9c"
	_, err = m.Client().CreateService(ctx, shoal.ServiceSpec{Name: marker, Task: shoal.TaskSpec{Command: []string{"x"}}})
	require.NoError(t, err)

	// Wait until the data key file is wrapped (the manager does it once it
	// sees autolock in the cluster object), then restart.
	dataKey := filepath.Join(dir, "keys", "data.key")
	require.Eventually(t, func() bool {
		locked, err := keys.IsLocked(dataKey)
		return err == nil && locked
	}, 30*time.Second, 10*time.Millisecond, "data key never wrapped")

	n := restartNode(ctx, t, m, dir)
	require.True(t, n.Locked())
	select {
	case <-n.Ready():
		t.Fatal("a locked manager must not be ready")
	default:
	}
	raw, err := os.ReadFile(filepath.Join(dir, "raft", "raft.db"))
	require.NoError(t, err)
	assert.False(t, bytes.Contains(raw, []byte(marker)), "the Raft log holds cluster state in the clear")

	other := "SHLKEY-1-" + string(bytes.Repeat([]byte("0"), 52))
	err = n.Unlock(ctx, other)
	require.ErrorIs(t, err, shoal.ErrWrongUnlockKey)
	assert.True(t, n.Locked())
	require.ErrorIs(t, n.Unlock(ctx, "SHLKEY-1-nope"), shoal.ErrInvalidUnlockKey)
	require.NoError(t, n.Unlock(ctx, key))
	waitUnlocked(ctx, t, n)
	assert.False(t, n.Locked())
	svc, err := n.Client().GetService(ctx, marker)
	require.NoError(t, err)
	assert.Equal(t, marker, svc.Spec.Name)

	// Rotation: the old key stops working.
	before, err := os.ReadFile(dataKey)
	require.NoError(t, err)
	upd, err := n.Client().UpdateCluster(ctx, shoal.ClusterUpdate{RotateUnlockKey: true})
	require.NoError(t, err)
	newKey := upd.UnlockKey
	require.NotEqual(t, key, newKey)
	require.Eventually(t, func() bool { return n.UnlockKey() == newKey }, 30*time.Second, 10*time.Millisecond)
	// The manager rewraps asynchronously; a restart before that would still
	// take the old key, so wait for the file to change.
	require.Eventually(t, func() bool {
		b, err := os.ReadFile(dataKey)
		return err == nil && !bytes.Equal(b, before)
	}, 30*time.Second, 10*time.Millisecond, "data key never rewrapped")
	n2 := restartNode(ctx, t, n, dir)
	require.ErrorIs(t, n2.Unlock(ctx, key), shoal.ErrWrongUnlockKey)
	require.NoError(t, n2.Unlock(ctx, newKey))
	waitUnlocked(ctx, t, n2)

	// A locked manager can be stopped without ever being unlocked.
	locked := restartNode(ctx, t, n2, dir)
	require.True(t, locked.Locked())
	require.NoError(t, locked.Stop(ctx))
	n2, err = shoal.New(lockConfig(dir))
	require.NoError(t, err)
	require.NoError(t, n2.Start(ctx))
	t.Cleanup(func() { _ = n2.Stop(context.Background()) })
	require.NoError(t, n2.Unlock(ctx, newKey))
	waitUnlocked(ctx, t, n2)

	// Autolock off: the next restart needs no key.
	off := false
	upd, err = n2.Client().UpdateCluster(ctx, shoal.ClusterUpdate{AutoLock: &off})
	require.NoError(t, err)
	assert.Empty(t, upd.UnlockKey)
	require.Eventually(t, func() bool {
		locked, err := keys.IsLocked(dataKey)
		return err == nil && !locked
	}, 30*time.Second, 10*time.Millisecond, "data key never unwrapped")
	n3 := restartNode(ctx, t, n2, dir)
	assert.False(t, n3.Locked())
	waitUnlocked(ctx, t, n3)
	_, err = n3.Client().GetService(ctx, marker)
	require.NoError(t, err)
	_, err = n3.Client().UpdateCluster(ctx, shoal.ClusterUpdate{RotateUnlockKey: true})
	require.ErrorIs(t, err, shoal.ErrInvalidSpec)
}
