package controlapi

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/clock/clocktest"
	"github.com/shoalhq/shoal/internal/gossipkeys"
	"github.com/shoalhq/shoal/internal/state"
)

func TestGossipRotationUsesTheClock(t *testing.T) {
	ctx := context.Background()
	st := newCheckedStore(t)
	clk := clocktest.NewFake()
	clk.Advance(time.Hour)
	keys, err := gossipkeys.NewKeys(time.Unix(1000, 0))
	require.NoError(t, err)
	require.NoError(t, st.Update(ctx, func(tx state.WriteTx) error {
		return tx.CreateCluster(&api.Cluster{Id: "c", Spec: &api.ClusterSpec{Name: "default"}, Gossip: keys})
	}))
	s := New(st, Options{Clock: clk})
	_, err = s.UpdateCluster(ctx, &api.UpdateClusterRequest{Id: "c", Spec: &api.ClusterSpec{}, RotateGossipKey: true})
	require.NoError(t, err)
	var g *api.GossipKeys
	st.View(func(tx state.ReadTx) { g = tx.GetCluster("c").GetGossip() })
	assert.EqualValues(t, gossipkeys.PhaseInstall, g.GetRotationPhase())
	assert.Equal(t, clk.Now().UnixNano(), g.GetPhaseSince(), "the phase starts at the server's clock")
}
