package network

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// TestUDPFlowFollowsPublish: a UDP flow never ends by itself, so its
// conntrack entry would keep it on the container a mapping no longer
// names; Publish deletes it, and the same flow reaches the new container.
func TestUDPFlowFollowsPublish(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	b := l.newBridge(t, "shtest0", "10.200.11.0/24")
	require.NoError(t, b.Setup(ctx))
	a, err := b.Attach(ctx, "a")
	require.NoError(t, err)
	c, err := b.Attach(ctx, "c")
	require.NoError(t, err)
	serve(t, a.NetnsPath, "a", ":53", true)
	serve(t, c.NetnsPath, "c", ":53", true)
	dns := []PortMapping{{HostPort: 5353, Target: 53, Protocol: ProtocolUDP}}
	require.NoError(t, b.Publish(ctx, "a", dns))

	var conn net.Conn
	require.NoError(t, inNS(l.client, func() error {
		var err error
		conn, err = net.Dial("udp4", hostLinkAddr+":5353")
		return err
	}))
	defer conn.Close()
	ask := func() string {
		t.Helper()
		buf := make([]byte, 128)
		for range 5 {
			_, err := conn.Write([]byte("?"))
			require.NoError(t, err)
			_ = conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			if n, err := conn.Read(buf); err == nil {
				name, _, _ := strings.Cut(string(buf[:n]), " ")
				return name
			}
		}
		return ""
	}
	require.Equal(t, "a", ask())
	require.NoError(t, b.Publish(ctx, "a", nil))
	require.NoError(t, b.Publish(ctx, "c", dns))
	assert.Equal(t, "c", ask(), "the same flow, from the same source port, now reaches c")
}

// TestConcurrentAttach attaches and detaches from many goroutines while
// others read; every address is handed out once.
func TestConcurrentAttach(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	b := l.newBridge(t, "shtest0", "10.200.12.0/24")
	require.NoError(t, b.Setup(ctx))
	const n = 12
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		addrs = map[netip.Addr]string{}
		done  = make(chan struct{})
	)
	wg.Add(1)
	go func() { // readers never see a half-made attachment
		defer wg.Done()
		deadline := time.After(time.Minute)
		for range 100000 {
			select {
			case <-done:
				return
			case <-deadline:
				return
			default:
			}
			for _, a := range b.Attachments() {
				if !a.Addr.IsValid() || a.NetnsPath == "" {
					t.Errorf("half-made attachment %+v", a)
				}
			}
			_, _ = b.Lookup("t0")
		}
	}()
	var workers sync.WaitGroup
	for i := range n {
		workers.Add(1)
		go func() {
			defer workers.Done()
			id := fmt.Sprint("t", i)
			a, err := b.Attach(ctx, id)
			if !assert.NoError(t, err) {
				return
			}
			again, err := b.Attach(ctx, id)
			if assert.NoError(t, err) {
				assert.Equal(t, a.Addr, again.Addr)
			}
			mu.Lock()
			if other, dup := addrs[a.Addr]; dup {
				t.Errorf("%s handed to %s and %s", a.Addr, other, id)
			}
			addrs[a.Addr] = id
			mu.Unlock()
			if i%2 == 0 {
				assert.NoError(t, b.Detach(ctx, id))
			}
		}()
	}
	workers.Wait()
	close(done)
	wg.Wait()
	assert.Len(t, addrs, n)
	assert.Len(t, b.Attachments(), n/2)
}

// TestSetupRefusesForeignLease: a lease outside the pool stops Setup
// before it touches the kernel, and the error names the file.
func TestSetupRefusesForeignLease(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	b := l.newBridge(t, "shtest0", "10.200.13.0/24")
	bad := &lease{ID: "old", Addr: netip.MustParseAddr("10.9.9.9"), HostVeth: hostVethName("shtest0", "old")}
	require.NoError(t, b.leases.write(bad))
	err := b.Setup(ctx)
	require.Error(t, err)
	assert.ErrorContains(t, err, b.leases.path("old"))
	assert.ErrorContains(t, err, "10.200.13.0/24")
	assert.False(t, linkExists(t, l.host, "shtest0"), "no bridge created")
	require.NoError(t, b.leases.remove("old"))
	require.NoError(t, b.Setup(ctx))
}

