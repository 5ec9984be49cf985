package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
)

// TestSetupIdempotent sets a bridge up twice, and once more from a new
// Bridge, and checks the host side each time.
func TestSetupIdempotent(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	b := l.newBridge(t, "shtest0", "10.200.0.0/24", func(c *Config) { c.MTU = 1400 })
	check := func() {
		t.Helper()
		withHandle(t, l.host, func(h *netlink.Handle) {
			link, err := h.LinkByName("shtest0")
			require.NoError(t, err)
			assert.Equal(t, "bridge", link.Type())
			assert.Equal(t, 1400, link.Attrs().MTU)
			assert.Equal(t, "02:53:0a:c8:00:01", link.Attrs().HardwareAddr.String())
			assert.NotZero(t, link.Attrs().Flags&net.FlagUp, "bridge is up")
			addrs, err := h.AddrList(link, netlink.FAMILY_V4)
			require.NoError(t, err)
			require.Len(t, addrs, 1)
			assert.Equal(t, "10.200.0.1/24", addrs[0].IPNet.String())
		})
		assert.Equal(t, "1", readSysctl(t, l.host, "net/ipv4/ip_forward"))
		assert.Equal(t, "1", readSysctl(t, l.host, "net/ipv4/conf/shtest0/route_localnet"))
		assert.True(t, tableExists(t, l.host, "shtest0"))
		assert.Len(t, nftRules(t, l.host, "shtest0", chainPostrouting), 3, "outbound, loopback and hairpin masquerade")
		assert.Len(t, nftRules(t, l.host, "shtest0", chainLocalnet), 1)
		assert.Len(t, nftRules(t, l.host, "shtest0", chainPrerouting), 1, "one DNAT rule, through the ports map")
		assert.Len(t, nftRules(t, l.host, "shtest0", chainOutput), 1)
		assert.Empty(t, nftPorts(t, l.host, "shtest0"))
	}
	require.NoError(t, b.Setup(ctx))
	check()
	require.NoError(t, b.Setup(ctx))
	check()

	b2, err := New(b.cfg)
	require.NoError(t, err)
	require.NoError(t, b2.Setup(ctx))
	check()
	require.NoError(t, b2.Close())
	assert.ErrorIs(t, b2.Setup(ctx), ErrClosed)
}

// TestAttach checks two attachments: distinct addresses, eth0 in each
// namespace with its address, MAC and default route, lo up, the host end on
// the bridge, and idempotence per ID.
func TestAttach(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	b := l.newBridge(t, "shtest0", "10.200.1.0/24")
	_, err := b.Attach(ctx, "a")
	require.ErrorIs(t, err, ErrNotSetUp)
	require.NoError(t, b.Setup(ctx))

	a, err := b.Attach(ctx, "task-a")
	require.NoError(t, err)
	c, err := b.Attach(ctx, "task-c")
	require.NoError(t, err)
	assert.Equal(t, netip.MustParseAddr("10.200.1.2"), a.Addr)
	assert.Equal(t, netip.MustParseAddr("10.200.1.3"), c.Addr)
	assert.Equal(t, netip.MustParsePrefix("10.200.1.2/24"), a.Prefix)
	assert.Equal(t, netip.MustParseAddr("10.200.1.1"), a.Gateway)
	assert.Equal(t, filepath.Join(b.cfg.StateDir, "shtest0", "netns", "task-a"), a.NetnsPath)
	assert.Equal(t, MACFor(a.Addr), a.MAC)
	assert.Len(t, a.HostVeth, 15)
	assert.NotEqual(t, a.HostVeth, c.HostVeth)

	for _, att := range []*Attachment{a, c} {
		assert.True(t, isMounted(t, att.NetnsPath))
		withHandle(t, att.NetnsPath, func(h *netlink.Handle) {
			eth0, err := h.LinkByName("eth0")
			require.NoError(t, err)
			assert.Equal(t, "veth", eth0.Type())
			assert.Equal(t, att.MAC.String(), eth0.Attrs().HardwareAddr.String())
			assert.Equal(t, 1500, eth0.Attrs().MTU)
			assert.NotZero(t, eth0.Attrs().Flags&net.FlagUp)
			addrs, err := h.AddrList(eth0, netlink.FAMILY_V4)
			require.NoError(t, err)
			require.Len(t, addrs, 1)
			assert.Equal(t, att.Prefix.String(), addrs[0].IPNet.String())
			routes, err := h.RouteList(eth0, netlink.FAMILY_V4)
			require.NoError(t, err)
			var gw string
			for _, r := range routes {
				if r.Dst == nil || r.Dst.String() == "0.0.0.0/0" {
					gw = r.Gw.String()
				}
			}
			assert.Equal(t, "10.200.1.1", gw, "default route via the gateway")
			lo, err := h.LinkByName("lo")
			require.NoError(t, err)
			assert.NotZero(t, lo.Attrs().Flags&net.FlagUp, "lo is up")
		})
		withHandle(t, l.host, func(h *netlink.Handle) {
			hv, err := h.LinkByName(att.HostVeth)
			require.NoError(t, err)
			br, err := h.LinkByName("shtest0")
			require.NoError(t, err)
			assert.Equal(t, br.Attrs().Index, hv.Attrs().MasterIndex)
			assert.NotZero(t, hv.Attrs().Flags&net.FlagUp)
		})
	}

	again, err := b.Attach(ctx, "task-a")
	require.NoError(t, err)
	assert.Equal(t, a, again)
	got, ok := b.Lookup("task-a")
	require.True(t, ok)
	assert.Equal(t, a, got)
	_, ok = b.Lookup("nope")
	assert.False(t, ok)
	all := b.Attachments()
	require.Len(t, all, 2)
	assert.Equal(t, []string{"task-a", "task-c"}, []string{all[0].ID, all[1].ID})

	// Copies: changing one changes nothing in the Bridge.
	got.MAC[0] = 0xff
	got2, _ := b.Lookup("task-a")
	assert.Equal(t, a.MAC, got2.MAC)

	_, err = b.Attach(ctx, "../x")
	assert.ErrorContains(t, err, "ID")
}

