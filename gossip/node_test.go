package gossip

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/shoalhq/shoal/gossip/gossiptest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func ep(node, svc, task string, port uint32, addr string) Endpoint {
	return Endpoint{Service: svc, Task: task, Node: node, Port: port, Protocol: "tcp", Addr: netip.MustParseAddrPort(addr)}
}

func TestPublishWithdrawWatch(t *testing.T) {
	c := startCluster(t, 3, newKey(t), nil)
	a, b, cc := c.nodes[0], c.nodes[1], c.nodes[2]

	watch, cancel := cc.Watch()
	defer cancel()

	e1 := ep(a.cfg.NodeID, "web", "t1", 80, "10.0.0.1:30001")
	e2 := ep(b.cfg.NodeID, "web", "t2", 80, "10.0.0.2:30002")
	a.SetLocal([]Endpoint{e1})
	b.SetLocal([]Endpoint{e2})
	want := sortedCopy([]Endpoint{e1, e2})
	require.Eventually(t, func() bool { return converged(c.nodes, want) }, 30*time.Second, 20*time.Millisecond)

	select {
	case <-watch:
	case <-time.After(10 * time.Second):
		t.Fatal("watcher not signalled")
	}

	// Change an address, then withdraw.
	e1b := e1
	e1b.Addr = netip.MustParseAddrPort("10.0.0.1:30009")
	a.SetLocal([]Endpoint{e1b})
	want = sortedCopy([]Endpoint{e1b, e2})
	require.Eventually(t, func() bool { return converged(c.nodes, want) }, 30*time.Second, 20*time.Millisecond)

	b.SetLocal(nil)
	want = []Endpoint{e1b}
	require.Eventually(t, func() bool { return converged(c.nodes, want) }, 30*time.Second, 20*time.Millisecond)
	assert.Equal(t, []string{"node-000", "node-001", "node-002"}, a.Members())
}

func TestSetLocalStampsNodeAndSkipsInvalid(t *testing.T) {
	n, err := New(fastConfig("me", gossiptest.NewMemNetwork(1).NewTransport(), nil))
	require.NoError(t, err)
	good := ep("someone-else", "svc", "t1", 80, "10.0.0.1:1000")
	bad := good
	bad.Task, bad.Protocol = "t2", "sctp"
	n.SetLocal([]Endpoint{good, bad})
	got := n.Table()
	require.Len(t, got, 1)
	assert.Equal(t, "me", got[0].Node)
	assert.Equal(t, "t1", got[0].Task)
	require.NoError(t, n.Stop(context.Background()))
}

func TestJoinerGetsFullTable(t *testing.T) {
	c := startCluster(t, 3, newKey(t), nil)
	var want []Endpoint
	for i, nd := range c.nodes {
		eps := makeEndpoints(nd.cfg.NodeID, i, 300, 7)
		nd.SetLocal(eps)
		want = append(want, eps...)
	}
	want = sortedCopy(want)
	require.Eventually(t, func() bool { return converged(c.nodes, want) }, 30*time.Second, 20*time.Millisecond)

	tr := c.net.NewTransport()
	j, err := New(fastConfig("joiner", tr, c.nodes[0].cfg.Keys[0]))
	require.NoError(t, err)
	mine := ep("joiner", "db", "tj", 5432, "10.9.9.9:5432")
	j.SetLocal([]Endpoint{mine})
	require.NoError(t, j.Start(context.Background()))
	c.nodes = append(c.nodes, j) // cleanup kills it
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	k, err := j.Join(ctx, []string{c.trs[1].Addr()})
	require.NoError(t, err)
	assert.Equal(t, 1, k)
	// Join returns after the first full sync: the whole table is there already.
	got := j.Table()
	assert.Len(t, got, len(want)+1)
	want = sortedCopy(append(want, mine))
	require.Eventually(t, func() bool { return converged(c.nodes, want) }, 30*time.Second, 20*time.Millisecond)
}

