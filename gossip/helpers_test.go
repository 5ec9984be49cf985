package gossip

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/shoalhq/shoal/gossip/gossiptest"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// memberlist does not wait for an in-flight probe when it shuts down; the
	// probe ends on its own within ProbeInterval times the awareness
	// multiplier (a few seconds under load). Likewise serf's name-conflict
	// query (TestRestartOutranksPreviousIncarnation provokes one) waits for
	// its answers until the query times out, whatever Shutdown does.
	// Everything else must be gone.
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("github.com/hashicorp/memberlist.(*Memberlist).probeNode"),
		goleak.IgnoreAnyFunction("github.com/hashicorp/serf/serf.(*Serf).resolveNodeConflict"))
}

// fastConfig is tuned for in-process clusters: quick gossip and repair, but
// failure detection loose enough not to flap on a loaded 2-core machine.
func fastConfig(id string, tr *gossiptest.MemTransport, key []byte) Config {
	cfg := DefaultConfig()
	cfg.NodeID = id
	cfg.Transport = tr
	if key == nil {
		cfg.AllowInsecure = true
	} else {
		cfg.Keys = [][]byte{key}
	}
	cfg.GossipInterval = 100 * time.Millisecond
	cfg.PushPullInterval = 2 * time.Second
	cfg.PullDelay = 300 * time.Millisecond
	return cfg
}

func newKey(t testing.TB) []byte {
	k := make([]byte, KeySize)
	_, err := rand.Read(k)
	require.NoError(t, err)
	return k
}

type cluster struct {
	t     testing.TB
	net   *gossiptest.MemNetwork
	nodes []*Node
	trs   []*gossiptest.MemTransport
}

// startCluster starts n members on a fresh gossiptest.MemNetwork and joins them all
// through the first; cleanup kills them (no leave, to keep tests quick).
func startCluster(t testing.TB, n int, key []byte, mod func(*Config)) *cluster {
	return startClusterNet(t, gossiptest.NewMemNetwork(1), n, key, mod)
}

func startClusterNet(t testing.TB, netw *gossiptest.MemNetwork, n int, key []byte, mod func(*Config)) *cluster {
	t.Helper()
	c := &cluster{t: t, net: netw}
	for i := range n {
		tr := c.net.NewTransport()
		cfg := fastConfig(fmt.Sprintf("node-%03d", i), tr, key)
		if mod != nil {
			mod(&cfg)
		}
		nd, err := New(cfg)
		require.NoError(t, err)
		require.NoError(t, nd.Start(context.Background()))
		c.nodes = append(c.nodes, nd)
		c.trs = append(c.trs, tr)
	}
	t.Cleanup(c.killAll)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, n)
	sem := make(chan struct{}, 16) // memberlist refuses over 128 concurrent push-pulls
	for i := 1; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			_, errs[i] = c.nodes[i].Join(ctx, []string{c.trs[0].Addr()})
		}()
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	c.waitMembers(n)
	return c
}

func (c *cluster) killAll() {
	var wg sync.WaitGroup
	for _, nd := range c.nodes {
		wg.Add(1)
		go func() { defer wg.Done(); _ = nd.Kill() }()
	}
	wg.Wait()
}

func (c *cluster) waitMembers(n int) {
	c.t.Helper()
	require.Eventually(c.t, func() bool {
		for _, nd := range c.nodes {
			if nd.serfOrNil() != nil && len(nd.Members()) != n {
				return false
			}
		}
		return true
	}, 60*time.Second, 50*time.Millisecond, "members never saw %d members", n)
}

// converged reports whether every running node holds exactly want.
func converged(nodes []*Node, want []Endpoint) bool {
	for _, nd := range nodes {
		if nd.tbl.size() != len(want) {
			return false
		}
	}
	for _, nd := range nodes {
		if !slices.Equal(nd.Table(), want) {
			return false
		}
	}
	return true
}

// makeEndpoints returns count endpoints for node i, sorted like Table.
func makeEndpoints(node string, i, count int, svcs int) []Endpoint {
	eps := make([]Endpoint, 0, count)
	for j := range count {
		eps = append(eps, Endpoint{
			Service:  fmt.Sprintf("svc%022d", j%svcs),
			Task:     fmt.Sprintf("%s-task%015d", node, j),
			Node:     node,
			Port:     uint32(30000 + j%svcs),
			Protocol: []string{"tcp", "udp"}[j%2],
			Addr:     netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1}), uint16(20000+j)),
		})
	}
	return eps
}

func sortedCopy(eps []Endpoint) []Endpoint {
	out := append([]Endpoint(nil), eps...)
	sortEndpoints(out)
	return out
}

func (c *cluster) statsLine() string {
	var d, a, p, pe, s, dr int64
	for _, nd := range c.nodes {
		d += nd.stats.deltas.Load()
		a += nd.stats.announces.Load()
		p += nd.stats.pulls.Load()
		pe += nd.stats.pullErrs.Load()
		s += nd.stats.syncs.Load()
		dr += nd.stats.drops.Load()
	}
	return fmt.Sprintf("deltas received %d, announces %d, pulls %d (failed %d), anti-entropy syncs %d, member drops %d", d, a, p, pe, s, dr)
}
