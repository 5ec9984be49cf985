package raftstore

import (
	"bytes"
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestProposeRefusesEntriesOverMaxEntryBytes(t *testing.T) {
	sm := &listSM{}
	cfg := testConfig(t, t.TempDir(), sm)
	cfg.MaxEntryBytes = 1000
	cfg.UnsafeNoFsync = true
	n := startNode(t, cfg)
	ctx := context.Background()

	_, err := n.Propose(ctx, bytes.Repeat([]byte{'a'}, 1000))
	require.NoError(t, err, "exactly the limit is accepted")
	applied, proposals := n.AppliedIndex(), n.Stats().Proposals

	for _, propose := range []func(context.Context, []byte) (any, error){n.Propose, n.ProposeOnLeader} {
		_, err = propose(ctx, bytes.Repeat([]byte{'b'}, 1001))
		require.ErrorIs(t, err, ErrEntryTooLarge)
		assert.Contains(t, err.Error(), "1001 bytes")
		assert.Contains(t, err.Error(), "limit of 1000 bytes")
		assert.Contains(t, err.Error(), "MaxEntryBytes")
	}
	assert.Equal(t, proposals, n.Stats().Proposals, "nothing was proposed")
	assert.Equal(t, applied, n.AppliedIndex())
	assert.Equal(t, 1, sm.len())
}

func TestDefaultMaxEntryBytes(t *testing.T) {
	assert.Equal(t, 8<<20, DefaultConfig().MaxEntryBytes)
}

// A follower refuses an oversized entry itself: it is never forwarded.
func TestFollowerRefusesOversizedEntryWithoutForwarding(t *testing.T) {
	c := newClusterOpts(t, 3, true, func(cfg *Config) { cfg.MaxEntryBytes = 64 })
	lead := c.leader()
	f := c.follower(lead)
	_, err := f.Propose(ctxFor(t), make([]byte, 65))
	require.ErrorIs(t, err, ErrEntryTooLarge)
	assert.Zero(t, f.Stats().Forwarded)
	_, err = f.Propose(ctxFor(t), make([]byte, 64))
	require.NoError(t, err)
	assert.Equal(t, uint64(1), f.Stats().Forwarded)
}