// TestConnectivity: containers reach the gateway and each other, and the
// world through masquerade.
func TestConnectivity(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	b := l.newBridge(t, "shtest0", "10.200.2.0/24")
	require.NoError(t, b.Setup(ctx))
	a, err := b.Attach(ctx, "a")
	require.NoError(t, err)
	c, err := b.Attach(ctx, "c")
	require.NoError(t, err)

	serve(t, a.NetnsPath, "a", ":7000", false)
	serve(t, l.host, "host", "10.200.2.1:7000", false)
	serve(t, l.client, "client", ":7000", false)

	name, from, err := ask(c.NetnsPath, a.Addr.String()+":7000")
	require.NoError(t, err, "container to container")
	assert.Equal(t, "a", name)
	assert.Equal(t, c.Addr.String(), hostOf(t, from))

	name, from, err = ask(c.NetnsPath, "10.200.2.1:7000")
	require.NoError(t, err, "container to gateway")
	assert.Equal(t, "host", name)
	assert.Equal(t, c.Addr.String(), hostOf(t, from))

	name, from, err = ask(a.NetnsPath, clientLinkAddr+":7000")
	require.NoError(t, err, "container to the world")
	assert.Equal(t, "client", name)
	assert.Equal(t, hostLinkAddr, hostOf(t, from), "masqueraded to the host's address on the client link")
}

// TestNoMasquerade: with Masquerade off, outbound traffic keeps the
// container's address, and the outbound rule is absent.
func TestNoMasquerade(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	b := l.newBridge(t, "shtest0", "10.200.3.0/24", func(c *Config) { c.Masquerade = false })
	require.NoError(t, b.Setup(ctx))
	assert.Len(t, nftRules(t, l.host, "shtest0", chainPostrouting), 2, "only loopback and hairpin masquerade")
	a, err := b.Attach(ctx, "a")
	require.NoError(t, err)
	withHandle(t, l.client, func(h *netlink.Handle) {
		_, dst, _ := net.ParseCIDR("10.200.3.0/24")
		require.NoError(t, h.RouteAdd(&netlink.Route{Dst: dst, Gw: net.ParseIP(hostLinkAddr)}))
	})
	serve(t, l.client, "client", ":7000", false)
	_, from, err := ask(a.NetnsPath, clientLinkAddr+":7000")
	require.NoError(t, err)
	assert.Equal(t, a.Addr.String(), hostOf(t, from))
}

