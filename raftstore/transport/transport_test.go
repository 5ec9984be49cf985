package transport

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
)

func TestConfigValidation(t *testing.T) {
	cases := []struct {
		field  string
		mutate func(*Config)
	}{
		{"ID", func(c *Config) { c.ID = 0 }},
		{"ID", func(c *Config) { c.ID = ^uint64(0) }},
		{"QueueSize", func(c *Config) { c.QueueSize = 0 }},
		{"BatchSize", func(c *Config) { c.BatchSize = -1 }},
		{"MaxBatchBytes", func(c *Config) { c.MaxBatchBytes = 0 }},
		{"ChunkSize", func(c *Config) { c.ChunkSize = 0 }},
		{"ChunkSize", func(c *Config) { c.ChunkSize = MaxMessageBytes }},
		{"MaxBatchBytes", func(c *Config) { c.MaxBatchBytes = MaxMessageBytes }},
		{"MaxSnapshotSize", func(c *Config) { c.MaxSnapshotSize = 0 }},
		{"SnapshotTimeout", func(c *Config) { c.SnapshotTimeout = 0 }},
		{"MinBackoff", func(c *Config) { c.MinBackoff = 0 }},
		{"MaxBackoff", func(c *Config) { c.MaxBackoff = c.MinBackoff / 2 }},
		{"DialOptions", func(c *Config) { c.DialOptions = []grpc.DialOption{nil} }},
		// No credentials at all: New refuses to fall back to plain text.
		{"Credentials", func(c *Config) { c.Insecure = false }},
		{"Credentials", func(c *Config) {
			c.Insecure = false
			c.DialOptions = []grpc.DialOption{grpc.WithUserAgent("x")}
		}},
		{"Insecure", func(c *Config) { c.Credentials = insecure.NewCredentials() }},
	}
	for _, tc := range cases {
		cfg := testConfig(1)
		tc.mutate(&cfg)
		before := cfg
		_, err := New(cfg)
		require.Error(t, err, tc.field)
		assert.Contains(t, err.Error(), tc.field)
		assert.Equal(t, before.QueueSize, cfg.QueueSize, "New must not mutate the caller's config")
	}
	_, err := New(testConfig(1))
	require.NoError(t, err)

	// Credentials, or transport credentials in DialOptions, without Insecure.
	creds := credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13})
	cfg := testConfig(1)
	cfg.Insecure, cfg.Credentials = false, creds
	_, err = New(cfg)
	require.NoError(t, err)
	cfg = testConfig(1)
	cfg.Insecure, cfg.DialOptions = false, []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	_, err = New(cfg)
	require.NoError(t, err)
}

// With Credentials, peers talk mutual TLS: messages and a chunked snapshot arrive, and a
// plain-text peer gets nothing through.
func TestMutualTLS(t *testing.T) {
	serverTLS, clientTLS := testTLS(t)
	start := func(id uint64, creds credentials.TransportCredentials) (*member, *fakeLocal) {
		cfg := testConfig(id)
		cfg.Insecure, cfg.Credentials = creds == nil, creds
		m := startMemberWith(t, cfg, grpc.Creds(credentials.NewTLS(serverTLS)))
		l := newFakeLocal()
		m.tr.SetLocal(l)
		return m, l
	}
	a, la := start(1, credentials.NewTLS(clientTLS))
	b, lb := start(2, credentials.NewTLS(clientTLS))
	require.NoError(t, a.tr.AddPeer(2, b.addr))
	a.tr.Send([]*pb.Message{msg(pb.MsgHeartbeat, 1, 2, 0), snapMsg(1, 2, 7, randomBytes(t, 3<<20))})
	require.Eventually(t, func() bool { return len(lb.steps()) == 2 }, waitFor, tick)
	require.Eventually(t, func() bool { return len(la.snapshotReports(2)) == 1 }, waitFor, tick)
	assert.Equal(t, []bool{true}, la.snapshotReports(2))

	plain, lp := start(3, nil)
	require.NoError(t, plain.tr.AddPeer(2, b.addr))
	require.Eventually(t, func() bool {
		plain.tr.Send([]*pb.Message{msg(pb.MsgHeartbeat, 3, 2, 0)})
		return lp.unreachableCount(2) > 0
	}, waitFor, tick)
	assert.Len(t, lb.steps(), 2, "nothing arrives over plain text")
}