func TestGracefulLeaveDropsEndpoints(t *testing.T) {
	c := startCluster(t, 3, newKey(t), nil)
	leaver := c.nodes[2]
	gone := ep(leaver.cfg.NodeID, "web", "t1", 80, "10.0.0.3:1")
	leaver.SetLocal([]Endpoint{gone})
	stay := ep(c.nodes[0].cfg.NodeID, "web", "t0", 80, "10.0.0.1:1")
	c.nodes[0].SetLocal([]Endpoint{stay})
	require.Eventually(t, func() bool { return converged(c.nodes, sortedCopy([]Endpoint{stay, gone})) }, 30*time.Second, 20*time.Millisecond)

	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stopped := make(chan error, 1)
	go func() { stopped <- leaver.Stop(ctx) }()
	rest := c.nodes[:2]
	require.Eventually(t, func() bool { return converged(rest, []Endpoint{stay}) }, 30*time.Second, 5*time.Millisecond)
	t.Logf("graceful leave: endpoints gone everywhere %v after Stop began", time.Since(start))
	require.NoError(t, <-stopped)
	require.NoError(t, leaver.Stop(ctx), "Stop is idempotent")
	assert.Equal(t, []string{"node-000", "node-001"}, c.nodes[0].Members())
}

func TestFailureDropsEndpoints(t *testing.T) {
	c := startCluster(t, 4, newKey(t), nil)
	victim := c.nodes[3]
	gone := ep(victim.cfg.NodeID, "web", "tv", 80, "10.0.0.4:1")
	victim.SetLocal([]Endpoint{gone})
	stay := ep(c.nodes[0].cfg.NodeID, "web", "t0", 80, "10.0.0.1:1")
	c.nodes[0].SetLocal([]Endpoint{stay})
	require.Eventually(t, func() bool { return converged(c.nodes, sortedCopy([]Endpoint{stay, gone})) }, 30*time.Second, 20*time.Millisecond)

	start := time.Now()
	c.net.Isolate(c.trs[3].Addr(), true) // the host drops off the network, no leave
	rest := c.nodes[:3]
	require.Eventually(t, func() bool { return converged(rest, []Endpoint{stay}) }, 30*time.Second, 10*time.Millisecond)
	t.Logf("failure (no leave): endpoints gone everywhere %v after the network cut", time.Since(start))

	// It comes back: serf sees it alive again and its endpoints return.
	c.net.Isolate(c.trs[3].Addr(), false)
	_, err := victim.Join(context.Background(), []string{c.trs[0].Addr()})
	require.NoError(t, err)
	want := sortedCopy([]Endpoint{stay, ep(victim.cfg.NodeID, "web", "tv", 80, "10.0.0.4:1")})
	require.Eventually(t, func() bool { return converged(c.nodes, want) }, 60*time.Second, 20*time.Millisecond)
}

// laterClock is the wall clock moved ahead.
type laterClock struct {
	Clock
	ahead time.Duration
}

func (c laterClock) Now() time.Time { return c.Clock.Now().Add(c.ahead) }

func TestRestartOutranksPreviousIncarnation(t *testing.T) {
	c := startCluster(t, 2, nil, nil)
	old := c.nodes[1]
	old.SetLocal(makeEndpoints(old.cfg.NodeID, 1, 10, 2))
	require.Eventually(t, func() bool { return c.nodes[0].tbl.size() == 10 }, 30*time.Second, 20*time.Millisecond)
	require.NoError(t, old.Kill())

	// Same ID, new process, one endpoint: its timestamp-seeded version wins.
	tr := c.net.NewTransport()
	cfg := fastConfig(old.cfg.NodeID, tr, nil)
	cfg.Clock = laterClock{RealClock(), time.Minute}
	nn, err := New(cfg)
	require.NoError(t, err)
	require.NoError(t, nn.Start(context.Background()))
	c.nodes = append(c.nodes, nn)
	one := makeEndpoints(old.cfg.NodeID, 1, 1, 1)
	nn.SetLocal(one)
	_, err = nn.Join(context.Background(), []string{c.trs[0].Addr()})
	require.NoError(t, err)
	want := sortedCopy(one)
	require.Eventually(t, func() bool { return converged([]*Node{c.nodes[0], nn}, want) }, 60*time.Second, 20*time.Millisecond)
}

