package shoal_test

import (
	"time"

	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	shoal "github.com/shoalhq/shoal"
	"github.com/shoalhq/shoal/shoaltest"
)

func TestPublishedPortsAndTaskEndpoints(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Workers: 2})
	ctx := ctxT(t)
	cl := c.Client()

	spec := webSpec("web", 2)
	spec.Ports = []shoal.PortConfig{{Target: 80}, {Target: 53, Published: 8053, Protocol: shoal.UDP}}
	svc, err := cl.CreateService(ctx, spec)
	require.NoError(t, err)
	assert.Equal(t, spec.Ports, svc.Spec.Ports, "the spec stays as written")
	require.Len(t, svc.Ports, 2)
	assert.Equal(t, shoal.PortConfig{Target: 80, Published: 30000}, svc.Ports[0], "allocated from the dynamic range")
	assert.Equal(t, shoal.PortConfig{Target: 53, Published: 8053, Protocol: shoal.UDP}, svc.Ports[1])
	assert.Equal(t, "30000:80/tcp (ingress)", svc.Ports[0].String())

	c.WaitRunning(svc.ID, 2)
	require.Eventually(t, func() bool {
		for _, tk := range c.Tasks(svc.ID) {
			if tk.Status.State == shoal.TaskRunning && len(tk.Endpoints) != 2 {
				return false
			}
		}
		return true
	}, 30*time.Second, 10*time.Millisecond)
	running := 0
	for _, tk := range c.Tasks(svc.ID) {
		if tk.Status.State != shoal.TaskRunning {
			continue
		}
		running++
		eps := tk.Endpoints
		require.Len(t, eps, 2, "task %s", tk.ID)
		assert.Equal(t, uint16(80), eps[0].Target)
		assert.Equal(t, shoal.TCP, eps[0].Protocol)
		assert.Equal(t, uint16(53), eps[1].Target)
		assert.Equal(t, shoal.UDP, eps[1].Protocol)
		assert.True(t, eps[0].Addr.Addr().IsValid(), "the node's address is filled in")
		assert.NotZero(t, eps[0].Addr.Port(), "a host port per target")
		assert.NotZero(t, eps[1].Addr.Port())
		t.Logf("task %s on %s: %v", tk.Name(), tk.NodeID, eps)
	}
	assert.Equal(t, 2, running)

	// Another service asking for a published port in use is refused.
	other := webSpec("api", 1)
	other.Ports = []shoal.PortConfig{{Target: 8080, Published: 30000}}
	_, err = cl.CreateService(ctx, other)
	require.ErrorIs(t, err, shoal.ErrInvalidSpec)
	assert.Contains(t, err.Error(), "ServiceSpec.Ports[0].Published: port 30000/tcp is already published by service web (id "+svc.ID+")")

	// Host mode without a published port is refused before anything is written.
	other.Ports = []shoal.PortConfig{{Target: 8080, Mode: shoal.Host}}
	_, err = cl.CreateService(ctx, other)
	require.ErrorIs(t, err, shoal.ErrInvalidSpec)
	assert.Contains(t, err.Error(), "ServiceSpec.Ports[0].Published: must be set in host mode")

	// Removing the service frees its ports.
	require.NoError(t, cl.RemoveService(ctx, svc.ID))
	other.Ports = []shoal.PortConfig{{Target: 8080, Published: 30000}}
	got, err := cl.CreateService(ctx, other)
	require.NoError(t, err)
	assert.Equal(t, uint16(30000), got.Ports[0].Published)
}
