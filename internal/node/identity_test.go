package node

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/internal/identity"
)

func TestIdentityRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		id   Identity
	}{
		{"worker", Identity{
			NodeID: identity.NewID(), ClusterID: identity.NewID(), Role: Worker,
			Managers: []string{"10.0.0.1:4242", "10.0.0.2:4242"},
		}},
		{"manager", Identity{
			NodeID: identity.NewID(), ClusterID: identity.NewID(), Role: Manager,
			RaftID:    7,
			Managers:  []string{"10.0.0.1:4242"},
			RaftPeers: map[uint64]string{1: "10.0.0.1:4242", 7: "10.0.0.7:4242"},
		}},
		{"worker without managers", Identity{
			NodeID: identity.NewID(), ClusterID: identity.NewID(), Role: Worker,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			in := tc.id
			require.NoError(t, SaveIdentity(dir, &in))

			got, err := LoadIdentity(dir)
			require.NoError(t, err)
			require.NotNil(t, got)
			assert.Equal(t, tc.id, *got)

			fi, err := os.Stat(filepath.Join(dir, IdentityFile))
			require.NoError(t, err)
			assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "node.json's mode")

			entries, err := os.ReadDir(dir)
			require.NoError(t, err)
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			assert.Equal(t, []string{IdentityFile}, names, "only node.json is left: no temp file")
		})
	}
}

func TestIdentitySaveReplaces(t *testing.T) {
	dir := t.TempDir()
	first := Identity{NodeID: identity.NewID(), ClusterID: identity.NewID(), Role: Worker}
	require.NoError(t, SaveIdentity(dir, &first))
	second := first
	second.Role, second.RaftID = Manager, 3
	require.NoError(t, SaveIdentity(dir, &second))

	got, err := LoadIdentity(dir)
	require.NoError(t, err)
	require.NotNil(t, got)
	assert.Equal(t, second, *got)
}

func TestIdentityLoadMissing(t *testing.T) {
	got, err := LoadIdentity(t.TempDir())
	assert.NoError(t, err)
	assert.Nil(t, got)
}

func TestIdentityLoadRefusesCorrupt(t *testing.T) {
	nodeID, clusterID := identity.NewID(), identity.NewID()
	for _, tc := range []struct {
		name string
		data string
		why  string
	}{
		{"not JSON", `{"node_id":`, "corrupt"},
		{"wrong type", `{"node_id": 42}`, "corrupt"},
		{"empty file", ``, "corrupt"},
		{"empty object", `{}`, "invalid node or cluster ID"},
		{"short node ID", `{"node_id":"abc","cluster_id":"` + clusterID + `","role":0}`, "invalid node or cluster ID"},
		{"upper-case node ID", `{"node_id":"0123456789ABCDEFGHIJKLMNO","cluster_id":"` + clusterID + `","role":0}`, "invalid node or cluster ID"},
		{"missing cluster ID", `{"node_id":"` + nodeID + `","role":0}`, "invalid node or cluster ID"},
		{"bad cluster ID", `{"node_id":"` + nodeID + `","cluster_id":"` + clusterID[1:] + `-","role":1}`, "invalid node or cluster ID"},
		{"role 2", `{"node_id":"` + nodeID + `","cluster_id":"` + clusterID + `","role":2}`, "role 2 is neither worker (0) nor manager (1)"},
		{"role -1", `{"node_id":"` + nodeID + `","cluster_id":"` + clusterID + `","role":-1}`, "role -1 is neither worker (0) nor manager (1)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, IdentityFile)
			require.NoError(t, os.WriteFile(path, []byte(tc.data), 0o600))

			got, err := LoadIdentity(dir)
			require.Error(t, err)
			assert.Nil(t, got)
			assert.Contains(t, err.Error(), path, "the error names the file")
			assert.Contains(t, err.Error(), tc.why, "the error says why")
		})
	}
}

func TestIdentityLoadUnreadable(t *testing.T) {
	// node.json that is a directory cannot be read: an error, not "none".
	dir := t.TempDir()
	require.NoError(t, os.Mkdir(filepath.Join(dir, IdentityFile), 0o700))
	got, err := LoadIdentity(dir)
	assert.Error(t, err)
	assert.Nil(t, got)
}

func TestIdentitySaveToMissingDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "missing")
	err := SaveIdentity(dir, &Identity{NodeID: identity.NewID(), ClusterID: identity.NewID()})
	assert.Error(t, err)
}