// TestPublish: published ports reach the container from outside the node,
// from the node itself (its own address and 127.0.0.1), and from
// containers on the node (hairpin); Publish replaces; Detach removes.
func TestPublish(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	b := l.newBridge(t, "shtest0", "10.200.4.0/24")
	require.NoError(t, b.Setup(ctx))
	a, err := b.Attach(ctx, "a")
	require.NoError(t, err)
	c, err := b.Attach(ctx, "c")
	require.NoError(t, err)
	serve(t, a.NetnsPath, "a", ":80", true)
	serve(t, a.NetnsPath, "a", ":81", false)

	require.ErrorIs(t, b.Publish(ctx, "nope", nil), ErrNotAttached)
	require.NoError(t, b.Publish(ctx, "a", []PortMapping{
		{HostPort: 8080, Target: 80, Protocol: ProtocolTCP},
		{HostPort: 8080, Target: 80, Protocol: ProtocolUDP},
	}))
	got, _ := b.Lookup("a")
	assert.Len(t, got.Ports, 2)
	assert.Equal(t, []string{"tcp:8080>10.200.4.2:80", "udp:8080>10.200.4.2:80"}, nftPorts(t, l.host, "shtest0"))

	for _, tc := range []struct {
		what, ns, addr, wantFrom string
	}{
		{"from outside", l.client, hostLinkAddr + ":8080", clientLinkAddr},
		{"from the node to its address", l.host, hostLinkAddr + ":8080", hostLinkAddr},
		{"from the node to 127.0.0.1", l.host, "127.0.0.1:8080", "10.200.4.1"},
		{"from another container (hairpin)", c.NetnsPath, hostLinkAddr + ":8080", "10.200.4.1"},
		{"from the container itself (hairpin)", a.NetnsPath, "10.200.4.1:8080", "10.200.4.1"},
	} {
		name, from, err := ask(tc.ns, tc.addr)
		if assert.NoError(t, err, tc.what) {
			assert.Equal(t, "a", name, tc.what)
			assert.Equal(t, tc.wantFrom, hostOf(t, from), tc.what)
		}
	}
	name, from, err := askUDP(l.client, hostLinkAddr+":8080")
	require.NoError(t, err, "UDP from outside")
	assert.Equal(t, "a", name)
	assert.Equal(t, clientLinkAddr, hostOf(t, from))

	// Another attachment cannot take the port.
	err = b.Publish(ctx, "c", []PortMapping{{HostPort: 8080, Target: 1, Protocol: ProtocolTCP}})
	assert.ErrorContains(t, err, `"a"`)
	assert.ErrorContains(t, b.Publish(ctx, "a", []PortMapping{{HostPort: 0, Target: 1, Protocol: ProtocolTCP}}), "HostPort")

	// Replace: 9090 -> 81 only.
	require.NoError(t, b.Publish(ctx, "a", []PortMapping{{HostPort: 9090, Target: 81, Protocol: ProtocolTCP}}))
	_, _, err = ask(l.client, hostLinkAddr+":8080")
	assert.Error(t, err, "the old port is gone")
	name, _, err = ask(l.client, hostLinkAddr+":9090")
	require.NoError(t, err)
	assert.Equal(t, "a", name)

	assert.Equal(t, []string{"tcp:9090>10.200.4.2:81"}, nftPorts(t, l.host, "shtest0"))
	require.NoError(t, b.Detach(ctx, "a"))
	assert.Empty(t, nftPorts(t, l.host, "shtest0"))
	_, _, err = ask(l.client, hostLinkAddr+":9090")
	assert.Error(t, err)
}

// TestDetach: Detach removes the veth pair, the namespace, the lease and
// the address; unknown IDs are fine.
func TestDetach(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	b := l.newBridge(t, "shtest0", "10.200.5.0/24")
	require.ErrorIs(t, b.Detach(ctx, "a"), ErrNotSetUp)
	require.NoError(t, b.Setup(ctx))
	a, err := b.Attach(ctx, "a")
	require.NoError(t, err)
	require.NoError(t, b.Publish(ctx, "a", []PortMapping{{HostPort: 8080, Target: 80, Protocol: ProtocolTCP}}))
	lease := b.leases.path("a")
	require.FileExists(t, lease)

	require.NoError(t, b.Detach(ctx, "a"))
	assert.False(t, linkExists(t, l.host, a.HostVeth), "host veth deleted")
	assert.NoFileExists(t, a.NetnsPath)
	assert.NoFileExists(t, lease)
	_, ok := b.Lookup("a")
	assert.False(t, ok)
	assert.Empty(t, b.Attachments())
	assert.Empty(t, nftPorts(t, l.host, "shtest0"))

	require.NoError(t, b.Detach(ctx, "a"), "detaching again")
	require.NoError(t, b.Detach(ctx, "never"), "unknown ID")
}

