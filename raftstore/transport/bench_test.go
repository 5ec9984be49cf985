package transport

import (
	"context"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/raft/v3/raftpb"
)

// countLocal counts stepped messages and nothing else.
type countLocal struct{ n atomic.Int64 }

func (c *countLocal) Step(context.Context, *pb.Message) error { c.n.Add(1); return nil }
func (c *countLocal) ReportUnreachable(uint64)                {}
func (c *countLocal) ReportSnapshot(uint64, bool)             {}
func (c *countLocal) Propose(context.Context, []byte) (any, error) {
	return nil, nil
}

// BenchmarkMessages measures raft messages per second from one member to another over a real
// loopback gRPC connection: MsgApp messages with one 128-byte entry each.
func BenchmarkMessages(b *testing.B) {
	cfg := testConfig(2)
	dst := startMember(b, cfg)
	src := startMember(b, testConfig(1))
	recv := &countLocal{}
	dst.tr.SetLocal(recv)
	src.tr.SetLocal(&countLocal{})
	if err := src.tr.AddPeer(2, dst.addr); err != nil {
		b.Fatal(err)
	}
	m := msg(pb.MsgApp, 1, 2, 1)
	m.Entries = []*pb.Entry{{Data: make([]byte, 128)}}
	batch := []*pb.Message{m}
	window := int64(cfg.QueueSize / 2)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := range int64(b.N) {
		for i-recv.n.Load() >= window { // stay under the queue size: measure throughput, not drops
			runtime.Gosched()
		}
		src.tr.Send(batch)
	}
	for recv.n.Load() < int64(b.N) {
		if src.tr.Stats().Dropped > 0 {
			b.Fatal("messages dropped")
		}
		runtime.Gosched()
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
}
