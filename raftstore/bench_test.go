package raftstore

import (
	"context"
	"sync"
	"testing"
)

// BenchmarkPropose measures committed-and-applied writes per second on a single member with
// fsync on, for 1 and 64 concurrent proposers. With 64, proposals queued during one fsync share
// the next one, which the "proposals/fsync" metric shows.
func BenchmarkPropose(b *testing.B) {
	for _, proposers := range []int{1, 64} {
		b.Run(map[int]string{1: "proposers=1", 64: "proposers=64"}[proposers], func(b *testing.B) {
			cfg := testConfig(b, b.TempDir(), &chainSM{})
			n := startNode(b, cfg)
			payload := make([]byte, 128)
			ctx := context.Background()
			before := n.Stats()
			b.ResetTimer()
			var wg sync.WaitGroup
			var next sync.Mutex
			remaining := b.N
			for range proposers {
				wg.Go(func() {
					for {
						next.Lock()
						if remaining == 0 {
							next.Unlock()
							return
						}
						remaining--
						next.Unlock()
						if _, err := n.Propose(ctx, payload); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			after := n.Stats()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "writes/s")
			if c := after.Fsyncs - before.Fsyncs; c > 0 {
				b.ReportMetric(float64(after.Proposals-before.Proposals)/float64(c), "proposals/fsync")
			}
		})
	}
}

// BenchmarkReadBarrier measures linearizable reads per second on a follower of a 3-member
// in-memory cluster, for 1 and 64 concurrent readers. Concurrent barriers share ReadIndex
// rounds ("barriers/round").
func BenchmarkReadBarrier(b *testing.B) {
	for _, readers := range []int{1, 64} {
		b.Run(map[int]string{1: "readers=1", 64: "readers=64"}[readers], func(b *testing.B) {
			c := newCluster(b, 3, nil)
			f := c.follower(c.leader())
			<-f.Ready()
			ctx := context.Background()
			before := f.Stats()
			b.ResetTimer()
			var wg sync.WaitGroup
			var next sync.Mutex
			remaining := b.N
			for range readers {
				wg.Go(func() {
					for {
						next.Lock()
						if remaining == 0 {
							next.Unlock()
							return
						}
						remaining--
						next.Unlock()
						if _, err := f.ReadBarrier(ctx); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			after := f.Stats()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "reads/s")
			if r := after.ReadRounds - before.ReadRounds; r > 0 {
				b.ReportMetric(float64(after.ReadBarriers-before.ReadBarriers)/float64(r), "barriers/round")
			}
		})
	}
}