// TestRestore: a new Bridge on the same StateDir knows the old
// attachments, keeps their addresses and ports, never reuses their
// addresses, and can detach them.
func TestRestore(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	b1 := l.newBridge(t, "shtest0", "10.200.6.0/24")
	require.NoError(t, b1.Setup(ctx))
	a, err := b1.Attach(ctx, "a")
	require.NoError(t, err)
	c, err := b1.Attach(ctx, "c")
	require.NoError(t, err)
	require.NoError(t, b1.Detach(ctx, "c")) // its address is free again
	d, err := b1.Attach(ctx, "d")
	require.NoError(t, err)
	ports := []PortMapping{{HostPort: 8080, Target: 80, Protocol: ProtocolTCP}}
	require.NoError(t, b1.Publish(ctx, "a", ports))
	serve(t, a.NetnsPath, "a", ":80", false)
	require.NoError(t, b1.Close())

	// The host program restarts: the kernel state is untouched, and so
	// the published port works all along.
	name, _, err := ask(l.client, hostLinkAddr+":8080")
	require.NoError(t, err)
	assert.Equal(t, "a", name)

	b2, err := New(b1.cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = b2.Close() })
	require.NoError(t, b2.Setup(ctx))
	all := b2.Attachments()
	require.Len(t, all, 2)
	a.Ports = ports
	assert.Equal(t, a, all[0])
	assert.Equal(t, d, all[1])

	e, err := b2.Attach(ctx, "e")
	require.NoError(t, err)
	assert.NotEqual(t, a.Addr, e.Addr)
	assert.NotEqual(t, d.Addr, e.Addr)
	assert.Equal(t, c.Addr, e.Addr, "the address c released is free")
	f, err := b2.Attach(ctx, "f")
	require.NoError(t, err)
	assert.Equal(t, netip.MustParseAddr("10.200.6.5"), f.Addr)

	again, err := b2.Attach(ctx, "a")
	require.NoError(t, err)
	assert.Equal(t, a, again)
	name, _, err = ask(l.client, hostLinkAddr+":8080")
	require.NoError(t, err, "Setup programmed the restored ports")
	assert.Equal(t, "a", name)

	require.NoError(t, b2.Detach(ctx, "a"))
	assert.False(t, linkExists(t, l.host, a.HostVeth))
	assert.NoFileExists(t, a.NetnsPath)
	_, _, err = ask(l.client, hostLinkAddr+":8080")
	assert.Error(t, err)
	require.NoError(t, b2.Teardown(ctx))
}

// TestRepair: Attach of an existing ID puts back what went missing.
func TestRepair(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	b := l.newBridge(t, "shtest0", "10.200.7.0/24")
	require.NoError(t, b.Setup(ctx))
	a, err := b.Attach(ctx, "a")
	require.NoError(t, err)
	serve(t, l.host, "host", "10.200.7.1:7000", false)

	// The veth pair is deleted (both ends go).
	withHandle(t, l.host, func(h *netlink.Handle) {
		link, err := h.LinkByName(a.HostVeth)
		require.NoError(t, err)
		require.NoError(t, h.LinkDel(link))
	})
	_, _, err = ask(a.NetnsPath, "10.200.7.1:7000")
	require.Error(t, err)
	again, err := b.Attach(ctx, "a")
	require.NoError(t, err)
	assert.Equal(t, a, again)
	_, from, err := ask(a.NetnsPath, "10.200.7.1:7000")
	require.NoError(t, err)
	assert.Equal(t, a.Addr.String(), hostOf(t, from))

	// The namespace is gone, as after a reboot: the bind mount is lifted
	// (the veth pair dies with the namespace), the file stays.
	withHandle(t, l.host, func(h *netlink.Handle) {
		link, err := h.LinkByName(a.HostVeth)
		require.NoError(t, err)
		require.NoError(t, h.LinkDel(link))
	})
	require.NoError(t, removeNetns(a.NetnsPath))
	f, err := os.Create(a.NetnsPath)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	require.False(t, isMounted(t, a.NetnsPath))
	again, err = b.Attach(ctx, "a")
	require.NoError(t, err)
	assert.Equal(t, a, again)
	assert.True(t, isMounted(t, a.NetnsPath))
	_, from, err = ask(a.NetnsPath, "10.200.7.1:7000")
	require.NoError(t, err)
	assert.Equal(t, a.Addr.String(), hostOf(t, from))

	// eth0 lost its address and went down.
	withHandle(t, a.NetnsPath, func(h *netlink.Handle) {
		eth0, err := h.LinkByName("eth0")
		require.NoError(t, err)
		require.NoError(t, h.AddrDel(eth0, mustAddr(a.Prefix.String())))
		require.NoError(t, h.LinkSetDown(eth0))
	})
	_, err = b.Attach(ctx, "a")
	require.NoError(t, err)
	_, _, err = ask(a.NetnsPath, "10.200.7.1:7000")
	require.NoError(t, err)

	// The bridge was deleted: Attach creates it again and enslaves the
	// veth again.
	withHandle(t, l.host, func(h *netlink.Handle) {
		br, err := h.LinkByName("shtest0")
		require.NoError(t, err)
		require.NoError(t, h.LinkDel(br))
	})
	_, err = b.Attach(ctx, "a")
	require.NoError(t, err)
	serve(t, l.host, "host", "10.200.7.1:7001", false)
	_, _, err = ask(a.NetnsPath, "10.200.7.1:7001")
	require.NoError(t, err)
}

