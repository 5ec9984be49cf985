package autolock

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/clock/clocktest"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/keys"
	"github.com/shoalhq/shoal/internal/state"
	"github.com/shoalhq/shoal/internal/state/statetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	clusterID = "c1"
	retry     = 5 * time.Second
)

// unlockKey is an unlock key in its text and byte forms.
type unlockKey struct {
	text  string
	bytes []byte
}

func newUnlockKey(t *testing.T) unlockKey {
	t.Helper()
	text, err := keys.NewUnlockKey()
	require.NoError(t, err)
	b, err := keys.ParseUnlockKey(text)
	require.NoError(t, err)
	return unlockKey{text, b}
}

// env is a manager's data key file and a store holding the cluster object,
// with autolock off.
type env struct {
	t     *testing.T
	clk   *clocktest.Fake
	store *state.Store
	path  string
	dek   []byte
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, clk: clocktest.NewFake(), path: filepath.Join(t.TempDir(), "data.key")}
	var err error
	e.dek, err = keys.NewDataKey()
	require.NoError(t, err)
	require.NoError(t, keys.SaveDataKey(e.path, e.dek, nil))
	e.store = statetest.NewStore(state.Config{CheckImmutable: true})
	t.Cleanup(func() { require.NoError(t, e.store.Verify()) })
	require.NoError(t, e.store.Update(context.Background(), func(tx state.WriteTx) error {
		return tx.CreateCluster(&api.Cluster{Id: clusterID, Spec: &api.ClusterSpec{Name: "default"}})
	}))
	return e
}

func (e *env) config(wrapped []byte) Config {
	cfg := DefaultConfig()
	cfg.ClusterID = clusterID
	cfg.DataKeyPath = e.path
	cfg.Wrapped = wrapped
	cfg.Clock = e.clk
	cfg.RetryInterval = retry
	return cfg
}

// start starts a Keeper, waits until it has looked at the cluster object, and
// stops it when the test ends.
func (e *env) start(wrapped []byte) *Keeper {
	e.t.Helper()
	k, err := New(e.store, e.config(wrapped))
	require.NoError(e.t, err)
	require.NoError(e.t, k.Start(context.Background()))
	e.t.Cleanup(func() { require.NoError(e.t, k.Stop(context.Background())) })
	<-k.Ready()
	synctest.Wait()
	return k
}

// setAutolock changes the cluster object and waits until the Keeper has
// handled the change.
func (e *env) setAutolock(on bool, key string) {
	e.t.Helper()
	require.NoError(e.t, e.store.Update(context.Background(), func(tx state.WriteTx) error {
		c := tx.GetCluster(clusterID)
		c.Spec.Autolock, c.UnlockKey = on, key
		return tx.UpdateCluster(c)
	}))
	synctest.Wait()
}

// advance moves the fake clock and waits until the Keeper has handled it.
func (e *env) advance(d time.Duration) {
	e.clk.Advance(d)
	synctest.Wait()
}

// requirePlain checks that the file holds the data key unwrapped.
func (e *env) requirePlain() {
	e.t.Helper()
	locked, err := keys.IsLocked(e.path)
	require.NoError(e.t, err)
	require.False(e.t, locked, "the data key file is wrapped")
	dek, err := keys.LoadDataKey(e.path, nil)
	require.NoError(e.t, err)
	require.Equal(e.t, e.dek, dek)
}

// requireWrappedWith checks that the file holds the data key wrapped with key.
func (e *env) requireWrappedWith(key []byte) {
	e.t.Helper()
	_, err := keys.LoadDataKey(e.path, nil)
	require.ErrorIs(e.t, err, keys.ErrLocked)
	dek, err := keys.LoadDataKey(e.path, key)
	require.NoError(e.t, err, "the file does not open with the cluster's key")
	require.Equal(e.t, e.dek, dek, "the data key itself never changes")
}

