package gossip

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// benchPropagation measures how long one endpoint change takes to reach
// every member: p50 and p99 over b.N changes, each from a random member.
func benchPropagation(b *testing.B, members int) {
	c := startCluster(b, members, newKey(b), func(cfg *Config) {
		d := DefaultConfig()
		cfg.GossipInterval, cfg.PushPullInterval, cfg.PullDelay = d.GossipInterval, d.PushPullInterval, d.PullDelay
	})
	var lat []time.Duration
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		src := c.nodes[i%members]
		e := Endpoint{Service: "svc", Task: fmt.Sprintf("t%d", i), Port: 80, Protocol: "tcp",
			Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, 1}), uint16(1000+i%60000))}
		start := time.Now()
		src.SetLocal([]Endpoint{e})
		e.Node = src.cfg.NodeID
		require.Eventually(b, func() bool {
			for _, nd := range c.nodes {
				if !slices.Contains(nd.Table(), e) {
					return false
				}
			}
			return true
		}, 30*time.Second, 5*time.Millisecond)
		lat = append(lat, time.Since(start))
		src.SetLocal(nil) // withdraw, so each change starts from an empty table
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "p50-ms")
	b.ReportMetric(float64(lat[(len(lat)*99)/100].Milliseconds()), "p99-ms")
}

func BenchmarkPropagation10(b *testing.B)  { benchPropagation(b, 10) }
func BenchmarkPropagation50(b *testing.B)  { benchPropagation(b, 50) }
func BenchmarkPropagation200(b *testing.B) { benchPropagation(b, 200) }

// BenchmarkDeathToRemoval measures, with the default configuration, the time
// from a member's network going dead (no leave) to its endpoints leaving the
// table on every other member.
func BenchmarkDeathToRemoval(b *testing.B) {
	const members = 10
	c := startCluster(b, members, newKey(b), func(cfg *Config) {
		d := DefaultConfig()
		d.NodeID, d.Transport, d.Keys = cfg.NodeID, cfg.Transport, cfg.Keys
		*cfg = d
	})
	var lat []time.Duration
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		victim := 1 + i%(members-1)
		vn := c.nodes[victim]
		e := Endpoint{Service: "svc", Task: fmt.Sprintf("t%d", i), Port: 80, Protocol: "tcp",
			Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, 1}), 1000)}
		vn.SetLocal([]Endpoint{e})
		e.Node = vn.cfg.NodeID
		has := func(nd *Node) bool { return slices.Contains(nd.Table(), e) }
		require.Eventually(b, func() bool {
			for _, nd := range c.nodes {
				if !has(nd) {
					return false
				}
			}
			return true
		}, 30*time.Second, 5*time.Millisecond)

		start := time.Now()
		c.net.Isolate(c.trs[victim].Addr(), true)
		require.Eventually(b, func() bool {
			for j, nd := range c.nodes {
				if j != victim && has(nd) {
					return false
				}
			}
			return true
		}, 60*time.Second, 5*time.Millisecond)
		lat = append(lat, time.Since(start))
		// Heal and wait until the cluster is whole again.
		c.net.Isolate(c.trs[victim].Addr(), false)
		vn.SetLocal(nil)
		_, err := vn.Join(b.Context(), []string{c.trs[0].Addr()})
		require.NoError(b, err)
		c.waitMembers(members)
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "p50-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Milliseconds()), "max-ms")
}
