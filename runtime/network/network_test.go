package network

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestValidID(t *testing.T) {
	for _, tc := range []struct {
		id   string
		want string
	}{
		{"a", ""},
		{"0123456789abcdefghijklmno", ""},
		{"task.1_x-Y", ""},
		{strings.Repeat("a", 128), ""},
		{"", "required"},
		{strings.Repeat("a", 129), "at most 128"},
		{".hidden", "must not start with '.'"},
		{"..", "must not start with '.'"},
		{"a/b", "only [a-zA-Z0-9_.-]"},
		{"a b", "only"},
		{"a\x00", "only"},
		{"é", "only"},
	} {
		err := validID(tc.id)
		if tc.want == "" {
			assert.NoError(t, err, "%q", tc.id)
			continue
		}
		if assert.Error(t, err, "%q", tc.id) {
			assert.Contains(t, err.Error(), tc.want)
			assert.Contains(t, err.Error(), "network: ID:")
		}
	}
}

func TestNormalizePorts(t *testing.T) {
	tcp := func(h, t uint16) PortMapping { return PortMapping{HostPort: h, Target: t, Protocol: ProtocolTCP} }
	udp := func(h, t uint16) PortMapping { return PortMapping{HostPort: h, Target: t, Protocol: ProtocolUDP} }
	for _, tc := range []struct {
		name string
		in   []PortMapping
		want []PortMapping
		err  string
	}{
		{"nil", nil, nil, ""},
		{"empty", []PortMapping{}, nil, ""},
		{"sorted by protocol then port", []PortMapping{udp(53, 53), tcp(9000, 90), tcp(80, 8080)}, []PortMapping{tcp(80, 8080), tcp(9000, 90), udp(53, 53)}, ""},
		{"same port on both protocols", []PortMapping{tcp(53, 53), udp(53, 53)}, []PortMapping{tcp(53, 53), udp(53, 53)}, ""},
		{"two host ports to one target", []PortMapping{tcp(80, 80), tcp(81, 80)}, []PortMapping{tcp(80, 80), tcp(81, 80)}, ""},
		{"unknown protocol", []PortMapping{{HostPort: 1, Target: 1, Protocol: "sctp"}}, nil, "ports[0] (1:1/sctp): Protocol"},
		{"empty protocol", []PortMapping{tcp(1, 1), {HostPort: 1, Target: 1}}, nil, "ports[1] (1:1/): Protocol"},
		{"upper case protocol", []PortMapping{{HostPort: 1, Target: 1, Protocol: "TCP"}}, nil, "Protocol"},
		{"zero host port", []PortMapping{tcp(0, 1)}, nil, "HostPort: must not be 0"},
		{"zero target", []PortMapping{tcp(1, 0)}, nil, "Target: must not be 0"},
		{"duplicate host port", []PortMapping{tcp(80, 1), tcp(80, 2)}, nil, "host port 80/tcp appears twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			orig := slices.Clone(tc.in)
			got, err := normalizePorts(tc.in)
			assert.Equal(t, orig, tc.in, "the input is not changed")
			if tc.err != "" {
				assert.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestMACFor(t *testing.T) {
	assert.Equal(t, "02:53:ac:1f:00:02", MACFor(netip.MustParseAddr("172.31.0.2")).String())
	assert.Equal(t, "02:53:0a:00:00:01", MACFor(netip.MustParseAddr("10.0.0.1")).String())
	assert.Nil(t, MACFor(netip.MustParseAddr("fd00::1")))
	assert.Nil(t, MACFor(netip.Addr{}))
	m := MACFor(netip.MustParseAddr("192.168.1.1"))
	assert.Equal(t, byte(0x02), m[0]&0x03, "locally administered unicast")
}

func TestHostVethName(t *testing.T) {
	a := hostVethName("shoal0", "task1")
	assert.Len(t, a, 15)
	assert.True(t, strings.HasPrefix(a, "vsh"))
	assert.NoError(t, validIfName(a))
	assert.Equal(t, a, hostVethName("shoal0", "task1"), "deterministic")
	assert.NotEqual(t, a, hostVethName("shoal0", "task2"))
	assert.NotEqual(t, a, hostVethName("shoal1", "task1"), "the bridge is part of the name")
	assert.NotEqual(t, hostVethName("ab", "c"), hostVethName("a", "bc"))
	long := hostVethName("abcdefghijklmno", strings.Repeat("z", 128))
	assert.Len(t, long, 15)
}

func TestAttachmentClone(t *testing.T) {
	a := &Attachment{ID: "x", MAC: MACFor(netip.MustParseAddr("10.0.0.2")), Ports: []PortMapping{{HostPort: 1, Target: 1, Protocol: ProtocolTCP}}}
	c := a.clone()
	require.Equal(t, a, c)
	c.MAC[5] = 0xff
	c.Ports[0].HostPort = 2
	assert.Equal(t, byte(2), a.MAC[5])
	assert.Equal(t, uint16(1), a.Ports[0].HostPort)
}