func TestNewValidates(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		name  string
		edit  func(*Config)
		field string
	}{
		{"no cluster ID", func(c *Config) { c.ClusterID = "" }, "ClusterID"},
		{"no path", func(c *Config) { c.DataKeyPath = "" }, "DataKeyPath"},
		{"short wrap key", func(c *Config) { c.Wrapped = []byte("short") }, "Wrapped"},
		{"empty wrap key", func(c *Config) { c.Wrapped = []byte{} }, "Wrapped"},
		{"zero retry", func(c *Config) { c.RetryInterval = 0 }, "RetryInterval"},
		{"negative retry", func(c *Config) { c.RetryInterval = -time.Second }, "RetryInterval"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := e.config(nil)
			tc.edit(&cfg)
			_, err := New(e.store, cfg)
			require.Error(t, err)
			assert.ErrorIs(t, err, errdefs.ErrInvalidSpec)
			assert.Contains(t, err.Error(), "Config."+tc.field)
		})
	}
	_, err := New(nil, e.config(nil))
	assert.ErrorIs(t, err, errdefs.ErrInvalidSpec)

	key := newUnlockKey(t)
	given := append([]byte(nil), key.bytes...)
	cfg := e.config(given)
	cfg.Clock, cfg.Logger = nil, nil
	k, err := New(e.store, cfg)
	require.NoError(t, err, "nil Clock and Logger take defaults")
	given[0] ^= 0xff
	assert.Equal(t, key.bytes, k.Wrapped(), "New copies Wrapped")
	got := k.Wrapped()
	got[0] ^= 0xff
	assert.Equal(t, key.bytes, k.Wrapped(), "Wrapped returns a copy")
	assert.Equal(t, given, cfg.Wrapped, "New leaves the caller's config as it was")
}

func TestFollowsTheClusterObject(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t)
		k := e.start(nil)
		e.requirePlain()
		assert.Nil(t, k.Wrapped())

		k1 := newUnlockKey(t)
		e.setAutolock(true, k1.text)
		e.requireWrappedWith(k1.bytes)
		assert.Equal(t, k1.bytes, k.Wrapped())

		k2 := newUnlockKey(t)
		e.setAutolock(true, k2.text)
		e.requireWrappedWith(k2.bytes)
		_, err := keys.LoadDataKey(e.path, k1.bytes)
		assert.ErrorIs(t, err, keys.ErrWrongUnlockKey, "the rotated-out key no longer opens the file")
		assert.Equal(t, k2.bytes, k.Wrapped())

		e.setAutolock(false, k2.text)
		e.requirePlain()
		assert.Nil(t, k.Wrapped())
		assert.Zero(t, e.clk.Timers(), "nothing to retry")
	})
}

func TestStartBringsTheFileInLine(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t)
		k1 := newUnlockKey(t)
		e.setAutolock(true, k1.text) // no Keeper yet
		e.requirePlain()
		k := e.start(nil)
		e.requireWrappedWith(k1.bytes)
		assert.Equal(t, k1.bytes, k.Wrapped())
	})
}

func TestMalformedKeyLeavesTheFile(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t)
		k := e.start(nil)
		k1 := newUnlockKey(t)
		e.setAutolock(true, k1.text)
		e.requireWrappedWith(k1.bytes)

		for _, bad := range []string{"SHLKEY-1-not-a-key", ""} {
			e.setAutolock(true, bad)
			e.requireWrappedWith(k1.bytes)
			assert.Equal(t, k1.bytes, k.Wrapped())
			assert.Zero(t, e.clk.Timers(), "a malformed key is not retried: only a change of the cluster can fix it")
		}

		k2 := newUnlockKey(t)
		e.setAutolock(true, k2.text)
		e.requireWrappedWith(k2.bytes)
	})
}

func TestFailedRewrapRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t)
		k := e.start(nil)
		aside := e.path + ".aside"
		require.NoError(t, os.Rename(e.path, aside))

		k1 := newUnlockKey(t)
		e.setAutolock(true, k1.text)
		assert.Nil(t, k.Wrapped(), "the rewrap failed")
		assert.Equal(t, 1, e.clk.Timers(), "a retry is pending")

		e.advance(retry - time.Nanosecond)
		assert.Nil(t, k.Wrapped(), "the retry is not due yet")

		e.advance(time.Nanosecond)
		assert.Nil(t, k.Wrapped(), "the file is still missing")
		assert.Equal(t, 1, e.clk.Timers(), "another retry is pending")

		require.NoError(t, os.Rename(aside, e.path))
		e.requirePlain()
		e.advance(retry)
		e.requireWrappedWith(k1.bytes)
		assert.Equal(t, k1.bytes, k.Wrapped())
		assert.Zero(t, e.clk.Timers(), "nothing left to retry")
	})
}

func TestWrongWrappedKeyRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t)
		k1, stale, k2 := newUnlockKey(t), newUnlockKey(t), newUnlockKey(t)
		require.NoError(t, keys.SaveDataKey(e.path, e.dek, k1.bytes))
		e.setAutolock(true, k2.text)

		k := e.start(stale.bytes) // the file is wrapped with k1, not with stale
		e.requireWrappedWith(k1.bytes)
		assert.Equal(t, stale.bytes, k.Wrapped())
		assert.Equal(t, 1, e.clk.Timers(), "a retry is pending")

		e.advance(retry)
		e.requireWrappedWith(k1.bytes)

		require.NoError(t, keys.SaveDataKey(e.path, e.dek, stale.bytes))
		e.advance(retry)
		e.requireWrappedWith(k2.bytes)
		assert.Equal(t, k2.bytes, k.Wrapped())
		assert.Zero(t, e.clk.Timers())
	})
}

