package state_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/state"
	"github.com/shoalhq/shoal/raftstore"
)

// BenchmarkCommittedWrites measures committed single-object writes per second
// through a store on a single-member raftstore log with fsync on, with 1 and
// 64 concurrent writers.
func BenchmarkCommittedWrites(b *testing.B) {
	for _, writers := range []int{1, 64} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			st := state.New(state.Config{})
			cfg := raftstore.DefaultConfig()
			cfg.ID = 1
			cfg.Dir = b.TempDir()
			cfg.StateMachine = st
			cfg.TickInterval = 10 * time.Millisecond
			rn, err := raftstore.New(cfg)
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			if err := rn.Start(ctx); err != nil {
				b.Fatal(err)
			}
			defer rn.Stop(ctx)
			<-rn.Ready()
			st.SetLog(rn)
			var next atomic.Int64
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for w := 0; w < writers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						i := next.Add(1)
						if i > int64(b.N) {
							return
						}
						id := fmt.Sprintf("t%d", i)
						err := st.Update(ctx, func(tx state.WriteTx) error {
							return tx.CreateTask(&api.Task{Id: id, ServiceId: "s", Status: &api.TaskStatus{}})
						})
						if err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "writes/s")
		})
	}
}
