package transport

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoalhq/shoal/raftstore"
)

// sumSM folds every entry into a running hash: constant-size state, so the benchmark measures
// the consensus layer, not a growing state machine.
type sumSM struct {
	mu    sync.Mutex
	sum   [32]byte
	count uint64
}

func (s *sumSM) Apply(_ uint64, data []byte) any {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := sha256.New()
	h.Write(s.sum[:])
	h.Write(data)
	h.Sum(s.sum[:0])
	s.count++
	return nil
}

func (s *sumSM) Snapshot() ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return binary.BigEndian.AppendUint64(append([]byte(nil), s.sum[:]...), s.count), nil
}

func (s *sumSM) Restore(_ uint64, data []byte) error {
	if len(data) != 40 {
		return errors.New("sumSM: bad snapshot")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	copy(s.sum[:], data)
	s.count = binary.BigEndian.Uint64(data[32:])
	return nil
}

// BenchmarkConsensus measures committed writes per second through three raftstore members with
// durable storage (bbolt, fsync on, in the test's temporary directory) connected by this
// transport over real gRPC/TCP on 127.0.0.1. Concurrent proposers each propose 128-byte
// entries on the leader and wait until each is committed and applied there. It reports
// writes/s and the p50 and p99 latency of one proposal. Run with -benchtime=20000x.
func BenchmarkConsensus(b *testing.B) {
	for _, writers := range []int{1, 16, 256} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) { benchConsensus(b, writers) })
	}
}

func benchConsensus(b *testing.B, writers int) {
	ids := []uint64{1, 2, 3}
	members := map[uint64]*member{}
	for _, id := range ids {
		members[id] = startMember(b, testConfig(id))
	}
	for _, a := range ids {
		for _, o := range ids {
			if a != o {
				if err := members[a].tr.AddPeer(o, members[o].addr); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	nodes := map[uint64]*raftstore.Node{}
	for _, id := range ids {
		cfg := raftstore.DefaultConfig()
		cfg.ID, cfg.Dir, cfg.StateMachine = id, b.TempDir(), &sumSM{}
		cfg.Transport, cfg.Peers = members[id].tr, ids
		n, err := raftstore.New(cfg)
		if err != nil {
			b.Fatal(err)
		}
		members[id].tr.SetLocal(n)
		if err := n.Start(context.Background()); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			members[id].tr.SetLocal(nil)
			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			if err := n.Stop(ctx); err != nil {
				b.Error(err)
			}
		})
		nodes[id] = n
	}
	var lead *raftstore.Node
	deadline := time.Now().Add(waitFor)
	for lead == nil {
		for _, n := range nodes {
			if n.IsLeader() {
				lead = n
			}
		}
		if time.Now().After(deadline) {
			b.Fatal("no leader")
		}
		time.Sleep(10 * time.Millisecond)
	}
	<-lead.Ready()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var next atomic.Int64
	lat := make([][]time.Duration, writers)
	errc := make(chan error, writers)
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for w := range writers {
		wg.Go(func() {
			payload := make([]byte, 128)
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				binary.BigEndian.PutUint64(payload, uint64(i))
				t0 := time.Now()
				if _, err := lead.Propose(ctx, payload); err != nil {
					errc <- err
					return
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	close(errc)
	for err := range errc {
		b.Fatal(err)
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	pct := func(p float64) float64 {
		return float64(all[min(len(all)-1, int(p*float64(len(all))))]) / float64(time.Millisecond)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "writes/s")
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}