func TestFileAlreadyWrappedAsWantedIsAdopted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t)
		k1 := newUnlockKey(t)
		require.NoError(t, keys.SaveDataKey(e.path, e.dek, k1.bytes))
		before, err := os.ReadFile(e.path)
		require.NoError(t, err)
		e.setAutolock(true, k1.text)

		k := e.start(nil) // told the file is plain; it is wrapped as wanted
		assert.Equal(t, k1.bytes, k.Wrapped())
		after, err := os.ReadFile(e.path)
		require.NoError(t, err)
		assert.Equal(t, before, after, "the file was not written")
		assert.Zero(t, e.clk.Timers())
	})
}

func TestAbsentClusterLeavesTheFile(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t)
		k1 := newUnlockKey(t)
		require.NoError(t, keys.SaveDataKey(e.path, e.dek, k1.bytes))
		require.NoError(t, e.store.Update(context.Background(), func(tx state.WriteTx) error {
			return tx.DeleteCluster(clusterID)
		}))
		k := e.start(k1.bytes)
		e.requireWrappedWith(k1.bytes)
		assert.Equal(t, k1.bytes, k.Wrapped())

		require.NoError(t, e.store.Update(context.Background(), func(tx state.WriteTx) error {
			return tx.CreateCluster(&api.Cluster{Id: clusterID, Spec: &api.ClusterSpec{Name: "default"}})
		}))
		synctest.Wait()
		e.requirePlain()
	})
}

func TestFollowsAfterStoreRestore(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t)
		k := e.start(nil)
		k1 := newUnlockKey(t)
		e.setAutolock(true, k1.text)
		e.requireWrappedWith(k1.bytes)
		snap, err := e.store.Snapshot()
		require.NoError(t, err)

		e.setAutolock(false, "")
		e.requirePlain()

		require.NoError(t, e.store.Restore(e.store.Index()+1, snap))
		synctest.Wait()
		e.requireWrappedWith(k1.bytes)
		assert.Equal(t, k1.bytes, k.Wrapped())

		k2 := newUnlockKey(t)
		e.setAutolock(true, k2.text)
		e.requireWrappedWith(k2.bytes)
	})
}

func TestWatchesAgainAfterStoreClosedIt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t)
		k := e.start(nil)
		e.store.Close()
		synctest.Wait()
		assert.Equal(t, 1, e.clk.Timers(), "watching again is pending")

		k1 := newUnlockKey(t)
		e.setAutolock(true, k1.text)
		assert.Nil(t, k.Wrapped(), "no watch: the change is seen at the retry")
		e.advance(retry)
		e.requireWrappedWith(k1.bytes)
		assert.Zero(t, e.clk.Timers())

		e.setAutolock(false, "")
		e.requirePlain()
	})
}

func TestLifecycle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t)
		ctx := context.Background()

		k, err := New(e.store, e.config(nil))
		require.NoError(t, err)
		require.NoError(t, os.Remove(e.path))
		e.setAutolock(true, newUnlockKey(t).text)
		assert.Zero(t, e.clk.Timers(), "New starts nothing")

		require.NoError(t, k.Start(ctx))
		assert.ErrorIs(t, k.Start(ctx), ErrStarted)
		<-k.Ready()
		synctest.Wait()
		assert.Equal(t, 1, e.clk.Timers(), "the failed rewrap waits for its retry")
		require.NoError(t, k.Stop(ctx))
		require.NoError(t, k.Stop(ctx), "Stop is idempotent")
		assert.Zero(t, e.clk.Timers(), "Stop released the retry timer")
		assert.ErrorIs(t, k.Start(ctx), errdefs.ErrStopped)

		unstarted, err := New(e.store, e.config(nil))
		require.NoError(t, err)
		require.NoError(t, unstarted.Stop(ctx), "Stop before Start")
		assert.ErrorIs(t, unstarted.Start(ctx), errdefs.ErrStopped)

		cancelled, cancel := context.WithCancel(ctx)
		cancel()
		fresh, err := New(e.store, e.config(nil))
		require.NoError(t, err)
		assert.ErrorIs(t, fresh.Start(cancelled), context.Canceled)
		require.NoError(t, fresh.Stop(ctx))
	})
}
