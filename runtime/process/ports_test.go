package process_test

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/runtime"
)

func TestPortsInEnvAndEndpoints(t *testing.T) {
	rt, _ := newRuntime(t)
	spec := sh(`echo "$PORT $SHOAL_PORT_80 $SHOAL_PORT_53 $SHOAL_PORT_53_UDP $SHOAL_PORT_9"`)
	spec.Ports = []runtime.PortRequest{{Target: 80}, {Target: 53, Protocol: runtime.ProtocolUDP}, {Target: 53, Protocol: runtime.ProtocolTCP}}
	ctl, err := rt.Controller(runtime.Task{ID: "t-ports", ServiceID: "s", Spec: spec})
	require.NoError(t, err)
	rep := ctl.(runtime.EndpointReporter)
	ctx := ctxT(t)
	require.NoError(t, ctl.Prepare(ctx))
	assert.Nil(t, rep.Endpoints(), "no endpoints before Start")
	require.NoError(t, ctl.Start(ctx))
	assert.True(t, wait(t, ctl).Success())

	eps := rep.Endpoints()
	require.Len(t, eps, 3)
	seen := map[uint16]bool{}
	for i, want := range []struct {
		target uint16
		proto  string
	}{{80, "tcp"}, {53, "udp"}, {53, "tcp"}} {
		assert.Equal(t, want.target, eps[i].Target)
		assert.Equal(t, want.proto, eps[i].Protocol)
		assert.True(t, eps[i].Addr.Addr().IsUnspecified(), "the node's address")
		assert.NotZero(t, eps[i].Addr.Port())
		if want.proto == "tcp" {
			assert.False(t, seen[eps[i].Addr.Port()], "one task never gets one port twice")
			seen[eps[i].Addr.Port()] = true
		}
	}
	out, err := os.ReadFile(rt.LogPath("t-ports", runtime.StreamStdout))
	require.NoError(t, err)
	p := func(i int) string { return strconv.Itoa(int(eps[i].Addr.Port())) }
	assert.Equal(t, fmt.Sprintf("%s %s %s %s \n", p(0), p(0), p(2), p(1)), string(out),
		"PORT is the first; SHOAL_PORT_<target> per target (TCP first), _UDP for UDP")
}

func TestHostPortFixedAndInUse(t *testing.T) {
	rt, _ := newRuntime(t)
	// Find a free port, then ask for it explicitly.
	l, err := net.Listen("tcp", ":0")
	require.NoError(t, err)
	port := uint16(l.Addr().(*net.TCPAddr).Port)

	spec := sh(`echo $PORT`)
	spec.Ports = []runtime.PortRequest{{Target: 8080, HostPort: port}}
	ctl, err := rt.Controller(runtime.Task{ID: "t-busy", ServiceID: "s", Spec: spec})
	require.NoError(t, err)
	ctx := ctxT(t)
	require.NoError(t, ctl.Prepare(ctx))
	err = ctl.Start(ctx)
	require.Error(t, err, "the host port is in use")
	assert.Contains(t, err.Error(), "host port for 8080/tcp")
	require.NoError(t, l.Close())

	ctl2 := started(t, rt, "t-fixed", spec)
	assert.True(t, wait(t, ctl2).Success())
	assert.Equal(t, port, ctl2.Endpoints()[0].Addr.Port())
	out, err := os.ReadFile(rt.LogPath("t-fixed", runtime.StreamStdout))
	require.NoError(t, err)
	assert.Equal(t, strconv.Itoa(int(port)), strings.TrimSpace(string(out)))
}

func TestPortValidation(t *testing.T) {
	for _, tc := range []struct {
		ports []runtime.PortRequest
		want  string
	}{
		{[]runtime.PortRequest{{Target: 0}}, "Spec.Ports[0].Target: must be 1-65535"},
		{[]runtime.PortRequest{{Target: 80, Protocol: "sctp"}}, `Spec.Ports[0].Protocol: must be "tcp" or "udp", got "sctp"`},
		{[]runtime.PortRequest{{Target: 80}, {Target: 80, Protocol: "tcp"}}, "Spec.Ports[1].Target: 80/tcp is already listed in Spec.Ports[0]"},
		{[]runtime.PortRequest{{Target: 80, HostPort: 9000}, {Target: 81, HostPort: 9000}}, "Spec.Ports[1].HostPort: 9000/tcp is already used by Spec.Ports[0]"},
	} {
		spec := sh("true")
		spec.Ports = tc.ports
		err := spec.Validate()
		assert.ErrorIs(t, err, runtime.ErrInvalidTask)
		assert.ErrorContains(t, err, tc.want)
	}
}
