package gossip

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/shoalhq/shoal/gossip/gossiptest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// publisher makes one endpoint change per call, on a rotating member, and
// keeps the table every member should converge to.
type publisher struct {
	c     *cluster
	round int
	cur   map[string]Endpoint
}

func newPublisher(c *cluster) *publisher { return &publisher{c: c, cur: map[string]Endpoint{}} }

// publish changes the endpoint of the member at index i (a new address each
// round) and returns the expected table.
func (p *publisher) publish(i int) []Endpoint {
	p.round++
	nd := p.c.nodes[i]
	e := ep(nd.cfg.NodeID, "web", "t-"+nd.cfg.NodeID, 80, fmt.Sprintf("10.0.%d.%d:%d", i, p.round, 30000+p.round))
	nd.SetLocal([]Endpoint{e})
	p.cur[nd.cfg.NodeID] = e
	return p.want()
}

func (p *publisher) want() []Endpoint {
	var out []Endpoint
	for _, e := range p.cur {
		out = append(out, e)
	}
	return sortedCopy(out)
}

func hasEndpoint(n *Node, e Endpoint) bool {
	return slices.Contains(n.Table(), e)
}

func TestSetKeysPhasedRotation(t *testing.T) {
	a, b := newKey(t), newKey(t)
	c := startCluster(t, 3, a, nil)
	pub := newPublisher(c)
	for i := range c.nodes {
		pub.publish(i)
	}
	require.Eventually(t, func() bool { return converged(c.nodes, pub.want()) }, 30*time.Second, 20*time.Millisecond)

	phases := [][][]byte{{a, b}, {b, a}, {b}}
	for pi, keys := range phases {
		for _, nd := range c.nodes {
			require.NoError(t, nd.SetKeys(keys), "phase %d on %s", pi, nd.cfg.NodeID)
			assert.Equal(t, keys, nd.Keys(), "phase %d on %s", pi, nd.cfg.NodeID)
		}
		// Gossip still spreads a change made after the phase, from a different
		// member each time.
		want := pub.publish(pi % len(c.nodes))
		require.Eventually(t, func() bool { return converged(c.nodes, want) }, 30*time.Second, 20*time.Millisecond,
			"phase %d: change did not reach every member; %s", pi, c.statsLine())
		// The table's own sealed streams follow the live keyring.
		for i, nd := range c.nodes {
			peer := c.trs[(i+1)%len(c.trs)].Addr()
			require.NoError(t, nd.syncWith(peer, nil), "phase %d: sync %s -> %s", pi, nd.cfg.NodeID, peer)
		}
		for _, nd := range c.nodes {
			assert.Len(t, nd.Members(), 3, "phase %d", pi)
		}
	}

	// Digests, sealed under the new primary, are still opened everywhere.
	before := make([]int64, len(c.nodes))
	for i, nd := range c.nodes {
		before[i] = nd.stats.digestsRecv.Load()
	}
	require.Eventually(t, func() bool {
		for i, nd := range c.nodes {
			if nd.stats.digestsRecv.Load() <= before[i] {
				return false
			}
		}
		return true
	}, 30*time.Second, 20*time.Millisecond, "digests sealed with the new key not received")

	// A newcomer holding only the retired key is refused, by serf and by the
	// table's streams.
	old, err := New(fastConfig("old", c.net.NewTransport(), a))
	require.NoError(t, err)
	require.NoError(t, old.Start(context.Background()))
	t.Cleanup(func() { _ = old.Kill() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = old.Join(ctx, []string{c.trs[0].Addr()})
	assert.Error(t, err)
	assert.Error(t, old.syncWith(c.trs[0].Addr(), nil))
}

func TestSetKeysStragglerCutOffThenBack(t *testing.T) {
	a, b := newKey(t), newKey(t)
	c := startCluster(t, 3, a, func(cfg *Config) {
		// Serf's reconnect is what brings the straggler back without a new
		// Join; make it quick for the test.
		cfg.ReconnectInterval = 500 * time.Millisecond
	})
	pub := newPublisher(c)
	for i := range c.nodes {
		pub.publish(i)
	}
	require.Eventually(t, func() bool { return converged(c.nodes, pub.want()) }, 30*time.Second, 20*time.Millisecond)

	movers, straggler := c.nodes[:2], c.nodes[2]
	for _, keys := range [][][]byte{{a, b}, {b, a}, {b}} {
		for _, nd := range movers {
			require.NoError(t, nd.SetKeys(keys))
		}
	}
	assert.Equal(t, [][]byte{a}, straggler.Keys())

	// The movers declare the straggler failed and drop its endpoint; their
	// changes keep flowing between them but no longer reach it.
	strEP := pub.cur[straggler.cfg.NodeID]
	delete(pub.cur, straggler.cfg.NodeID)
	require.Eventually(t, func() bool {
		for _, nd := range movers {
			if len(nd.Members()) != 2 {
				return false
			}
		}
		return true
	}, 30*time.Second, 20*time.Millisecond, "movers never declared the straggler failed")
	want := pub.publish(0)
	require.Eventually(t, func() bool { return converged(movers, want) }, 30*time.Second, 20*time.Millisecond)
	fresh := want[slices.IndexFunc(want, func(e Endpoint) bool { return e.Node == c.nodes[0].cfg.NodeID })]
	require.Never(t, func() bool { return hasEndpoint(straggler, fresh) }, time.Second, 50*time.Millisecond,
		"a member on the retired key must not receive updates")
	require.Error(t, straggler.syncWith(c.trs[0].Addr(), nil), "streams sealed with the retired key must be refused")

	// Given the new key, it finds the others again on its own and the table
	// converges, its own endpoint included.
	require.NoError(t, straggler.SetKeys([][]byte{b}))
	pub.cur[straggler.cfg.NodeID] = strEP
	want = pub.want()
	require.Eventually(t, func() bool { return converged(c.nodes, want) }, 60*time.Second, 50*time.Millisecond,
		"straggler never rejoined; %s", c.statsLine())
	c.waitMembers(3)
	// And gossip works both ways again.
	want = pub.publish(2)
	require.Eventually(t, func() bool { return converged(c.nodes, want) }, 30*time.Second, 20*time.Millisecond)
}

func TestSetKeysValidation(t *testing.T) {
	a, b := newKey(t), newKey(t)
	c := startCluster(t, 1, a, nil)
	n := c.nodes[0]
	for _, tc := range []struct {
		name string
		keys [][]byte
		msg  string
	}{
		{"nil", nil, "keys: must hold at least one key"},
		{"empty", [][]byte{}, "keys: must hold at least one key"},
		{"short primary", [][]byte{make([]byte, 16)}, "keys[0]: must be 32 bytes, got 16"},
		{"long second", [][]byte{a, make([]byte, 33)}, "keys[1]: must be 32 bytes, got 33"},
		{"empty key", [][]byte{b, a, {}}, "keys[2]: must be 32 bytes, got 0"},
		{"repeat", [][]byte{b, a, b}, "keys[2]: must not repeat keys[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := n.SetKeys(tc.keys)
			require.ErrorIs(t, err, ErrInvalidKeys)
			assert.Contains(t, err.Error(), tc.msg)
			assert.Equal(t, [][]byte{a}, n.Keys(), "nothing changes when validation fails")
		})
	}

	// The caller's slices are copied.
	keys := [][]byte{slices.Clone(b), slices.Clone(a)}
	require.NoError(t, n.SetKeys(keys))
	keys[0][0] ^= 0xff
	assert.Equal(t, [][]byte{b, a}, n.Keys())

	// Config validation applies the same rules.
	cfg := fastConfig("dup", gossiptest.NewMemNetwork(1).NewTransport(), a)
	cfg.Keys = [][]byte{a, a}
	_, err := New(cfg)
	require.ErrorIs(t, err, ErrInvalidConfig)
	assert.Contains(t, err.Error(), "Keys[1]: must not repeat keys[0]")
}

func TestSetKeysLifecycle(t *testing.T) {
	a, b := newKey(t), newKey(t)
	netw := gossiptest.NewMemNetwork(1)

	// Before Start: it replaces Config.Keys, even on a node configured
	// without keys, and Start uses them.
	n, err := New(fastConfig("n", netw.NewTransport(), nil))
	require.NoError(t, err)
	assert.Empty(t, n.Keys())
	require.NoError(t, n.SetKeys([][]byte{b, a}))
	assert.Equal(t, [][]byte{b, a}, n.Keys())
	require.NoError(t, n.Start(context.Background()))
	assert.Equal(t, [][]byte{b, a}, n.Keys())
	assert.Equal(t, b, n.keyring.GetPrimaryKey())
	require.NoError(t, n.Kill())
	require.ErrorIs(t, n.SetKeys([][]byte{a}), ErrStopped)

	// Started in clear text: encryption cannot be turned on live.
	clear, err := New(fastConfig("clear", netw.NewTransport(), nil))
	require.NoError(t, err)
	require.NoError(t, clear.Start(context.Background()))
	t.Cleanup(func() { _ = clear.Kill() })
	err = clear.SetKeys([][]byte{a})
	require.ErrorIs(t, err, ErrNoKeyring)
	assert.Contains(t, err.Error(), "AllowInsecure")
	assert.Empty(t, clear.Keys())
}

func TestSetKeysConcurrent(t *testing.T) {
	a, b := newKey(t), newKey(t)
	c := startCluster(t, 2, a, nil)
	for _, nd := range c.nodes {
		require.NoError(t, nd.SetKeys([][]byte{a, b}))
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				nd := c.nodes[(g+i)%2]
				if (g+i)%2 == 0 {
					assert.NoError(t, nd.SetKeys([][]byte{a, b}))
				} else {
					assert.NoError(t, nd.SetKeys([][]byte{b, a}))
				}
				ks := nd.Keys()
				assert.Len(t, ks, 2)
				nd.SetLocal([]Endpoint{{Service: "s", Task: fmt.Sprint(g, i), Port: 1, Protocol: "tcp",
					Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(g), byte(i)}), 1)}})
			}
		}()
	}
	wg.Wait()
	// Both keys stay installed everywhere, so the members still agree.
	for _, nd := range c.nodes {
		require.NoError(t, nd.SetKeys([][]byte{b, a}))
	}
	e := ep(c.nodes[1].cfg.NodeID, "web", "final", 80, "10.1.1.1:80")
	c.nodes[1].SetLocal([]Endpoint{e})
	require.Eventually(t, func() bool { return hasEndpoint(c.nodes[0], e) }, 30*time.Second, 20*time.Millisecond)
}