// TestSetupAdopts: an existing bridge of that name is adopted and its
// stale addresses removed; an interface of that name that is not a bridge
// is refused.
func TestSetupAdopts(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	withHandle(t, l.host, func(h *netlink.Handle) {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = "shtest0"
		require.NoError(t, h.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}))
		br, err := h.LinkByName("shtest0")
		require.NoError(t, err)
		require.NoError(t, h.AddrAdd(br, mustAddr("10.55.0.1/24")))
		attrs = netlink.NewLinkAttrs()
		attrs.Name = "shveth"
		v := netlink.NewVeth(attrs)
		v.PeerName = "shvethpeer"
		require.NoError(t, h.LinkAdd(v))
	})
	b := l.newBridge(t, "shtest0", "10.200.14.0/24")
	require.NoError(t, b.Setup(ctx))
	withHandle(t, l.host, func(h *netlink.Handle) {
		br, err := h.LinkByName("shtest0")
		require.NoError(t, err)
		addrs, err := h.AddrList(br, netlink.FAMILY_V4)
		require.NoError(t, err)
		require.Len(t, addrs, 1)
		assert.Equal(t, "10.200.14.1/24", addrs[0].IPNet.String())
	})

	d, err := New(l.config(t, "shveth", "10.200.15.0/24"))
	require.NoError(t, err)
	defer d.Close()
	assert.ErrorContains(t, d.Setup(ctx), "is a veth, not a bridge")
}

// TestRepairLease: Attach of a known ID writes its lease again if it went
// missing.
func TestRepairLease(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	b := l.newBridge(t, "shtest0", "10.200.16.0/24")
	require.NoError(t, b.Setup(ctx))
	a, err := b.Attach(ctx, "a")
	require.NoError(t, err)
	require.NoError(t, os.Remove(b.leases.path("a")))
	_, err = b.Attach(ctx, "a")
	require.NoError(t, err)
	got, err := b.leases.load()
	require.NoError(t, err)
	require.Len(t, got, 1)
	assert.Equal(t, a.Addr, got[0].Addr)
}

// TestHostNetnsMissing: a HostNetns that does not exist fails Setup,
// naming the field.
func TestHostNetnsMissing(t *testing.T) {
	requireRoot(t)
	cfg := DefaultConfig()
	cfg.StateDir = t.TempDir()
	cfg.HostNetns = filepath.Join(t.TempDir(), "missing")
	b, err := New(cfg)
	require.NoError(t, err)
	defer b.Close()
	assert.ErrorContains(t, b.Setup(context.Background()), "Config.HostNetns")
}

// TestClose: after Close every operation returns ErrClosed and the kernel
// keeps the attachment.
func TestClose(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	b := l.newBridge(t, "shtest0", "10.200.17.0/24")
	require.NoError(t, b.Setup(ctx))
	a, err := b.Attach(ctx, "a")
	require.NoError(t, err)
	require.NoError(t, b.Close())
	require.NoError(t, b.Close(), "idempotent")
	_, err = b.Attach(ctx, "a")
	assert.ErrorIs(t, err, ErrClosed)
	assert.ErrorIs(t, b.Detach(ctx, "a"), ErrClosed)
	assert.ErrorIs(t, b.Publish(ctx, "a", nil), ErrClosed)
	assert.ErrorIs(t, b.Teardown(ctx), ErrClosed)
	assert.True(t, isMounted(t, a.NetnsPath))
	assert.True(t, linkExists(t, l.host, a.HostVeth))
	// Clean up with a new Bridge on the same StateDir.
	b2, err := New(b.cfg)
	require.NoError(t, err)
	require.NoError(t, b2.Teardown(ctx))
	require.NoError(t, b2.Close())
}

