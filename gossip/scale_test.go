package gossip

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoalhq/shoal/gossip/gossiptest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// convergeLarge runs members × perNode endpoints to convergence, then a round
// of small changes on every member (gossiped as deltas) to convergence again.
func convergeLarge(t *testing.T, members, perNode int, loss float64) {
	c := startClusterOn(t, gossiptest.NewMemNetwork(42), loss, members, newKey(t), nil)
	start := time.Now()
	var want []Endpoint
	for i, nd := range c.nodes {
		eps := makeEndpoints(nd.cfg.NodeID, i, perNode, 40)
		nd.SetLocal(eps)
		want = append(want, eps...)
	}
	want = sortedCopy(want)
	require.Eventually(t, func() bool { return converged(c.nodes, want) }, 60*time.Second, 200*time.Millisecond,
		"%d members never converged on %d endpoints", members, len(want))
	t.Logf("%d members, %d endpoints, loss %.0f%%: full table everywhere after %v", members, len(want), loss*100, time.Since(start))

	// Every member replaces one endpoint and withdraws another: small deltas.
	start = time.Now()
	want = want[:0]
	for i, nd := range c.nodes {
		eps := makeEndpoints(nd.cfg.NodeID, i, perNode, 40)
		eps[0].Addr = netip.AddrPortFrom(eps[0].Addr.Addr(), eps[0].Addr.Port()+5000)
		eps[1].Task += "-moved"
		eps = eps[:len(eps)-1]
		nd.SetLocal(eps)
		want = append(want, eps...)
	}
	want = sortedCopy(want)
	require.Eventually(t, func() bool { return converged(c.nodes, want) }, 60*time.Second, 200*time.Millisecond)
	st := c.net.Stats()
	t.Logf("after a change on every member: converged in %v; packets %d, dropped %d, largest %d bytes", time.Since(start), st.Packets, st.Dropped, st.MaxPacket)
	t.Log(c.statsLine())
	assert.LessOrEqual(t, st.MaxPacket, udpLimit)
}

// udpLimit is the largest UDP payload that fits one Ethernet frame without
// IP fragmentation (1500 - 20 - 8). memberlist aims at its UDPBufferSize of
// 1400 but its own accounting of piggybacked messages can overshoot by a few
// bytes; this package's deltas stay far below (maxDeltaPayload).
const udpLimit = 1472

func startClusterOn(t *testing.T, netw *gossiptest.MemNetwork, loss float64, n int, key []byte, mod func(*Config)) *cluster {
	netw.SetLoss(loss)
	return startClusterNet(t, netw, n, key, mod)
}

func TestConverge50Members10kEndpoints(t *testing.T) {
	members := 50
	if testing.Short() {
		members = 10
	}
	convergeLarge(t, members, 200, 0)
}

func TestConverge50Members10kEndpointsWith20PercentLoss(t *testing.T) {
	members := 50
	if testing.Short() {
		members = 10
	}
	convergeLarge(t, members, 200, 0.2)
}

// countHandler counts log records whose message contains a substring.
type countHandler struct {
	slog.Handler
	sub string
	n   *atomic.Int64
}

func (h countHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h countHandler) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, h.sub) {
		h.n.Add(1)
	}
	return nil
}
func (h countHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h countHandler) WithGroup(string) slog.Handler      { return h }

func TestNoGossipPacketExceedsLimit(t *testing.T) {
	var refused atomic.Int64
	lg := slog.New(countHandler{sub: "not gossiped", n: &refused})
	c := startCluster(t, 5, newKey(t), func(cfg *Config) {
		cfg.Logger = lg
		cfg.MaxDeltaChunks = 64 // force big changes through chunked gossip, not pulls
	})
	big := c.nodes[0]
	// A huge table: 10,000 endpoints on one node, with long IDs and IPv6.
	eps := makeEndpoints(big.cfg.NodeID, 0, 10000, 100)
	big.SetLocal(eps)
	want := sortedCopy(eps)
	require.Eventually(t, func() bool { return converged(c.nodes, want) }, 60*time.Second, 100*time.Millisecond)

	// Changes of every size from 1 to 300 endpoints, chunked into deltas.
	for _, k := range []int{1, 7, 40, 120, 300} {
		for i := range k {
			eps[i].Task = randomID(t) // incompressible, so packets are as big as they get
		}
		big.SetLocal(eps)
	}
	want = sortedCopy(eps)
	require.Eventually(t, func() bool { return converged(c.nodes, want) }, 60*time.Second, 100*time.Millisecond)

	st := c.net.Stats()
	t.Logf("packets %d, largest %d bytes (limit %d); %s", st.Packets, st.MaxPacket, udpLimit, c.statsLine())
	assert.LessOrEqual(t, st.MaxPacket, udpLimit)
	assert.Zero(t, refused.Load(), "serf refused a delta as too large")

	// And every delta message the encoder makes fits serf's event limit.
	msgs := big.deltaMessages(1, 1, eps[:500], []epKey{eps[600].key()})
	require.Greater(t, len(msgs), 1)
	for _, m := range msgs {
		assert.LessOrEqual(t, len(m)+len(eventName), maxDeltaPayload)
	}
}

func randomID(t testing.TB) string {
	return fmt.Sprintf("%x", newKey(t))[:40]
}