func TestLifecycle(t *testing.T) {
	tr, err := New(testConfig(1))
	require.NoError(t, err)
	ctx := context.Background()
	// Stop before Start: the transport never starts.
	require.NoError(t, tr.Stop(ctx))
	require.NoError(t, tr.Stop(ctx), "Stop is idempotent")
	require.ErrorIs(t, tr.Start(ctx), ErrStopped)
	require.ErrorIs(t, tr.AddPeer(2, "x:1"), ErrStopped)

	tr, err = New(testConfig(1))
	require.NoError(t, err)
	require.NoError(t, tr.AddPeer(2, "127.0.0.1:1"))
	require.NoError(t, tr.Start(ctx))
	require.Error(t, tr.Start(ctx), "Start twice")
	require.NoError(t, tr.Stop(ctx))
	require.NoError(t, tr.Stop(ctx))
	// Send after Stop drops, reporting a snapshot as failed.
	l := newFakeLocal()
	tr.SetLocal(l)
	tr.Send([]*pb.Message{msg(pb.MsgSnap, 1, 2, 1)})
	assert.Equal(t, []bool{false}, l.snapshotReports(2))
}

func TestPeerTable(t *testing.T) {
	tr, err := New(testConfig(1))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, tr.Stop(context.Background())) })
	require.Error(t, tr.AddPeer(0, "a:1"))
	require.Error(t, tr.AddPeer(1, "a:1"), "own ID")
	require.Error(t, tr.AddPeer(2, ""))
	require.NoError(t, tr.AddPeer(2, "a:1"))
	require.NoError(t, tr.AddPeer(2, "a:1"), "AddPeer is idempotent")
	require.NoError(t, tr.AddPeer(3, "b:1"))
	require.NoError(t, tr.UpdatePeer(3, "c:1"))
	require.ErrorIs(t, tr.UpdatePeer(4, "d:1"), ErrUnknownPeer)
	assert.Equal(t, map[uint64]string{2: "a:1", 3: "c:1"}, tr.Peers())
	require.NoError(t, tr.Start(context.Background()))
	require.NoError(t, tr.AddPeer(4, "d:1"))
	require.NoError(t, tr.RemovePeer(2))
	require.ErrorIs(t, tr.RemovePeer(2), ErrUnknownPeer)
	assert.Equal(t, map[uint64]string{3: "c:1", 4: "d:1"}, tr.Peers())
}

// pair starts members 1 and 2 with fake locals; 1 knows 2's address.
func pair(t *testing.T, mutate2 func(*Config)) (a, b *member, la, lb *fakeLocal) {
	t.Helper()
	cfg2 := testConfig(2)
	if mutate2 != nil {
		mutate2(&cfg2)
	}
	b = startMember(t, cfg2)
	a = startMember(t, testConfig(1))
	la, lb = newFakeLocal(), newFakeLocal()
	a.tr.SetLocal(la)
	b.tr.SetLocal(lb)
	require.NoError(t, a.tr.AddPeer(2, b.addr))
	return a, b, la, lb
}

func TestMessagesDeliveredInOrder(t *testing.T) {
	a, b, la, lb := pair(t, nil)
	const n = 1000
	for i := range n {
		// Mixed single sends and multi-message sends.
		m := msg(pb.MsgApp, 1, 2, uint64(i))
		m.Entries = []*pb.Entry{{Data: bytes.Repeat([]byte{byte(i)}, i%200)}}
		a.tr.Send([]*pb.Message{m})
	}
	require.Eventually(t, func() bool { return len(lb.steps()) == n }, waitFor, tick)
	for i, m := range lb.steps() {
		require.Equal(t, uint64(i), m.GetIndex())
		require.Len(t, m.GetEntries()[0].GetData(), i%200)
	}
	st := a.tr.Stats()
	assert.Equal(t, uint64(n), st.MessagesSent)
	assert.LessOrEqual(t, st.BatchesSent, st.MessagesSent)
	assert.Zero(t, st.Dropped)
	assert.Equal(t, uint64(n), b.tr.Stats().MessagesReceived)
	assert.Zero(t, la.unreachableCount(2))
}

