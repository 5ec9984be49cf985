package gossipkeys

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/errdefs"
)

func TestRotationPhases(t *testing.T) {
	t0 := time.Unix(1000, 0)
	grace := 10 * time.Second
	first, err := NewKeys(t0)
	require.NoError(t, err)
	require.Len(t, first.Keys, 1)
	require.Len(t, first.Keys[0], KeyBytes)
	old := first.Keys[0]

	// No rotation: nothing to do however long it has been.
	same, changed, err := NextPhase(first, t0.Add(time.Hour), grace)
	require.NoError(t, err)
	assert.False(t, changed)
	assert.Same(t, first, same)

	p1, err := StartRotation(first, t0)
	require.NoError(t, err)
	require.Len(t, p1.Keys, 2)
	assert.Equal(t, old, p1.Keys[0], "phase 1 still encrypts with the old key")
	assert.NotEqual(t, old, p1.Keys[1])
	assert.EqualValues(t, PhaseInstall, p1.RotationPhase)
	fresh := p1.Keys[1]

	_, err = StartRotation(p1, t0)
	require.ErrorIs(t, err, errdefs.ErrInvalidSpec)
	assert.ErrorContains(t, err, "UpdateClusterRequest.RotateGossipKey: ")
	assert.ErrorContains(t, err, "already under way")

	_, changed, err = NextPhase(p1, t0.Add(grace-time.Millisecond), grace)
	require.NoError(t, err)
	assert.False(t, changed, "the phase has not lasted its grace yet")

	p2, changed, err := NextPhase(p1, t0.Add(grace), grace)
	require.NoError(t, err)
	require.True(t, changed)
	assert.Equal(t, [][]byte{fresh, old}, p2.Keys, "phase 2 encrypts with the new key and accepts the old")
	assert.EqualValues(t, PhaseSwitch, p2.RotationPhase)
	assert.Equal(t, [][]byte{old, fresh}, p1.Keys, "the input is not modified")

	end, changed, err := NextPhase(p2, t0.Add(2*grace), grace)
	require.NoError(t, err)
	require.True(t, changed)
	assert.Equal(t, [][]byte{fresh}, end.Keys)
	assert.EqualValues(t, PhaseNone, end.RotationPhase)

	// A cluster without keys (older than them) gets its first key, from
	// either path.
	for _, g := range []*api.GossipKeys{nil, {}} {
		k, changed, err := NextPhase(g, t0, grace)
		require.NoError(t, err)
		assert.True(t, changed)
		assert.Len(t, k.Keys, 1)
		k, err = StartRotation(g, t0)
		require.NoError(t, err)
		assert.Len(t, k.Keys, 1)
	}
}