func TestEncryptionMismatchRefused(t *testing.T) {
	netw := gossiptest.NewMemNetwork(1)
	ta, tb, tc := netw.NewTransport(), netw.NewTransport(), netw.NewTransport()
	k1, k2 := newKey(t), newKey(t)
	mk := func(id string, tr *gossiptest.MemTransport, key []byte) *Node {
		n, err := New(fastConfig(id, tr, key))
		require.NoError(t, err)
		require.NoError(t, n.Start(context.Background()))
		t.Cleanup(func() { _ = n.Kill() })
		return n
	}
	a := mk("a", ta, k1)
	b := mk("b", tb, k2)
	c := mk("c", tc, nil) // plaintext
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := b.Join(ctx, []string{ta.Addr()})
	assert.Error(t, err, "a member with another key must not join")
	_, err = c.Join(ctx, []string{ta.Addr()})
	assert.Error(t, err, "a plaintext member must not join an encrypted one")
	assert.Equal(t, []string{"a"}, a.Members())

	// The table's own streams are sealed too: a sync from the wrong key fails.
	require.Error(t, b.syncWith(ta.Addr(), nil))
	require.Error(t, c.syncWith(ta.Addr(), nil))
}

func TestKeyRotationKeepsClusterTogether(t *testing.T) {
	k1 := newKey(t)
	c := startCluster(t, 3, k1, nil)
	c.nodes[0].SetLocal([]Endpoint{ep("node-000", "web", "t0", 80, "10.0.0.1:1")})
	k2 := newKey(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, c.nodes[1].RotateKeys(ctx, k2))
	for _, nd := range c.nodes {
		assert.Equal(t, [][]byte{k2}, nd.keyring.GetKeys(), nd.cfg.NodeID)
	}
	// Still one cluster, still gossiping: a change made after rotation spreads.
	e := ep("node-002", "web", "t2", 80, "10.0.0.3:1")
	c.nodes[2].SetLocal([]Endpoint{e})
	want := sortedCopy([]Endpoint{e, ep("node-000", "web", "t0", 80, "10.0.0.1:1")})
	require.Eventually(t, func() bool { return converged(c.nodes, want) }, 30*time.Second, 20*time.Millisecond)
	assert.Len(t, c.nodes[0].Members(), 3)

	// A newcomer with the old key is refused; with the new key it joins.
	old, err := New(fastConfig("old", c.net.NewTransport(), k1))
	require.NoError(t, err)
	require.NoError(t, old.Start(ctx))
	t.Cleanup(func() { _ = old.Kill() })
	_, err = old.Join(ctx, []string{c.trs[0].Addr()})
	assert.Error(t, err)
	tr := c.net.NewTransport()
	nw, err := New(fastConfig("new", tr, k2))
	require.NoError(t, err)
	require.NoError(t, nw.Start(ctx))
	c.nodes = append(c.nodes, nw)
	_, err = nw.Join(ctx, []string{c.trs[0].Addr()})
	require.NoError(t, err)
	assert.Len(t, nw.Table(), 2)
	require.Error(t, nw.RotateKeys(ctx, []byte("short")))
}

func TestLifecycleErrors(t *testing.T) {
	n, err := New(fastConfig("x", gossiptest.NewMemNetwork(1).NewTransport(), nil))
	require.NoError(t, err)
	_, err = n.Join(context.Background(), []string{"10.0.0.1:7946"})
	require.ErrorIs(t, err, ErrNotStarted)
	require.ErrorIs(t, n.RotateKeys(context.Background(), newKey(t)), ErrNotStarted)
	require.NoError(t, n.Start(context.Background()))
	require.ErrorIs(t, n.Start(context.Background()), ErrStarted)
	require.ErrorIs(t, n.RotateKeys(context.Background(), newKey(t)), ErrNoKeyring)
	require.NoError(t, n.Stop(context.Background()))
	require.ErrorIs(t, n.Start(context.Background()), ErrStopped)
	assert.Equal(t, []string{"x"}, n.Members())
}
