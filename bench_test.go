package shoal_test

import (
	"context"
	"testing"
	"time"

	"github.com/shoalhq/shoal"
	"github.com/shoalhq/shoal/shoaltest"
)

// BenchmarkEndToEnd1000Replicas100Workers measures, on one manager and 100
// workers in one process with the fake runtime, the time from CreateService
// of 1,000 replicas until all 1,000 tasks are RUNNING. The cluster is set up
// outside the timed region; each iteration creates and then removes a
// service.
func BenchmarkEndToEnd1000Replicas100Workers(b *testing.B) {
	c := shoaltest.Start(b, shoaltest.Options{Workers: 100, HeartbeatPeriod: time.Second, Timeout: 2 * time.Minute})
	cl := c.Client()
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		wctx, cancel := context.WithCancel(ctx)
		events, err := cl.Watch(wctx, shoal.WatchFilter{Kinds: []shoal.ObjectKind{shoal.KindTask}})
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		svc, err := cl.CreateService(ctx, shoal.ServiceSpec{Name: "bench", Replicas: 1000, Task: shoal.TaskSpec{Command: []string{"x"}}})
		if err != nil {
			b.Fatal(err)
		}
		running := map[string]bool{}
		for len(running) < 1000 {
			e, ok := <-events
			if !ok {
				b.Fatal("watch ended")
			}
			if e.Task.ServiceID == svc.ID && e.Task.Status.State == shoal.TaskRunning {
				running[e.Task.ID] = true
			}
		}
		b.ReportMetric(float64(time.Since(start).Milliseconds()), "ms-to-all-running")
		b.StopTimer()
		cancel()
		if err := cl.RemoveService(ctx, svc.ID); err != nil {
			b.Fatal(err)
		}
		c.WaitFor("bench tasks removed", func() bool { return len(c.Tasks(svc.ID)) == 0 })
		b.StartTimer()
	}
}
