package shoal_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal"
	"github.com/shoalhq/shoal/runtime"
	"github.com/shoalhq/shoal/runtime/runtimetest"
	"github.com/shoalhq/shoal/shoaltest"
)

// TestServiceProgress: GetService and ListServices count desired, running
// and updated tasks (docker's REPLICAS 3/5) without listing tasks.
func TestServiceProgress(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Workers: 2})
	ctx := ctxT(t)
	cl := c.Client()
	svc, err := cl.CreateService(ctx, webSpec("web", 3))
	require.NoError(t, err)
	c.WaitRunning(svc.ID, 3)
	got, err := cl.GetService(ctx, svc.ID)
	require.NoError(t, err)
	assert.Equal(t, shoal.ServiceProgress{Desired: 3, Running: 3, Updated: 3}, got.Progress)
	assert.Equal(t, "3/3", got.Progress.String())

	// New tasks that never start: desired 5, running 3.
	for _, w := range c.Workers() {
		w.Fake().SetBehavior(func(runtime.Task) runtimetest.Behavior { return runtimetest.Behavior{HoldStart: true} })
	}
	_, err = cl.ScaleService(ctx, svc.ID, 5)
	require.NoError(t, err)
	c.WaitFor("desired 5", func() bool {
		s, err := cl.GetService(ctx, svc.ID)
		return err == nil && s.Progress.Desired == 5
	})
	list, err := cl.ListServices(ctx)
	require.NoError(t, err)
	require.Len(t, list, 1)
	assert.Equal(t, shoal.ServiceProgress{Desired: 5, Running: 3, Updated: 3}, list[0].Progress)

	// An update whose tasks cannot start: running old tasks are not updated.
	cur, err := cl.GetService(ctx, svc.ID)
	require.NoError(t, err)
	next := cur.Spec
	next.Task.Env = []string{"V=2"}
	next.Update = shoal.UpdatePolicy{Order: shoal.StartFirst}
	_, err = cl.UpdateService(ctx, svc.ID, cur.Version, next)
	require.NoError(t, err)
	c.WaitFor("an update under way", func() bool {
		s, err := cl.GetService(ctx, svc.ID)
		return err == nil && s.SpecVersion == 2 && s.Progress.Running == 3 && s.Progress.Updated == 0
	})

	g := webSpec("everywhere", 0)
	g.Mode = shoal.Global
	gs, err := cl.CreateService(ctx, g)
	require.NoError(t, err)
	c.WaitFor("global desired", func() bool {
		s, err := cl.GetService(ctx, gs.ID)
		return err == nil && s.Progress.Desired == 2 && s.Progress.Running == 0
	})
}