// TestPoolExhausted: a /30 has one container address.
func TestPoolExhausted(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	b := l.newBridge(t, "shtest0", "10.200.8.0/30")
	require.NoError(t, b.Setup(ctx))
	a, err := b.Attach(ctx, "a")
	require.NoError(t, err)
	assert.Equal(t, netip.MustParseAddr("10.200.8.2"), a.Addr)
	_, err = b.Attach(ctx, "b")
	require.ErrorIs(t, err, ErrPoolExhausted)
	assert.ErrorContains(t, err, "10.200.8.0/30")
	assert.NoFileExists(t, b.leases.path("b"))
	assert.NoFileExists(t, b.netnsPath("b"))
	require.NoError(t, b.Detach(ctx, "a"))
	got, err := b.Attach(ctx, "b")
	require.NoError(t, err)
	assert.Equal(t, a.Addr, got.Addr)
}

// TestTwoBridges: two Bridges with their own names and pools in one host
// namespace each have their own bridge, table, leases and attachments, and
// tearing one down leaves the other working.
func TestTwoBridges(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	cfg1 := l.config(t, "shtest1", "10.201.1.0/24")
	cfg2 := l.config(t, "shtest2", "10.201.2.0/24")
	cfg2.StateDir = cfg1.StateDir // one StateDir, one directory per bridge
	b1, err := New(cfg1)
	require.NoError(t, err)
	b2, err := New(cfg2)
	require.NoError(t, err)
	t.Cleanup(func() { _ = b1.Teardown(ctx); _ = b2.Teardown(ctx) })
	require.NoError(t, b1.Setup(ctx))
	require.NoError(t, b2.Setup(ctx))

	a1, err := b1.Attach(ctx, "same-id")
	require.NoError(t, err)
	a2, err := b2.Attach(ctx, "same-id")
	require.NoError(t, err)
	assert.Equal(t, "10.201.1.2", a1.Addr.String())
	assert.Equal(t, "10.201.2.2", a2.Addr.String())
	assert.NotEqual(t, a1.HostVeth, a2.HostVeth)
	assert.NotEqual(t, a1.NetnsPath, a2.NetnsPath)
	require.NoError(t, b1.Publish(ctx, "same-id", []PortMapping{{HostPort: 8081, Target: 80, Protocol: ProtocolTCP}}))
	require.NoError(t, b2.Publish(ctx, "same-id", []PortMapping{{HostPort: 8082, Target: 80, Protocol: ProtocolTCP}}))
	serve(t, a1.NetnsPath, "one", ":80", false)
	serve(t, a2.NetnsPath, "two", ":80", false)
	for port, want := range map[string]string{"8081": "one", "8082": "two"} {
		name, _, err := ask(l.client, hostLinkAddr+":"+port)
		require.NoError(t, err)
		assert.Equal(t, want, name)
	}
	// The two pools reach each other through the host, as two docker
	// networks do without isolation rules.
	name, _, err := ask(a1.NetnsPath, a2.Addr.String()+":80")
	require.NoError(t, err)
	assert.Equal(t, "two", name)

	// An overlapping pool is refused.
	cfg3 := l.config(t, "shtest3", "10.201.2.128/25")
	b3, err := New(cfg3)
	require.NoError(t, err)
	err = b3.Setup(ctx)
	assert.ErrorContains(t, err, "Config.Subnet")
	assert.ErrorContains(t, err, "shtest2")
	assert.False(t, linkExists(t, l.host, "shtest3"), "nothing created")
	require.NoError(t, b3.Close())

	require.NoError(t, b1.Teardown(ctx))
	assert.False(t, linkExists(t, l.host, "shtest1"))
	assert.False(t, tableExists(t, l.host, "shtest1"))
	assert.NoDirExists(t, filepath.Join(cfg1.StateDir, "shtest1"))
	assert.True(t, tableExists(t, l.host, "shtest2"))
	name, _, err = ask(l.client, hostLinkAddr+":8082")
	require.NoError(t, err)
	assert.Equal(t, "two", name)
	_, ok := b2.Lookup("same-id")
	assert.True(t, ok)
}

