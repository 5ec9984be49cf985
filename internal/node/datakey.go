package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/keys"
)

// Encryption at rest. A manager's Raft log (entries and snapshots, which hold
// the whole cluster state including the root CA key) is encrypted with a
// data key kept in StateDir/keys/data.key. With autolock on (a cluster
// setting), every manager keeps that file wrapped with the cluster's unlock
// key (internal/autolock): a manager that restarts stays locked, serving
// nothing, until Unlock is given the key.

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

// removeDataKey deletes a demoted manager's data key with its Raft log (the
// manager part, whose autolock keeper writes the file, has stopped).
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

// Unlock gives a locked manager the cluster's unlock key: it opens the data
// key and finishes starting. A wrong key returns keys.ErrWrongUnlockKey and
// leaves the node locked.
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
		return fmt.Errorf("unlock: the node is not locked: %w", errdefs.ErrInvalidSpec)
	}
	if err := n.openDataKey(key); err != nil {
		return fmt.Errorf("unlock: %w", err)
	}
	n.mu.Lock()
	n.locked = false
	n.mu.Unlock()
	n.log.Info("unlocked")
	if err := n.finishStart(ctx, Restart, ident); err != nil {
		n.abortStart(err)
		return err
	}
	return nil
}
