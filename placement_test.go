package shoal_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal"
	"github.com/shoalhq/shoal/shoaltest"
)

// TestPlacementPreferenceSpreadsOverZones: 9 tasks over three zones of 1, 2
// and 3 nodes land 3/3/3 (each zone an equal share, as docker's
// --placement-pref), and a bad preference is refused with nothing written.
func TestPlacementPreferenceSpreadsOverZones(t *testing.T) {
	zones := map[string]string{"w1": "a", "w2": "b", "w3": "b", "w4": "c", "w5": "c", "w6": "c"}
	labels := map[string]map[string]string{}
	for n, z := range zones {
		labels[n] = map[string]string{"zone": z}
	}
	c := shoaltest.Start(t, shoaltest.Options{Workers: 6, Labels: labels})
	ctx := ctxT(t)
	spec := webSpec("web", 9)
	spec.Task.Preferences = []string{"spread=node.labels.zone"}
	svc, err := c.Client().CreateService(ctx, spec)
	require.NoError(t, err)
	per := c.WaitRunning(svc.ID, 9)
	byZone := map[string]int{}
	for nodeID, n := range per {
		byZone[zones[c.NodeByID(nodeID).Name]] += n
	}
	assert.Equal(t, map[string]int{"a": 3, "b": 3, "c": 3}, byZone)

	bad := webSpec("bad", 1)
	bad.Task.Preferences = []string{"spread=zone"}
	_, err = c.Client().CreateService(ctx, bad)
	require.ErrorIs(t, err, shoal.ErrInvalidSpec)
	assert.Contains(t, err.Error(), "ServiceSpec.Task.Preferences")
	_, err = c.Client().GetService(ctx, "bad")
	assert.ErrorIs(t, err, shoal.ErrNotFound, "nothing written")
}
