package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/shoalhq/shoal/internal/identity"
)

// Role is a node's role; its numbers are node.json's and shoal.NodeRole's.
type Role int

// The roles.
const (
	Worker Role = iota
	Manager
)

// IdentityFile is the node's identity under StateDir, written once at Init
// or Join (and at role changes) and read at every restart.
const IdentityFile = "node.json"

// Identity is what node.json holds.
type Identity struct {
	NodeID    string   `json:"node_id"`
	ClusterID string   `json:"cluster_id"`
	Role      Role     `json:"role"`
	RaftID    uint64   `json:"raft_id,omitempty"`
	Managers  []string `json:"managers"`
	// RaftPeers are the Raft members a joining manager started with; after
	// that, the store's manager objects say where the members are.
	RaftPeers map[uint64]string `json:"raft_peers,omitempty"`
}

// LoadIdentity reads dir's node.json; nil without error when there is none.
func LoadIdentity(dir string) (*Identity, error) {
	path := filepath.Join(dir, IdentityFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read node identity: %w", err)
	}
	var id Identity
	if err := json.Unmarshal(data, &id); err != nil {
		return nil, fmt.Errorf("node identity %s is corrupt: %w", path, err)
	}
	if !identity.Valid(id.NodeID) || !identity.Valid(id.ClusterID) {
		return nil, fmt.Errorf("node identity %s is corrupt: invalid node or cluster ID", path)
	}
	if id.Role != Worker && id.Role != Manager {
		return nil, fmt.Errorf("node identity %s is corrupt: role %d is neither worker (0) nor manager (1)", path, id.Role)
	}
	return &id, nil
}

// SaveIdentity writes id to dir's node.json atomically and durably: a
// fresh temporary file (mode 0600) is written and synced, renamed over
// node.json, and the directory synced. On error the temporary file is
// removed and node.json is as it was.
func SaveIdentity(dir string, id *Identity) (err error) {
	data, err := json.MarshalIndent(id, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, IdentityFile+".tmp")
	// A leftover from an interrupted save may have another mode: start anew.
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("write node identity: %w", err)
	}
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("write node identity: %w", err)
	}
	defer func() {
		if err != nil {
			_ = os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write node identity: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write node identity: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write node identity: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, IdentityFile)); err != nil {
		return fmt.Errorf("write node identity: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("write node identity: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("write node identity: sync %s: %w", dir, err)
	}
	return nil
}
