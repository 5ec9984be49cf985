package shoal_test

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoalhq/shoal"
	"github.com/shoalhq/shoal/shoaltest"
)

// startTCPManagers starts n managers on 127.0.0.1 with real TCP and the
// default Raft timing (fsync on), and returns them leader first.
func startTCPManagers(tb testing.TB, n int) []*shoal.Node {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := tb.TempDir()
	cfg := func(i int) shoal.Config {
		return shoal.Config{StateDir: fmt.Sprintf("%s/m%d", dir, i), ListenAddr: "127.0.0.1:0", DisableAgent: true,
			Hostname: fmt.Sprintf("m%d", i)}
	}
	first, err := shoal.Init(ctx, cfg(1))
	if err != nil {
		tb.Fatal(err)
	}
	nodes := []*shoal.Node{first}
	tb.Cleanup(func() {
		for _, m := range nodes {
			_ = m.Stop(context.Background())
		}
	})
	info, err := first.Client().Cluster(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	for i := 2; i <= n; i++ {
		m, err := shoal.Join(ctx, cfg(i), first.Addr(), info.ManagerToken)
		if err != nil {
			tb.Fatal(err)
		}
		nodes = append(nodes, m)
	}
	for {
		v, l, err := first.RaftMembers(ctx)
		if err == nil && v == n && l == 0 {
			break
		}
		if ctx.Err() != nil {
			tb.Fatal("managers did not all become voters")
		}
		time.Sleep(10 * time.Millisecond)
	}
	sort.SliceStable(nodes, func(i, j int) bool { return nodes[i].IsLeader() && !nodes[j].IsLeader() })
	return nodes
}

// BenchmarkThreeManagerWrites measures committed writes per second through a
// 3-manager cluster on loopback with fsync on: each write is a CreateService
// (0 replicas, so no tasks follow) through the public client of the leader,
// with 1, 16 and 256 concurrent writers; it reports p50 and p99 latency.
func BenchmarkThreeManagerWrites(b *testing.B) {
	for _, writers := range []int{1, 16, 256} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			nodes := startTCPManagers(b, 3)
			c := nodes[0].Client()
			ctx := context.Background()
			var next atomic.Int64
			lat := make([][]time.Duration, writers)
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
						t0 := time.Now()
						_, err := c.CreateService(ctx, shoal.ServiceSpec{Name: fmt.Sprintf("s%d", i), Replicas: 0,
							Task: shoal.TaskSpec{Command: []string{"x"}}})
						if err != nil {
							b.Error(err)
							return
						}
						lat[w] = append(lat[w], time.Since(t0))
					}
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			var all []time.Duration
			for _, l := range lat {
				all = append(all, l...)
			}
			sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
			if len(all) > 0 {
				b.ReportMetric(float64(len(all))/elapsed.Seconds(), "writes/s")
				b.ReportMetric(float64(all[len(all)/2].Microseconds())/1000, "p50-ms")
				b.ReportMetric(float64(all[len(all)*99/100].Microseconds())/1000, "p99-ms")
			}
		})
	}
}

// BenchmarkFailover measures, on 3 managers with the default Raft timing
// (100 ms ticks, elections after 10 ticks), the time from the leader's
// failure (it is cut off from every node, then stopped, like a machine that
// died) to the first write committed through a surviving manager. It reports
// the median over b.N runs (run it with -benchtime=20x for the issue's
// figure).
func BenchmarkFailover(b *testing.B) {
	var times []time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		c := shoaltest.Start(b, shoaltest.Options{Managers: 3, Configure: func(_ string, cfg *shoal.Config) {
			cfg.Raft = shoal.RaftConfig{} // the defaults
		}})
		leader := c.Leader()
		var survivor *shoaltest.Node
		for _, m := range c.Managers() {
			if m != leader {
				survivor = m
				break
			}
		}
		cl := survivor.Shoal().Client()
		b.StartTimer()
		t0 := time.Now()
		crashed := make(chan error, 1)
		go func() { crashed <- leader.Crash() }()
		for n := 0; ; n++ {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, err := cl.CreateService(ctx, shoal.ServiceSpec{Name: fmt.Sprintf("after%d", n), Task: shoal.TaskSpec{Command: []string{"x"}}})
			cancel()
			if err == nil {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		times = append(times, time.Since(t0))
		b.StopTimer()
		<-crashed
		c.Stop()
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	b.ReportMetric(float64(times[len(times)/2].Milliseconds()), "median-ms")
	b.ReportMetric(float64(times[len(times)-1].Milliseconds()), "max-ms")
}

// BenchmarkJoinManager100kTasks measures the time to bring a new manager
// into a cluster whose state holds 100,000 tasks (a service of 100,000
// replicas with no worker to run them), from Join until it votes. The log is
// compacted first, so the new manager receives the state as a snapshot sent
// in chunks.
func BenchmarkJoinManager100kTasks(b *testing.B) {
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		c := shoaltest.Start(b, shoaltest.Options{Managers: 1, Timeout: 5 * time.Minute, Configure: func(_ string, cfg *shoal.Config) {
			cfg.Raft.SnapshotInterval = 1000
		}})
		ctx := context.Background()
		svc, err := c.Client().CreateService(ctx, shoal.ServiceSpec{Name: "big", Replicas: 100000, Task: shoal.TaskSpec{Command: []string{"x"}}})
		if err != nil {
			b.Fatal(err)
		}
		c.WaitFor("100,000 tasks", func() bool { return len(c.Tasks(svc.ID)) == 100000 })
		b.StartTimer()
		t0 := time.Now()
		m, err := c.AddManager()
		if err != nil {
			b.Fatal(err)
		}
		c.WaitFor("the new manager votes", func() bool {
			v, l, err := c.Leader().Shoal().RaftMembers(ctx)
			return err == nil && v == 2 && l == 0
		})
		b.ReportMetric(float64(time.Since(t0).Milliseconds()), "ms-to-voter")
		b.StopTimer()
		ts, err := m.Shoal().Client().ListTasks(ctx, shoal.TaskFilter{Service: svc.ID})
		if err != nil || len(ts) != 100000 {
			b.Fatalf("new manager has %d tasks (%v)", len(ts), err)
		}
		c.Stop()
	}
}
