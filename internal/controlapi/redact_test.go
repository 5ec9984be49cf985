package controlapi

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/gossipkeys"
)

func TestRedactHidesGossipKeys(t *testing.T) {
	g, err := gossipkeys.NewKeys(time.Unix(1000, 0))
	require.NoError(t, err)
	c := &api.Cluster{Id: "c", Gossip: g}
	r := Redact(c)
	assert.Empty(t, r.GetGossip().GetKeys())
	assert.Len(t, c.Gossip.Keys, 1, "the stored object is not modified")
}
