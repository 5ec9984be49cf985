package transport

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	pb "go.etcd.io/raft/v3/raftpb"

	"github.com/shoalhq/shoal/internal/clock/clocktest"
)

// After a stream failure the sender waits out its back-off on Config.Clock: it tries again
// only once the clock has moved by MinBackoff, however long the wall clock runs.
func TestReconnectBackoffFollowsClock(t *testing.T) {
	fake := clocktest.NewFake()
	cfg := testConfig(1)
	cfg.Clock = fake
	a := startMember(t, cfg)
	la := newFakeLocal()
	a.tr.SetLocal(la)
	require.NoError(t, a.tr.AddPeer(2, deadAddr(t)))

	a.tr.Send([]*pb.Message{msg(pb.MsgHeartbeat, 1, 2, 0)})
	require.Eventually(t, func() bool { return a.tr.Stats().StreamFailures == 1 }, waitFor, tick)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.True(t, fake.WaitTimers(ctx, 1), "the sender waits on the clock")
	a.tr.Send([]*pb.Message{msg(pb.MsgHeartbeat, 1, 2, 0)})
	time.Sleep(10 * cfg.MinBackoff) // wall-clock time that must not count
	assert.Equal(t, uint64(1), a.tr.Stats().StreamFailures, "no retry before the clock moved")

	fake.Advance(cfg.MinBackoff)
	require.Eventually(t, func() bool { return a.tr.Stats().StreamFailures == 2 }, waitFor, tick,
		"the queued message is tried once the back-off has passed on the clock")
}

// SnapshotTimeout runs on Config.Clock: a snapshot stuck on a stalled link fails once the
// clock passes the timeout, and is reported failed.
func TestSnapshotTimeoutFollowsClock(t *testing.T) {
	fake := clocktest.NewFake()
	b := startMember(t, testConfig(2))
	b.tr.SetLocal(newFakeLocal())
	link := &stallLink{hit: make(chan struct{}), release: make(chan struct{})}
	defer close(link.release)
	link.arm(64 << 10)
	cfg := testConfig(1)
	cfg.Clock = fake
	cfg.Dial = func(ctx context.Context, addr string) (net.Conn, error) {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		return &stallConn{Conn: conn, link: link, closed: make(chan struct{})}, nil
	}
	a := startMember(t, cfg)
	la := newFakeLocal()
	a.tr.SetLocal(la)
	require.NoError(t, a.tr.AddPeer(2, b.addr))

	a.tr.Send([]*pb.Message{snapMsg(1, 2, 42, randomBytes(t, 1<<20))})
	select {
	case <-link.hit:
	case <-time.After(waitFor):
		t.Fatal("the snapshot never reached the stalled link")
	}
	fake.Advance(cfg.SnapshotTimeout - time.Second)
	time.Sleep(50 * time.Millisecond)
	assert.Empty(t, la.snapshotReports(2), "still in flight before the timeout")
	fake.Advance(time.Second)
	require.Eventually(t, func() bool { return len(la.snapshotReports(2)) == 1 }, waitFor, tick)
	assert.Equal(t, []bool{false}, la.snapshotReports(2))
}
