package gossip

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"slices"

	"github.com/hashicorp/serf/serf"
)

// keysProblem reports the first key in keys that breaks a rule: its index
// and the rule, or -1 if every key is a distinct KeySize-byte key.
func keysProblem(keys [][]byte) (int, string) {
	for i, k := range keys {
		if len(k) != KeySize {
			return i, fmt.Sprintf("must be %d bytes, got %d", KeySize, len(k))
		}
		for j := range i {
			if bytes.Equal(k, keys[j]) {
				return i, fmt.Sprintf("must not repeat keys[%d]", j)
			}
		}
	}
	return -1, ""
}

func cloneKeys(keys [][]byte) [][]byte {
	out := make([][]byte, len(keys))
	for i, k := range keys {
		out[i] = slices.Clone(k)
	}
	return out
}

// SetKeys sets this member's own keyring to exactly keys: keys[0] becomes
// the primary key, used to encrypt everything this member sends (serf's
// gossip and the table's streams and digests alike), and every key in keys
// is tried to decrypt what it receives. Unlike RotateKeys it sends no serf
// query and changes no other member: a manager moving the cluster to a new
// key B from A calls it on every member in three phases, each finished
// everywhere before the next begins: SetKeys([A, B]) (B installed, A still
// used), SetKeys([B, A]) (B used, A still accepted), SetKeys([B]) (A
// retired). Members in adjacent phases understand each other throughout.
//
// Each key must be KeySize bytes, and no key may repeat; an invalid list is
// refused whole, wrapping ErrInvalidKeys and naming the index and the rule.
// Before Start, SetKeys replaces Config.Keys for Start. After Start it
// installs the keys not yet installed, makes keys[0] primary, then removes
// installed keys not in keys. A node started without keys (AllowInsecure)
// cannot turn encryption on while it runs: SetKeys returns an error wrapping
// ErrNoKeyring. After Stop or Kill it returns ErrStopped.
//
// Safe for concurrent use; concurrent calls apply one after the other.
func (n *Node) SetKeys(keys [][]byte) error {
	if len(keys) == 0 {
		return fmt.Errorf("%w: keys: must hold at least one key (keys[0] is the primary)", ErrInvalidKeys)
	}
	if i, rule := keysProblem(keys); i >= 0 {
		return fmt.Errorf("%w: keys[%d]: %s", ErrInvalidKeys, i, rule)
	}
	want := cloneKeys(keys)

	n.keyMu.Lock()
	defer n.keyMu.Unlock()
	n.mu.Lock()
	switch {
	case n.stopped:
		n.mu.Unlock()
		return ErrStopped
	case !n.started:
		n.cfg.Keys = want
		n.mu.Unlock()
		return nil
	}
	kr := n.keyring
	n.mu.Unlock()
	if kr == nil {
		return fmt.Errorf("gossip: SetKeys: this node was started without keys (AllowInsecure) and encryption cannot be turned on while it runs; restart it with Config.Keys: %w", ErrNoKeyring)
	}

	for i, k := range want {
		if err := kr.AddKey(k); err != nil {
			return fmt.Errorf("gossip: SetKeys: install keys[%d]: %w", i, err)
		}
	}
	if err := kr.UseKey(want[0]); err != nil {
		return fmt.Errorf("gossip: SetKeys: use keys[0]: %w", err)
	}
	// Remove from the end of the ring backwards. memberlist's RemoveKey
	// shifts the ring's backing array in place while its GetKeys hands that
	// same array to readers decrypting without the lock; removing the last
	// key shifts nothing, and in the phased rotation above the retired key
	// is always last ([B, A] -> [B]).
	cur := slices.Clone(kr.GetKeys())
	removed := 0
	for i := len(cur) - 1; i >= 0; i-- {
		if slices.ContainsFunc(want, func(k []byte) bool { return bytes.Equal(k, cur[i]) }) {
			continue
		}
		if err := kr.RemoveKey(cur[i]); err != nil {
			return fmt.Errorf("gossip: SetKeys: remove an old key: %w", err)
		}
		removed++
	}
	n.mu.Lock()
	n.cfg.Keys = want
	n.mu.Unlock()
	n.log.Info("gossip: keyring set", "keys", len(want), "removed", removed)
	return nil
}

// Keys returns a copy of this member's keyring, primary first: Config.Keys
// (as last set by SetKeys) before Start, the live keyring after (which
// RotateKeys and other members' RotateKeys also change). It is empty on a
// node without encryption.
func (n *Node) Keys() [][]byte {
	n.keyMu.Lock()
	defer n.keyMu.Unlock()
	n.mu.Lock()
	kr, keys := n.keyring, n.cfg.Keys
	n.mu.Unlock()
	if kr != nil {
		return cloneKeys(kr.GetKeys())
	}
	return cloneKeys(keys)
}

// RotateKeys installs newKey as the cluster's primary key everywhere and
// removes every other key: serf's KeyManager installs it on all members,
// switches them to it, then removes the old keys. Each step is a serf query
// bounded by serf's query timeout; ctx is checked between steps. A step
// that some member fails leaves the cluster working on the keys it had, and
// RotateKeys can be retried.
func (n *Node) RotateKeys(ctx context.Context, newKey []byte) error {
	s := n.serfOrNil()
	if s == nil {
		return ErrNotStarted
	}
	if n.keyring == nil {
		return ErrNoKeyring
	}
	if len(newKey) != KeySize {
		return fmt.Errorf("gossip: RotateKeys: newKey must be %d bytes, got %d", KeySize, len(newKey))
	}
	km := s.KeyManager()
	enc := base64.StdEncoding.EncodeToString(newKey)
	steps := []struct {
		name string
		do   func(string) (*serf.KeyResponse, error)
	}{
		{"install", km.InstallKey},
		{"use", km.UseKey},
	}
	for _, st := range steps {
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, err := st.do(enc); err != nil {
			return fmt.Errorf("gossip: RotateKeys: %s: %w", st.name, err)
		}
	}
	for _, k := range n.keyring.GetKeys() {
		if slices.Equal(k, newKey) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, err := km.RemoveKey(base64.StdEncoding.EncodeToString(k)); err != nil {
			return fmt.Errorf("gossip: RotateKeys: remove old key: %w", err)
		}
	}
	return nil
}
