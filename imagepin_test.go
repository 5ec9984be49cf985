package shoal_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal"
	"github.com/shoalhq/shoal/runtime/conformance"
	"github.com/shoalhq/shoal/shoaltest"
)

// TestManagerPinsImagesToDigests: a service's image tag is resolved to a
// digest by the manager once, so every task runs the same image; a
// registry the manager cannot reach leaves the tag, with docker's warning.
func TestManagerPinsImagesToDigests(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: builds the conformance test program for its image")
	}
	reg := conformance.NewRegistry(t)
	ref := reg.Push(t, "shoal/testprog:1", conformance.ProgramImage(t, nil))
	c := shoaltest.Start(t, shoaltest.Options{
		Workers:   1,
		Configure: func(_ string, cfg *shoal.Config) { cfg.InsecureRegistries = []string{reg.Host} },
	})
	ctx := ctxT(t)
	spec := webSpec("web", 2)
	spec.Task.Command = nil
	spec.Task.Image = ref
	svc, err := c.Client().CreateService(ctx, spec)
	require.NoError(t, err)
	assert.Empty(t, svc.Warnings)
	require.True(t, strings.HasPrefix(svc.Spec.Task.Image, ref+"@sha256:"), "pinned: %s", svc.Spec.Task.Image)
	c.WaitRunning(svc.ID, 2)
	for _, task := range c.Tasks(svc.ID) {
		assert.Equal(t, svc.Spec.Task.Image, task.Spec.Image, "every task runs the pinned image")
	}

	spec = webSpec("away", 1)
	spec.Task.Command = nil
	spec.Task.Image = "127.0.0.1:1/nowhere/app:2"
	away, err := c.Client().CreateService(ctx, spec)
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1:1/nowhere/app:2", away.Spec.Task.Image, "the tag is kept")
	require.Len(t, away.Warnings, 1)
	assert.Contains(t, away.Warnings[0], "could not be accessed on a registry to record its digest")
}