// TestSeparateHostNamespaces: two nodes in one process, each with its own
// host namespace, may even use the same bridge name and pool.
func TestSeparateHostNamespaces(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	var atts []*Attachment
	for i := range 2 {
		l := &lab{host: newNS(t, fmt.Sprint("node", i))}
		b := l.newBridge(t, "shoal0", "172.31.0.0/24")
		require.NoError(t, b.Setup(ctx))
		a, err := b.Attach(ctx, "t")
		require.NoError(t, err)
		serve(t, a.NetnsPath, fmt.Sprint("node", i), ":80", false)
		atts = append(atts, a)
	}
	for i, a := range atts {
		name, _, err := ask(a.NetnsPath, "127.0.0.1:80")
		require.NoError(t, err)
		assert.Equal(t, fmt.Sprint("node", i), name)
	}
}

// TestTeardownAfterCrash: a Bridge that was never set up tears down what
// an earlier one left in the kernel and the StateDir.
func TestTeardownAfterCrash(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	b1 := l.newBridge(t, "shtest0", "10.200.9.0/24")
	require.NoError(t, b1.Setup(ctx))
	a, err := b1.Attach(ctx, "a")
	require.NoError(t, err)
	require.NoError(t, b1.Close())

	b2, err := New(b1.cfg)
	require.NoError(t, err)
	require.NoError(t, b2.Teardown(ctx))
	assert.False(t, linkExists(t, l.host, "shtest0"))
	assert.False(t, linkExists(t, l.host, a.HostVeth))
	assert.False(t, tableExists(t, l.host, "shtest0"))
	assert.NoDirExists(t, filepath.Join(b1.cfg.StateDir, "shtest0"))
	require.NoError(t, b2.Teardown(ctx), "idempotent")
	require.NoError(t, b2.Close())
}

// TestContext: a cancelled context stops an operation before it starts.
func TestContext(t *testing.T) {
	l := newLab(t)
	b := l.newBridge(t, "shtest0", "10.200.10.0/24")
	cctx, cancel := context.WithCancel(context.Background())
	cancel()
	assert.ErrorIs(t, b.Setup(cctx), context.Canceled)
	require.NoError(t, b.Setup(context.Background()))
	_, err := b.Attach(cctx, "a")
	assert.ErrorIs(t, err, context.Canceled)
	assert.NoFileExists(t, b.leases.path("a"))
	assert.True(t, errors.Is(b.Detach(cctx, "a"), context.Canceled))
}

// TestBridgeHasOneOwner: a second Bridge with another state directory on
// the same bridge would hand out the same addresses; it is refused until
// the first is closed.
func TestBridgeHasOneOwner(t *testing.T) {
	lab := newLab(t)
	cfg := lab.config(t, "shtest9", "10.200.9.0/24")
	first, err := New(cfg)
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, first.Setup(ctx))

	other := cfg
	other.StateDir = t.TempDir()
	second, err := New(other)
	require.NoError(t, err)
	err = second.Setup(ctx)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "in use by another runtime")
	assert.Contains(t, err.Error(), cfg.StateDir)

	require.NoError(t, first.Close())
	require.NoError(t, second.Setup(ctx), "free once the first is closed")
	require.NoError(t, second.Teardown(ctx))
}
