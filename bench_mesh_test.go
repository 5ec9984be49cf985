package shoal_test

import (
	"slices"
	"testing"
	"time"

	"github.com/shoalhq/shoal"
	"github.com/shoalhq/shoal/shoaltest"
)

// BenchmarkMeshNodeDeath measures, in a cluster running the default
// configuration (the gossip's default failure detection, the default 5 s
// heartbeat), the time from a node's death until its endpoints have left
// every other node's table, and so every balancer. Each iteration crashes
// a worker (cut off from the network and the gossip first, so it cannot say
// goodbye), waits for the tables, then restarts it and waits until its
// endpoints are back. The gossip runs on shoaltest's in-memory network: the
// same protocol and timers as over UDP, with loopback-like latency.
//
// Target: under 5 s (SwarmKit's managers need about 15 s of missed
// heartbeats). Reported: p50-ms and max-ms over the iterations.
//
//	go test -run '^$' -bench MeshNodeDeath -benchtime 10x .
func BenchmarkMeshNodeDeath(b *testing.B) {
	const replicas = 8
	c, _ := meshCluster(b, shoaltest.Options{Managers: 1, Workers: 4,
		HeartbeatPeriod: 5 * time.Second, // the default
		Timeout:         time.Minute,
		Configure: func(_ string, cfg *shoal.Config) {
			cfg.Mesh.Gossip = nil // the gossip's defaults, not shoaltest's fast probes
		},
	})
	startPublished(b, c, "web", replicas, shoal.PortConfig{Target: 80}, askTCP)

	tablesFull := func() bool {
		for _, n := range c.Nodes() {
			if s := n.Shoal(); s == nil || len(s.MeshEndpoints()) != replicas {
				return false
			}
		}
		return true
	}

	var took []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		workers := c.Workers()
		victim := workers[i%len(workers)]
		if !inSomeTable(c, victim) {
			b.Fatalf("%s runs no task of the service", victim.Name)
		}
		start := time.Now()
		if err := victim.Crash(); err != nil {
			b.Fatal(err)
		}
		for inSomeTable(c, victim) {
			if time.Since(start) > time.Minute {
				b.Fatalf("%s's endpoints still in a table after a minute", victim.Name)
			}
			time.Sleep(10 * time.Millisecond)
		}
		took = append(took, time.Since(start))

		b.StopTimer()
		if err := victim.Restart(); err != nil {
			b.Fatal(err)
		}
		c.WaitFor("every table full again", tablesFull)
		b.StartTimer()
	}
	b.StopTimer()
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)/2].Milliseconds()), "p50-ms")
	b.ReportMetric(float64(took[len(took)-1].Milliseconds()), "max-ms")
}