func TestUnknownPeerReported(t *testing.T) {
	a := startMember(t, testConfig(1))
	l := newFakeLocal()
	a.tr.SetLocal(l)
	a.tr.Send([]*pb.Message{msg(pb.MsgApp, 1, 9, 1), msg(pb.MsgHeartbeat, 1, 9, 0), msg(pb.MsgSnap, 1, 9, 5)})
	assert.Equal(t, 1, l.unreachableCount(9), "one report per peer and Send")
	assert.Equal(t, []bool{false}, l.snapshotReports(9))
	assert.Equal(t, uint64(3), a.tr.Stats().Dropped)
}

// A peer that accepts connections and never answers must not block Send or delay the others.
func TestHungPeerDoesNotBlockOthers(t *testing.T) {
	hole := newBlackhole(t)
	cfg := testConfig(1)
	cfg.QueueSize = 32
	b := startMember(t, testConfig(2))
	a := startMember(t, cfg)
	la, lb := newFakeLocal(), newFakeLocal()
	a.tr.SetLocal(la)
	b.tr.SetLocal(lb)
	require.NoError(t, a.tr.AddPeer(2, b.addr))
	require.NoError(t, a.tr.AddPeer(3, hole.addr()))

	// Rounds of: a flood to the hung peer (far beyond its queue), then a few messages to the
	// healthy one, which must all arrive while the hung peer's queue stays full.
	const rounds, flood, few = 20, 100, 10
	done := make(chan struct{})
	go func() {
		defer close(done)
		for r := range rounds {
			for i := range flood {
				a.tr.Send([]*pb.Message{msg(pb.MsgApp, 1, 3, uint64(r*flood+i))})
			}
			for i := range few {
				a.tr.Send([]*pb.Message{msg(pb.MsgApp, 1, 2, uint64(r*few+i))})
			}
			if !assert.Eventually(t, func() bool { return len(lb.steps()) == (r+1)*few }, waitFor, tick) {
				return
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(2 * waitFor):
		t.Fatal("Send blocked on a hung peer")
	}
	assert.Len(t, lb.steps(), rounds*few, "the healthy peer receives everything")
	assert.Positive(t, la.unreachableCount(3), "full queue reported")
	assert.Zero(t, la.unreachableCount(2))
	assert.GreaterOrEqual(t, a.tr.Stats().Dropped, uint64(rounds*flood-cfg.QueueSize-2*cfg.BatchSize))
}

// A peer that goes away is reported unreachable; once it is back (here at a new address) the
// sender reconnects by itself.
func TestReconnectAfterPeerRestart(t *testing.T) {
	a, b, la, lb := pair(t, nil)
	a.tr.Send([]*pb.Message{msg(pb.MsgHeartbeat, 1, 2, 0)})
	require.Eventually(t, func() bool { return len(lb.steps()) == 1 }, waitFor, tick)

	b.stop(t)
	// Keep sending until the broken stream is noticed.
	require.Eventually(t, func() bool {
		a.tr.Send([]*pb.Message{msg(pb.MsgHeartbeat, 1, 2, 0)})
		return la.unreachableCount(2) > 0
	}, waitFor, tick)

	b2 := startMember(t, testConfig(2))
	lb2 := newFakeLocal()
	b2.tr.SetLocal(lb2)
	require.NoError(t, a.tr.UpdatePeer(2, b2.addr))
	require.Eventually(t, func() bool {
		a.tr.Send([]*pb.Message{msg(pb.MsgHeartbeat, 1, 2, 0)})
		return len(lb2.steps()) > 0
	}, waitFor, tick)
	assert.Positive(t, a.tr.Stats().StreamFailures)
}

// A member whose raft node stopped fails the stream; the sender reports it unreachable.
func TestStoppedLocalFailsStream(t *testing.T) {
	a, _, la, lb := pair(t, nil)
	lb.mu.Lock()
	lb.stepErr = errors.New("node stopped")
	lb.mu.Unlock()
	require.Eventually(t, func() bool {
		a.tr.Send([]*pb.Message{msg(pb.MsgHeartbeat, 1, 2, 0)})
		return la.unreachableCount(2) > 0
	}, waitFor, tick)
}

func TestNoLocalDropsThenDelivers(t *testing.T) {
	a, b, _, lb := pair(t, nil)
	b.tr.SetLocal(nil)
	a.tr.Send([]*pb.Message{msg(pb.MsgHeartbeat, 1, 2, 0)})
	require.Eventually(t, func() bool { return a.tr.Stats().MessagesSent == 1 }, waitFor, tick)
	b.tr.SetLocal(lb)
	require.Eventually(t, func() bool {
		a.tr.Send([]*pb.Message{msg(pb.MsgHeartbeat, 1, 2, 0)})
		return len(lb.steps()) > 0
	}, waitFor, tick)
}

func TestMessageForOtherMemberDropped(t *testing.T) {
	b := startMember(t, testConfig(3))
	lb := newFakeLocal()
	b.tr.SetLocal(lb)
	a := startMember(t, testConfig(1))
	a.tr.SetLocal(newFakeLocal())
	require.NoError(t, a.tr.AddPeer(2, b.addr)) // stale table: 2's old address now serves 3
	for range 10 {
		a.tr.Send([]*pb.Message{msg(pb.MsgHeartbeat, 1, 2, 0)})
	}
	// A message for 3 on the same stream proves the earlier ones were processed (in order).
	require.NoError(t, a.tr.AddPeer(3, b.addr))
	a.tr.Send([]*pb.Message{msg(pb.MsgHeartbeat, 1, 3, 0)})
	require.Eventually(t, func() bool { return len(lb.steps()) == 1 }, waitFor, tick)
	assert.Equal(t, uint64(3), lb.steps()[0].GetTo())
}

func TestFilterDropAndDelay(t *testing.T) {
	var calls atomic.Int64
	b := startMember(t, testConfig(2))
	lb := newFakeLocal()
	b.tr.SetLocal(lb)
	cfg := testConfig(1)
	cfg.Filter = func(to uint64, m *pb.Message) (bool, time.Duration) {
		calls.Add(1)
		switch {
		case m.GetType() == pb.MsgHeartbeat:
			return true, 0
		case m.GetIndex() == 7:
			return false, time.Hour // still pending at Stop: must not leak
		case m.GetIndex() == 8:
			return false, 10 * time.Millisecond
		case m.GetType() == pb.MsgSnap:
			return true, 0
		}
		return false, 0
	}
	a := startMember(t, cfg)
	la := newFakeLocal()
	a.tr.SetLocal(la)
	require.NoError(t, a.tr.AddPeer(2, b.addr))

	a.tr.Send([]*pb.Message{
		msg(pb.MsgHeartbeat, 1, 2, 0), msg(pb.MsgApp, 1, 2, 7), msg(pb.MsgApp, 1, 2, 8),
		msg(pb.MsgApp, 1, 2, 9), msg(pb.MsgSnap, 1, 2, 10),
	})
	require.Eventually(t, func() bool { return len(lb.steps()) == 2 }, waitFor, tick)
	var got []uint64
	for _, m := range lb.steps() {
		got = append(got, m.GetIndex())
	}
	assert.ElementsMatch(t, []uint64{8, 9}, got)
	assert.Equal(t, []bool{false}, la.snapshotReports(2), "a dropped snapshot is reported failed")
	st := a.tr.Stats()
	assert.Equal(t, uint64(2), st.Filtered)
	assert.Equal(t, uint64(2), st.Delayed)
	assert.Equal(t, int64(5), calls.Load())
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return b
}

func snapMsg(from, to, index uint64, data []byte) *pb.Message {
	m := msg(pb.MsgSnap, from, to, 0)
	m.Snapshot = &pb.Snapshot{
		Data: data,
		Metadata: &pb.SnapshotMetadata{
			Index: new(index), Term: new(uint64(3)),
			ConfState: &pb.ConfState{Voters: []uint64{1, 2, 3}},
		},
	}
	return m
}

// A snapshot far above gRPC's 4 MiB message limit arrives whole, in chunks.
func TestSnapshotInChunks(t *testing.T) {
	a, b, la, lb := pair(t, nil)
	data := randomBytes(t, 9<<20+12345)
	m := snapMsg(1, 2, 42, data)
	orig := proto.Clone(m)
	a.tr.Send([]*pb.Message{m})
	require.Eventually(t, func() bool { return len(la.snapshotReports(2)) == 1 }, waitFor, tick)
	assert.Equal(t, []bool{true}, la.snapshotReports(2))
	steps := lb.steps()
	require.Len(t, steps, 1)
	assert.True(t, proto.Equal(orig, steps[0]), "received snapshot equals the sent one")
	assert.True(t, proto.Equal(orig, m), "Send must not modify the message")
	assert.Equal(t, uint64(1), b.tr.Stats().SnapshotsReceived)
	assert.Equal(t, uint64(1), a.tr.Stats().SnapshotsSent)

	// An empty snapshot works too.
	a.tr.Send([]*pb.Message{snapMsg(1, 2, 43, nil)})
	require.Eventually(t, func() bool { return len(la.snapshotReports(2)) == 2 }, waitFor, tick)
	assert.Equal(t, []bool{true, true}, la.snapshotReports(2))
}

func TestSnapshotTooLargeRefused(t *testing.T) {
	a, _, la, lb := pair(t, func(c *Config) { c.MaxSnapshotSize = 1 << 20 })
	a.tr.Send([]*pb.Message{snapMsg(1, 2, 42, randomBytes(t, 2<<20))})
	require.Eventually(t, func() bool { return len(la.snapshotReports(2)) == 1 }, waitFor, tick)
	assert.Equal(t, []bool{false}, la.snapshotReports(2))
	assert.Empty(t, lb.steps())
	assert.Equal(t, uint64(1), a.tr.Stats().SnapshotsFailed)
}

func TestOneSnapshotAtATimePerPeer(t *testing.T) {
	a, _, la, lb := pair(t, nil)
	gate, entered := make(chan struct{}), make(chan struct{}, 1)
	lb.mu.Lock()
	lb.stepGate, lb.entered = gate, entered
	lb.mu.Unlock()

	a.tr.Send([]*pb.Message{snapMsg(1, 2, 42, randomBytes(t, 3<<20))})
	select {
	case <-entered:
	case <-time.After(waitFor):
		t.Fatal("snapshot never reached the receiver")
	}
	a.tr.Send([]*pb.Message{snapMsg(1, 2, 43, []byte("second"))})
	assert.Equal(t, []bool{false}, la.snapshotReports(2), "second snapshot refused at once")
	close(gate)
	require.Eventually(t, func() bool { return len(la.snapshotReports(2)) == 2 }, waitFor, tick)
	assert.Equal(t, []bool{false, true}, la.snapshotReports(2))
	require.Len(t, lb.steps(), 1)
	assert.Equal(t, uint64(42), lb.steps()[0].GetSnapshot().GetMetadata().GetIndex())
}

// Stopping the transport cancels a snapshot in flight and reports it failed.
func TestStopCancelsSnapshot(t *testing.T) {
	a, _, la, lb := pair(t, nil)
	gate, entered := make(chan struct{}), make(chan struct{}, 1)
	defer close(gate)
	lb.mu.Lock()
	lb.stepGate, lb.entered = gate, entered
	lb.mu.Unlock()
	a.tr.Send([]*pb.Message{snapMsg(1, 2, 42, []byte("data"))})
	<-entered
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, a.tr.Stop(ctx))
	assert.Equal(t, []bool{false}, la.snapshotReports(2))
}

func TestWithoutSnapshotData(t *testing.T) {
	m := snapMsg(1, 2, 42, []byte("payload"))
	m.Commit = new(uint64(9))
	m.Context = []byte("ctx")
	out := withoutSnapshotData(m)
	assert.Equal(t, []byte("payload"), m.GetSnapshot().GetData(), "original untouched")
	assert.Nil(t, out.GetSnapshot().GetData())
	m2 := proto.Clone(m).(*pb.Message)
	m2.Snapshot.Data = nil
	assert.True(t, proto.Equal(m2, out))
}

// Config.Dial is used for every connection: a dialer that refuses makes the peer unreachable,
// and the sender gets through again once it accepts.
func TestCustomDialer(t *testing.T) {
	var cut atomic.Bool
	var dials atomic.Int64
	b := startMember(t, testConfig(2))
	lb := newFakeLocal()
	b.tr.SetLocal(lb)
	cfg := testConfig(1)
	cfg.Dial = func(ctx context.Context, addr string) (net.Conn, error) {
		dials.Add(1)
		if cut.Load() {
			return nil, errors.New("link cut")
		}
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
	a := startMember(t, cfg)
	la := newFakeLocal()
	a.tr.SetLocal(la)
	cut.Store(true)
	require.NoError(t, a.tr.AddPeer(2, b.addr))
	require.Eventually(t, func() bool {
		a.tr.Send([]*pb.Message{msg(pb.MsgHeartbeat, 1, 2, 0)})
		return la.unreachableCount(2) > 0
	}, waitFor, tick)
	assert.Empty(t, lb.steps())
	cut.Store(false)
	require.Eventually(t, func() bool {
		a.tr.Send([]*pb.Message{msg(pb.MsgHeartbeat, 1, 2, 0)})
		return len(lb.steps()) > 0
	}, waitFor, tick)
	assert.GreaterOrEqual(t, dials.Load(), int64(2))
}

// A snapshot whose stream to one peer stalls mid-way (a slow link to a lagging member) must
// not hold back messages to the other peers: a leader would otherwise lose its quorum while it
// catches a member up. The snapshot has its own goroutine and stream, and every peer its own
// queue, sender and connection, so nothing the stalled send holds is shared.
func TestStalledSnapshotDoesNotDelayOtherPeers(t *testing.T) {
	b := startMember(t, testConfig(2))
	c := startMember(t, testConfig(3))
	lb, lc := newFakeLocal(), newFakeLocal()
	b.tr.SetLocal(lb)
	c.tr.SetLocal(lc)
	link := &stallLink{hit: make(chan struct{}), release: make(chan struct{})}
	cfg := testConfig(1)
	cfg.Dial = func(ctx context.Context, addr string) (net.Conn, error) {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil || addr != b.addr {
			return conn, err
		}
		return &stallConn{Conn: conn, link: link, closed: make(chan struct{})}, nil
	}
	a := startMember(t, cfg)
	la := newFakeLocal()
	a.tr.SetLocal(la)
	require.NoError(t, a.tr.AddPeer(2, b.addr))
	require.NoError(t, a.tr.AddPeer(3, c.addr))
	a.tr.Send([]*pb.Message{msg(pb.MsgHeartbeat, 1, 2, 0), msg(pb.MsgHeartbeat, 1, 3, 0)})
	require.Eventually(t, func() bool { return len(lb.steps()) == 1 && len(lc.steps()) == 1 }, waitFor, tick)

	// The link to b passes 256 KiB more, then stalls: the snapshot is in flight, stuck.
	link.arm(256 << 10)
	a.tr.Send([]*pb.Message{snapMsg(1, 2, 42, randomBytes(t, 4<<20))})
	select {
	case <-link.hit:
	case <-time.After(waitFor):
		t.Fatal("the snapshot never reached the stalled link")
	}
	const rounds = 50
	for i := range rounds {
		a.tr.Send([]*pb.Message{msg(pb.MsgHeartbeat, 1, 3, uint64(i)), msg(pb.MsgHeartbeat, 1, 2, uint64(i))})
		require.Eventually(t, func() bool { return len(lc.steps()) == i+2 }, waitFor, time.Millisecond,
			"heartbeat %d to the healthy peer held back by a stalled snapshot to another", i)
	}
	assert.Empty(t, la.snapshotReports(2), "the snapshot was in flight throughout")
	assert.Zero(t, la.unreachableCount(3))

	close(link.release)
	require.Eventually(t, func() bool { return len(la.snapshotReports(2)) == 1 }, waitFor, tick)
	assert.Equal(t, []bool{true}, la.snapshotReports(2), "the stalled snapshot completes once the link moves")
}

// stallLink is a link that, once armed, passes a budget of bytes and then blocks every write
// until released (or its connection is closed).
type stallLink struct {
	mu      sync.Mutex
	armed   bool
	budget  int
	hit     chan struct{} // closed at the first blocked write
	hitOnce sync.Once
	release chan struct{}
}

func (l *stallLink) arm(budget int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.armed, l.budget = true, budget
}

// allow returns how many of n bytes may be written now (0: the link is stalled).
func (l *stallLink) allow(n int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.armed {
		return n
	}
	k := min(n, l.budget)
	l.budget -= k
	return k
}

type stallConn struct {
	net.Conn
	link      *stallLink
	closed    chan struct{}
	closeOnce sync.Once
}

func (s *stallConn) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		k := s.link.allow(len(p))
		if k == 0 {
			s.link.hitOnce.Do(func() { close(s.link.hit) })
			select {
			case <-s.link.release:
				s.link.mu.Lock()
				s.link.armed = false
				s.link.mu.Unlock()
				continue
			case <-s.closed:
				return written, net.ErrClosed
			}
		}
		n, err := s.Conn.Write(p[:k])
		written += n
		if err != nil {
			return written, err
		}
		p = p[k:]
	}
	return written, nil
}

func (s *stallConn) Close() error {
	s.closeOnce.Do(func() { close(s.closed) })
	return s.Conn.Close()
}
