package shoal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/keys"
	"github.com/shoalhq/shoal/internal/state"
)

// Encryption at rest. A manager's Raft log (entries and snapshots, which hold
// the whole cluster state including the root CA key) is encrypted with a
// data key kept in StateDir/keys/data.key. With autolock on (a cluster
// setting), every manager keeps that file wrapped with the cluster's unlock
// key: a manager that restarts stays locked, serving nothing, until
// Node.Unlock is given the key.

var (
	// ErrLocked: the manager's data key is wrapped with the cluster's unlock
	// key (autolock); call Node.Unlock.
	ErrLocked = keys.ErrLocked
	// ErrWrongUnlockKey: the unlock key does not open this manager's data key.
	ErrWrongUnlockKey = keys.ErrWrongUnlockKey
	// ErrInvalidUnlockKey: the text is not an unlock key (SHLKEY-1-...).
	ErrInvalidUnlockKey = keys.ErrInvalidUnlockKey
)

func dataKeyPath(stateDir string) string { return filepath.Join(stateDir, "keys", "data.key") }

// openDataKey loads the manager's data key, creating one for a new Raft log.
// wrap is the unlock key the file is wrapped with (nil: plain).
func (n *Node) openDataKey(wrap []byte) error {
	path := dataKeyPath(n.cfg.StateDir)
	dek, err := keys.LoadDataKey(path, wrap)
	if errors.Is(err, os.ErrNotExist) {
		if dek, err = keys.NewDataKey(); err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return fmt.Errorf("data key: %w", err)
		}
		if err := keys.SaveDataKey(path, dek, wrap); err != nil {
			return fmt.Errorf("data key: %w", err)
		}
	} else if err != nil {
		return err
	}
	c, err := keys.NewCipher(dek)
	if err != nil {
		return fmt.Errorf("data key %s: %w", path, err)
	}
	n.mu.Lock()
	n.cipher, n.wrapKey = c, wrap
	n.mu.Unlock()
	return nil
}

// dataKeyLocked reports whether the manager's data key is wrapped.
func (n *Node) dataKeyLocked() (bool, error) {
	locked, err := keys.IsLocked(dataKeyPath(n.cfg.StateDir))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	return locked, err
}

// removeDataKey deletes a demoted manager's data key with its Raft log.
func (n *Node) removeDataKey() error {
	n.mu.Lock()
	n.cipher, n.wrapKey = nil, nil
	n.mu.Unlock()
	return os.RemoveAll(filepath.Dir(dataKeyPath(n.cfg.StateDir)))
}

// Locked reports whether the node is a manager waiting for its unlock key.
func (n *Node) Locked() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.locked
}

// Unlock gives a locked manager (autolock on, restarted) the cluster's unlock
// key: it opens the data key and finishes starting. A wrong key returns
// ErrWrongUnlockKey and leaves the node locked.
func (n *Node) Unlock(ctx context.Context, unlockKey string) error {
	key, err := keys.ParseUnlockKey(unlockKey)
	if err != nil {
		return err
	}
	n.unlockMu.Lock()
	defer n.unlockMu.Unlock()
	n.mu.Lock()
	locked, ident := n.locked, n.ident
	n.mu.Unlock()
	if !locked {
		return fmt.Errorf("unlock: the node is not locked: %w", ErrInvalidSpec)
	}
	if err := n.openDataKey(key); err != nil {
		return fmt.Errorf("unlock: %w", err)
	}
	n.mu.Lock()
	n.locked = false
	n.mu.Unlock()
	n.log.Info("unlocked")
	if err := n.finishStart(ctx, modeRestart, ident); err != nil {
		n.abortStart(err)
		return err
	}
	return nil
}

// UnlockKey returns the cluster's unlock key as this manager's state has it
// ("" when autolock is off, or on a worker).
func (n *Node) UnlockKey() string {
	mg := n.mgr.Load()
	if mg == nil {
		return ""
	}
	var k string
	mg.store.ViewShared(func(tx state.ReadTx) {
		if cs, _ := tx.FindClusters(state.All()); len(cs) > 0 {
			k = wantUnlockKey(cs[0])
		}
	})
	return k
}

func wantUnlockKey(c *api.Cluster) string {
	if !c.GetSpec().GetAutolock() {
		return ""
	}
	return c.GetUnlockKey()
}

// lockLoop keeps the data key file wrapped the way the cluster object says:
// with the unlock key while autolock is on, plain otherwise; a rotated unlock
// key rewraps it.
func (mg *managerPart) lockLoop(ctx context.Context) {
	defer mg.bg.Done()
	w := mg.store.Watch(state.KindIs(state.KindCluster))
	defer func() { w.Cancel() }()
	for {
		mg.syncLock()
		mg.followRoots()
		select {
		case <-ctx.Done():
			return
		case _, ok := <-w.C:
			if !ok {
				if ctx.Err() != nil {
					return
				}
				w = mg.store.Watch(state.KindIs(state.KindCluster))
			}
		}
	}
}

func (mg *managerPart) syncLock() {
	n := mg.n
	var want string
	mg.store.ViewShared(func(tx state.ReadTx) {
		if c := tx.GetCluster(mg.clusterID); c != nil {
			want = wantUnlockKey(c)
		}
	})
	var wantKey []byte
	if want != "" {
		k, err := keys.ParseUnlockKey(want)
		if err != nil {
			n.log.Error("the cluster's unlock key is malformed; data key left as it is", "err", err)
			return
		}
		wantKey = k
	}
	n.mu.Lock()
	have := n.wrapKey
	n.mu.Unlock()
	if bytes.Equal(have, wantKey) {
		return
	}
	if err := keys.RewrapDataKey(dataKeyPath(n.cfg.StateDir), have, wantKey); err != nil {
		n.log.Error("rewrapping the data key", "err", err)
		return
	}
	n.mu.Lock()
	n.wrapKey = wantKey
	n.mu.Unlock()
	n.log.Info("data key rewrapped", "autolock", wantKey != nil)
}
