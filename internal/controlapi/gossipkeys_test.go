package controlapi

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/errdefs"
)

func TestGossipKeyRotationPhases(t *testing.T) {
	t0 := time.Unix(1000, 0)
	grace := 10 * time.Second
	first, err := NewGossipKeys(t0)
	require.NoError(t, err)
	require.Len(t, first.Keys, 1)
	require.Len(t, first.Keys[0], GossipKeyBytes)
	old := first.Keys[0]

	// No rotation: nothing to do however long it has been.
	same, changed, err := NextGossipKeyPhase(first, t0.Add(time.Hour), grace)
	require.NoError(t, err)
	assert.False(t, changed)
	assert.Same(t, first, same)

	p1, err := StartGossipKeyRotation(first, t0)
	require.NoError(t, err)
	require.Len(t, p1.Keys, 2)
	assert.Equal(t, old, p1.Keys[0], "phase 1 still encrypts with the old key")
	assert.NotEqual(t, old, p1.Keys[1])
	assert.EqualValues(t, GossipPhaseInstall, p1.RotationPhase)
	fresh := p1.Keys[1]

	_, err = StartGossipKeyRotation(p1, t0)
	require.ErrorIs(t, err, errdefs.ErrInvalidSpec)
	assert.ErrorContains(t, err, "RotateGossipKey")
	assert.ErrorContains(t, err, "already under way")

	_, changed, err = NextGossipKeyPhase(p1, t0.Add(grace-time.Millisecond), grace)
	require.NoError(t, err)
	assert.False(t, changed, "the phase has not lasted its grace yet")

	p2, changed, err := NextGossipKeyPhase(p1, t0.Add(grace), grace)
	require.NoError(t, err)
	require.True(t, changed)
	assert.Equal(t, [][]byte{fresh, old}, p2.Keys, "phase 2 encrypts with the new key and accepts the old")
	assert.EqualValues(t, GossipPhaseSwitch, p2.RotationPhase)
	assert.Equal(t, [][]byte{old, fresh}, p1.Keys, "the input is not modified")

	end, changed, err := NextGossipKeyPhase(p2, t0.Add(2*grace), grace)
	require.NoError(t, err)
	require.True(t, changed)
	assert.Equal(t, [][]byte{fresh}, end.Keys)
	assert.EqualValues(t, GossipPhaseNone, end.RotationPhase)

	// A cluster without keys (older than them) gets its first key, from
	// either path.
	for _, g := range []*api.GossipKeys{nil, {}} {
		k, changed, err := NextGossipKeyPhase(g, t0, grace)
		require.NoError(t, err)
		assert.True(t, changed)
		assert.Len(t, k.Keys, 1)
		k, err = StartGossipKeyRotation(g, t0)
		require.NoError(t, err)
		assert.Len(t, k.Keys, 1)
	}
}

func TestRedactHidesGossipKeys(t *testing.T) {
	g, err := NewGossipKeys(time.Now())
	require.NoError(t, err)
	c := &api.Cluster{Id: "c", Gossip: g}
	r := Redact(c)
	assert.Empty(t, r.GetGossip().GetKeys())
	assert.Len(t, c.Gossip.Keys, 1, "the stored object is not modified")
}