// TestRules inspects the table with the nftables library: the outbound
// masquerade names the pool and the bridge, and each published port is an
// element of the ports map that one DNAT rule per hook looks up.
func TestRules(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	b := l.newBridge(t, "shtest0", "10.200.18.0/24")
	require.NoError(t, b.Setup(ctx))
	a, err := b.Attach(ctx, "a")
	require.NoError(t, err)
	require.NoError(t, b.Publish(ctx, "a", []PortMapping{{HostPort: 8443, Target: 443, Protocol: ProtocolTCP}}))

	post := nftRules(t, l.host, "shtest0", chainPostrouting)
	require.Len(t, post, 3)
	var (
		masq, poolMatch, notBridge bool
	)
	for _, e := range post[0].Exprs {
		switch e := e.(type) {
		case *expr.Masq:
			masq = true
		case *expr.Cmp:
			if e.Op == expr.CmpOpEq && netip.AddrFrom4([4]byte(e.Data)) == netip.MustParseAddr("10.200.18.0") {
				poolMatch = true
			}
			if e.Op == expr.CmpOpNeq && strings.TrimRight(string(e.Data), "\x00") == "shtest0" {
				notBridge = true
			}
		}
	}
	assert.True(t, masq && poolMatch && notBridge, "ip saddr 10.200.18.0/24 oifname != shtest0 masquerade: %#v", post[0].Exprs)

	assert.Equal(t, []string{"tcp:8443>" + a.Addr.String() + ":443"}, nftPorts(t, l.host, "shtest0"))
	for _, chain := range []string{chainPrerouting, chainOutput} {
		rules := nftRules(t, l.host, "shtest0", chain)
		require.Len(t, rules, 1, chain)
		var (
			lookup *expr.Lookup
			nat    *expr.NAT
		)
		for _, e := range rules[0].Exprs {
			switch e := e.(type) {
			case *expr.Lookup:
				lookup = e
			case *expr.NAT:
				nat = e
			}
		}
		require.NotNil(t, lookup, chain)
		assert.Equal(t, portsMap, lookup.SetName, chain)
		require.NotNil(t, nat, chain)
		assert.Equal(t, expr.NATTypeDestNAT, nat.Type, chain)
	}
}

// TestManyPorts publishes a range of 10000 ports, more than one netlink
// batch holds, moves it, and restores it in a new Bridge.
func TestManyPorts(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	b := l.newBridge(t, "shtest0", "10.200.19.0/24")
	require.NoError(t, b.Setup(ctx))
	a, err := b.Attach(ctx, "a")
	require.NoError(t, err)
	serve(t, a.NetnsPath, "a", ":80", false)
	span := func(from, n int) []PortMapping {
		var ps []PortMapping
		for i := range n {
			ps = append(ps, PortMapping{HostPort: uint16(from + i), Target: 80, Protocol: ProtocolTCP})
		}
		return ps
	}
	require.NoError(t, b.Publish(ctx, "a", span(20000, 10000)))
	assert.Len(t, nftPorts(t, l.host, "shtest0"), 10000)
	for _, port := range []string{"20000", "25000", "29999"} {
		name, _, err := ask(l.client, hostLinkAddr+":"+port)
		require.NoError(t, err, port)
		assert.Equal(t, "a", name)
	}

	require.NoError(t, b.Publish(ctx, "a", span(25000, 10000)))
	got := nftPorts(t, l.host, "shtest0")
	require.Len(t, got, 10000)
	assert.Equal(t, "tcp:25000>"+a.Addr.String()+":80", got[0])
	_, _, err = ask(l.client, hostLinkAddr+":20000")
	assert.Error(t, err, "moved away")
	name, _, err := ask(l.client, hostLinkAddr+":34999")
	require.NoError(t, err)
	assert.Equal(t, "a", name)

	require.NoError(t, b.Close())
	b2, err := New(b.cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = b2.Close() })
	require.NoError(t, b2.Setup(ctx))
	assert.Len(t, nftPorts(t, l.host, "shtest0"), 10000)
	require.NoError(t, b2.Publish(ctx, "a", span(25000, 2)))
	assert.Len(t, nftPorts(t, l.host, "shtest0"), 2)
	require.NoError(t, b2.Teardown(ctx))
}

// TestSetupResyncsMap: Setup programs the ports map from the leases even
// when the kernel's copy was changed behind the Bridge's back.
func TestSetupResyncsMap(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	b := l.newBridge(t, "shtest0", "10.200.20.0/24")
	require.NoError(t, b.Setup(ctx))
	a, err := b.Attach(ctx, "a")
	require.NoError(t, err)
	require.NoError(t, b.Publish(ctx, "a", []PortMapping{{HostPort: 8080, Target: 80, Protocol: ProtocolTCP}}))
	ns, err := netns.GetFromPath(l.host)
	require.NoError(t, err)
	defer ns.Close()
	conn, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	require.NoError(t, err)
	require.NoError(t, deleteTable(conn, "shtest0"))
	require.NoError(t, b.Setup(ctx))
	assert.Equal(t, []string{"tcp:8080>" + a.Addr.String() + ":80"}, nftPorts(t, l.host, "shtest0"))
}
