package gossip

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/serf/serf"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// memberStatus returns how n's serf sees member id.
func memberStatus(n *Node, id string) serf.MemberStatus {
	s := n.serfOrNil()
	if s == nil {
		return serf.StatusNone
	}
	for _, m := range s.Members() {
		if m.Name == id {
			return m.Status
		}
	}
	return serf.StatusNone
}

func TestKillIsDetectedAsFailure(t *testing.T) {
	baseline := goleak.IgnoreCurrent()
	c := startCluster(t, 3, newKey(t), nil)
	victim := c.nodes[2]
	gone := ep(victim.cfg.NodeID, "web", "tv", 80, "10.0.0.3:1")
	victim.SetLocal([]Endpoint{gone})
	stay := ep(c.nodes[0].cfg.NodeID, "web", "t0", 80, "10.0.0.1:1")
	c.nodes[0].SetLocal([]Endpoint{stay})
	require.Eventually(t, func() bool { return converged(c.nodes, sortedCopy([]Endpoint{stay, gone})) }, 30*time.Second, 20*time.Millisecond)

	require.NoError(t, victim.Kill())
	rest := c.nodes[:2]
	require.Eventually(t, func() bool { return converged(rest, []Endpoint{stay}) }, 60*time.Second, 20*time.Millisecond,
		"survivors kept the killed member's endpoints")
	for _, nd := range rest {
		// Failed, not left: Kill broadcast no leave; the failure detector found it.
		assert.Equal(t, serf.StatusFailed, memberStatus(nd, victim.cfg.NodeID), nd.cfg.NodeID)
		assert.Equal(t, []string{"node-000", "node-001"}, nd.Members())
	}
	assert.Equal(t, "", victim.Addr())
	require.NoError(t, victim.Kill(), "Kill is idempotent")
	require.NoError(t, victim.Stop(context.Background()), "Stop after Kill does nothing")
	_, err := victim.Join(context.Background(), []string{c.trs[0].Addr()})
	require.ErrorIs(t, err, ErrNotStarted)

	// Kill on a node never started is fine too, and it cannot start after.
	idle, err := New(fastConfig("idle", c.net.NewTransport(), newKey(t)))
	require.NoError(t, err)
	require.NoError(t, idle.Kill())
	require.ErrorIs(t, idle.Start(context.Background()), ErrStopped)

	for _, nd := range rest {
		require.NoError(t, nd.Kill())
	}
	goleak.VerifyNone(t, baseline, goleak.IgnoreAnyFunction("github.com/hashicorp/memberlist.(*Memberlist).probeNode"))
}

// loopbackConfig is fastConfig on the real network: UDP and TCP on
// 127.0.0.1 with a kernel-chosen port.
func loopbackConfig(id string, key []byte) Config {
	cfg := fastConfig(id, nil, key)
	cfg.Transport = nil
	cfg.BindAddr = "127.0.0.1:0"
	return cfg
}

func TestBindPortZeroRealNetwork(t *testing.T) {
	key := newKey(t)
	start := func(cfg Config) *Node {
		n, err := New(cfg)
		require.NoError(t, err)
		assert.Equal(t, "", n.Addr(), "no address before Start")
		require.NoError(t, n.Start(context.Background()))
		t.Cleanup(func() { _ = n.Kill() })
		return n
	}
	a := start(loopbackConfig("a", key))
	b := start(loopbackConfig("b", key))
	// An advertised port of 0 means the bound one as well.
	cc := loopbackConfig("c", key)
	cc.AdvertiseAddr = "127.0.0.1:0"
	c := start(cc)

	ports := map[int]bool{}
	for _, n := range []*Node{a, b, c} {
		host, ps, err := net.SplitHostPort(n.Addr())
		require.NoError(t, err, n.Addr())
		assert.Equal(t, "127.0.0.1", host)
		port, err := strconv.Atoi(ps)
		require.NoError(t, err)
		require.NotZero(t, port, "Addr must carry the chosen port")
		ports[port] = true
		// The same port is taken on both TCP and UDP.
		ap := netip.MustParseAddrPort(n.Addr())
		_, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
		assert.Error(t, err, "UDP %s must be bound", n.Addr())
		_, err = net.ListenTCP("tcp", net.TCPAddrFromAddrPort(ap))
		assert.Error(t, err, "TCP %s must be bound", n.Addr())
	}
	assert.Len(t, ports, 3, "every member has its own port")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	k, err := b.Join(ctx, []string{a.Addr()})
	require.NoError(t, err)
	assert.Equal(t, 1, k)
	_, err = c.Join(ctx, []string{b.Addr()})
	require.NoError(t, err)
	nodes := []*Node{a, b, c}
	require.Eventually(t, func() bool {
		for _, n := range nodes {
			if len(n.Members()) != 3 {
				return false
			}
		}
		return true
	}, 30*time.Second, 20*time.Millisecond)

	e := ep("a", "web", "t1", 80, "10.0.0.1:31000")
	a.SetLocal([]Endpoint{e})
	require.Eventually(t, func() bool { return converged(nodes, []Endpoint{e}) }, 30*time.Second, 20*time.Millisecond)
	e2 := ep("c", "web", "t2", 80, "10.0.0.3:31000")
	c.SetLocal([]Endpoint{e2})
	want := sortedCopy([]Endpoint{e, e2})
	require.Eventually(t, func() bool { return converged(nodes, want) }, 30*time.Second, 20*time.Millisecond)
	// The table's streams run over the real TCP listener too.
	require.NoError(t, b.syncWith(c.Addr(), nil))

	// Kill releases the sockets.
	addr := netip.MustParseAddrPort(a.Addr())
	require.NoError(t, a.Kill())
	u, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
	require.NoError(t, err, "Kill must close the UDP socket")
	require.NoError(t, u.Close())
	require.Eventually(t, func() bool { return converged([]*Node{b, c}, []Endpoint{e2}) }, 60*time.Second, 20*time.Millisecond)
}

func TestBindInvalidAddr(t *testing.T) {
	cfg := loopbackConfig("x", nil)
	cfg.BindAddr = "203.0.113.7:0" // TEST-NET-3: not an address of this host
	n, err := New(cfg)
	require.NoError(t, err)
	err = n.Start(context.Background())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "gossip: bind 203.0.113.7:0")
	require.NoError(t, n.Stop(context.Background()))
}

// A Stop whose ctx ends during the leave returns at once with ctx's error;
// serf's leave call, which cannot be interrupted, ends on its own within
// LeaveTimeout + LeavePropagateDelay, without bringing the process down
// (memberlist panics on a leave after shutdown).
func TestStopContextEndsDuringLeave(t *testing.T) {
	baseline := goleak.IgnoreCurrent()
	const leaveTimeout, propagate = 400 * time.Millisecond, 100 * time.Millisecond
	c := startCluster(t, 3, newKey(t), func(cfg *Config) {
		cfg.LeaveTimeout = leaveTimeout
		cfg.LeavePropagateDelay = propagate
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := c.nodes[2].Stop(ctx)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(start), leaveTimeout, "Stop outlived its ctx")
	assert.Equal(t, "", c.nodes[2].Addr())

	time.Sleep(leaveTimeout + propagate) // the leave call's own bound
	c.killAll()
	goleak.VerifyNone(t, baseline, goleak.IgnoreAnyFunction("github.com/hashicorp/memberlist.(*Memberlist).probeNode"))
}
