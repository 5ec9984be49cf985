package runtimetest_test

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/runtime"
	"github.com/shoalhq/shoal/runtime/runtimetest"
)

func TestFakeEndpoints(t *testing.T) {
	rt := runtimetest.New()
	tk := task("t1")
	tk.Spec.Ports = []runtime.PortRequest{{Target: 80}, {Target: 53, Protocol: runtime.ProtocolUDP, HostPort: 5353}, {Target: 81}}
	ctl, err := rt.Controller(tk)
	require.NoError(t, err)
	rep := ctl.(runtime.EndpointReporter)
	require.NoError(t, ctl.Prepare(ctxT(t)))
	assert.Nil(t, rep.Endpoints())
	require.NoError(t, ctl.Start(ctxT(t)))
	any := netip.IPv4Unspecified()
	assert.Equal(t, []runtime.Endpoint{
		{Target: 80, Protocol: "tcp", Addr: netip.AddrPortFrom(any, runtimetest.FirstFakePort)},
		{Target: 53, Protocol: "udp", Addr: netip.AddrPortFrom(any, 5353)},
		{Target: 81, Protocol: "tcp", Addr: netip.AddrPortFrom(any, runtimetest.FirstFakePort+1)},
	}, rep.Endpoints())
	require.NoError(t, ctl.Start(ctxT(t)), "a second Start is a no-op")
	assert.Len(t, rep.Endpoints(), 3)
	require.NoError(t, ctl.Shutdown(ctxT(t)))
}
