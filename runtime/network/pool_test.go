package network

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPoolBounds(t *testing.T) {
	for _, tc := range []struct {
		subnet, gateway, first, last string
		size                         int
	}{
		{"172.31.0.0/24", "172.31.0.1", "172.31.0.2", "172.31.0.254", 253},
		{"10.0.0.4/30", "10.0.0.5", "10.0.0.6", "10.0.0.6", 1},
		{"10.0.0.0/29", "10.0.0.1", "10.0.0.2", "10.0.0.6", 5},
		{"10.0.0.0/8", "10.0.0.1", "10.0.0.2", "10.255.255.254", 1<<24 - 3},
	} {
		p := newPool(netip.MustParsePrefix(tc.subnet))
		assert.Equal(t, tc.gateway, p.gateway().String(), tc.subnet)
		assert.Equal(t, tc.first, addr4(p.first).String(), tc.subnet)
		assert.Equal(t, tc.last, addr4(p.last).String(), tc.subnet)
		assert.Equal(t, tc.size, p.size(), tc.subnet)
		assert.False(t, p.inRange(p.subnet.Addr()), "network address")
		assert.False(t, p.inRange(p.gateway()), "gateway")
		assert.False(t, p.inRange(addr4(p.last+1)), "broadcast")
		assert.False(t, p.inRange(netip.MustParseAddr("fd00::1")))
	}
}

func TestPoolAllocate(t *testing.T) {
	p := newPool(netip.MustParsePrefix("10.0.0.0/29")) // .2 to .6
	var got []string
	for i := range 5 {
		a, err := p.allocate(fmt.Sprint("t", i))
		require.NoError(t, err)
		got = append(got, a.String())
	}
	assert.Equal(t, []string{"10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"}, got)
	_, err := p.allocate("t5")
	require.ErrorIs(t, err, ErrPoolExhausted)
	assert.ErrorContains(t, err, "10.0.0.0/29")

	// Released addresses come back in turn, from after the last one
	// handed out.
	p.release(netip.MustParseAddr("10.0.0.3"), "t1")
	p.release(netip.MustParseAddr("10.0.0.5"), "t3")
	p.release(netip.MustParseAddr("10.0.0.4"), "not-the-holder")
	a, err := p.allocate("x")
	require.NoError(t, err)
	assert.Equal(t, "10.0.0.3", a.String())
	a, err = p.allocate("y")
	require.NoError(t, err)
	assert.Equal(t, "10.0.0.5", a.String())
	_, err = p.allocate("z")
	assert.ErrorIs(t, err, ErrPoolExhausted)
}

func TestPoolRotates(t *testing.T) {
	p := newPool(netip.MustParsePrefix("10.0.0.0/24"))
	a, err := p.allocate("a")
	require.NoError(t, err)
	p.release(a, "a")
	b, err := p.allocate("b")
	require.NoError(t, err)
	assert.NotEqual(t, a, b, "a released address is not the next one handed out")
}

func TestPoolReserve(t *testing.T) {
	p := newPool(netip.MustParsePrefix("10.0.0.0/24"))
	require.NoError(t, p.reserve(netip.MustParseAddr("10.0.0.2"), "a"))
	require.NoError(t, p.reserve(netip.MustParseAddr("10.0.0.2"), "a"), "again by its holder")
	assert.ErrorContains(t, p.reserve(netip.MustParseAddr("10.0.0.2"), "b"), `already leased to "a"`)
	assert.ErrorContains(t, p.reserve(netip.MustParseAddr("10.0.0.1"), "b"), "not a container address")
	assert.ErrorContains(t, p.reserve(netip.MustParseAddr("10.0.0.255"), "b"), "not a container address")
	assert.ErrorContains(t, p.reserve(netip.MustParseAddr("10.0.1.2"), "b"), "not a container address")
	a, err := p.allocate("c")
	require.NoError(t, err)
	assert.Equal(t, "10.0.0.3", a.String(), "reserved addresses are skipped")
}

func TestPoolSlash30(t *testing.T) {
	p := newPool(netip.MustParsePrefix("192.168.7.0/30"))
	a, err := p.allocate("a")
	require.NoError(t, err)
	assert.Equal(t, "192.168.7.2", a.String())
	_, err = p.allocate("b")
	assert.ErrorIs(t, err, ErrPoolExhausted)
	p.release(a, "a")
	a2, err := p.allocate("b")
	require.NoError(t, err)
	assert.Equal(t, a, a2)
}

func BenchmarkPoolAllocate(b *testing.B) {
	// A /16 three quarters full: the cost of finding the next free address
	// and of releasing one, as Attach and Detach pay it.
	p := newPool(netip.MustParsePrefix("10.1.0.0/16"))
	for i := range p.size() * 3 / 4 {
		_, _ = p.allocate(fmt.Sprint(i))
	}
	b.ResetTimer()
	for b.Loop() {
		a, err := p.allocate("x")
		if err != nil {
			b.Fatal(err)
		}
		p.release(a, "x")
	}
}
