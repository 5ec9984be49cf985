package orchestrator

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/state"
	"github.com/shoalhq/shoal/internal/state/statetest"
)

// BenchmarkCreateReplicas measures how long it takes from creating a
// 1000-replica service to all 1000 tasks being in the store.
func BenchmarkCreateReplicas(b *testing.B) {
	for _, replicas := range []uint64{1000, 10000} {
		b.Run(fmt.Sprintf("replicas=%d", replicas), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				store := statetest.NewStore(state.Config{})
				cfg := DefaultConfig()
				cfg.Clock = newFakeClock()
				o, err := New(store, cfg)
				if err != nil {
					b.Fatal(err)
				}
				if err := o.Start(context.Background()); err != nil {
					b.Fatal(err)
				}
				<-o.Ready()
				done := make(chan struct{})
				var n uint64
				w := store.Watch(state.KindIs(state.KindTask))
				go func() {
					defer close(done)
					for ev := range w.C {
						if ev.Action == state.ActionCreate {
							if n++; n == replicas {
								return
							}
						}
					}
				}()
				b.StartTimer()
				err = store.Update(context.Background(), func(tx state.WriteTx) error {
					return tx.CreateService(&api.Service{Id: "svc", SpecVersion: 1, Spec: replicatedSpec("web", replicas)})
				})
				if err != nil {
					b.Fatal(err)
				}
				select {
				case <-done:
				case <-time.After(time.Minute):
					b.Fatal("tasks not created")
				}
				b.StopTimer()
				w.Cancel()
				if err := o.Stop(context.Background()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
