package raftstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// encoderGate controls the snapshot encoders of a SnapshotCapturer test state machine. While
// holding, every encoder captured waits for a token on release (or for release to be closed)
// before encoding; started receives a tag for every encoder that starts running.
type encoderGate struct {
	mu      sync.Mutex
	hold    bool
	fail    error
	release chan struct{}
	closed  sync.Once
	started chan uint64

	captures atomic.Int64
}

// newEncoderGate returns a gate, holding encoders or not. Callers register its releaseAll as a
// cleanup after starting the node, so it runs before the node's Stop (cleanups run last-in
// first-out): a held encoder must not keep Stop waiting.
func newEncoderGate(hold bool) *encoderGate {
	return &encoderGate{hold: hold, release: make(chan struct{}), started: make(chan uint64, 1024)}
}

// setHold sets whether encoders captured from now on are held. It forgets the start of
// encoders captured before, so waitStarted sees only later ones.
func (g *encoderGate) setHold(hold bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.hold = hold
	for {
		select {
		case <-g.started:
			continue
		default:
		}
		return
	}
}

func (g *encoderGate) setFail(err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.fail = err
}

// releaseOne lets one held encoder through.
func (g *encoderGate) releaseOne(t testing.TB) {
	t.Helper()
	select {
	case g.release <- struct{}{}:
	case <-time.After(waitFor):
		t.Fatal("no held encoder to release")
	}
}

// releaseAll lets every held encoder, present and future, through.
func (g *encoderGate) releaseAll() { g.closed.Do(func() { close(g.release) }) }

// waitStarted returns the tag of the next encoder that starts.
func (g *encoderGate) waitStarted(t testing.TB) uint64 {
	t.Helper()
	select {
	case tag := <-g.started:
		return tag
	case <-time.After(waitFor):
		t.Fatal("no snapshot encoder started")
		return 0
	}
}

// encoder wraps enc, the encoder of a state captured now, according to the gate's settings
// at capture time.
func (g *encoderGate) encoder(tag uint64, enc func() ([]byte, error)) func() ([]byte, error) {
	g.captures.Add(1)
	g.mu.Lock()
	hold, fail := g.hold, g.fail
	g.mu.Unlock()
	return func() ([]byte, error) {
		g.started <- tag
		if hold {
			<-g.release
		}
		if fail != nil {
			return nil, fail
		}
		return enc()
	}
}

// asyncListSM is listSM with background snapshots. The capture is a slice header over the
// append-only item list (items are never modified once applied; Restore replaces the list),
// so it is O(1) however large the state.
type asyncListSM struct {
	*listSM
	gate *encoderGate
}

var _ SnapshotCapturer = (*asyncListSM)(nil)

func (s *asyncListSM) CaptureSnapshot() func() ([]byte, error) {
	s.mu.Lock()
	items, last := s.items[:len(s.items):len(s.items)], s.lastIdx
	s.mu.Unlock()
	return s.gate.encoder(last, func() ([]byte, error) { return encodeList(last, items), nil })
}

// asyncChainSM is chainSM with background snapshots; it also records the index of every
// snapshot restored.
type asyncChainSM struct {
	*chainSM
	gate *encoderGate

	rmu      sync.Mutex
	restored []uint64
}

var _ SnapshotCapturer = (*asyncChainSM)(nil)

func (s *asyncChainSM) CaptureSnapshot() func() ([]byte, error) {
	sum, count := s.state()
	return s.gate.encoder(count, func() ([]byte, error) {
		return append(sum[:], byte(count>>56), byte(count>>48), byte(count>>40), byte(count>>32),
			byte(count>>24), byte(count>>16), byte(count>>8), byte(count)), nil
	})
}

func (s *asyncChainSM) Restore(idx uint64, data []byte) error {
	s.rmu.Lock()
	s.restored = append(s.restored, idx)
	s.rmu.Unlock()
	return s.chainSM.Restore(idx, data)
}

func (s *asyncChainSM) restoredAt() []uint64 {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	return append([]uint64(nil), s.restored...)
}

// snapIndexOf returns the index of n's latest snapshot, read on its loop.
func snapIndexOf(t testing.TB, n *Node) uint64 {
	t.Helper()
	var idx uint64
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, n.do(ctx, func() { idx = n.snapIndex }))
	return idx
}

// While a background snapshot encoder is blocked, the loop keeps committing and applying
// proposals and starts no second encoder; once released, the snapshot lands at the index it
// was captured at, durably, and compacts the log.
func TestAsyncSnapshotDoesNotBlockTheLoop(t *testing.T) {
	dir := t.TempDir()
	gate := newEncoderGate(true)
	sm := &asyncListSM{listSM: &listSM{}, gate: gate}
	cfg := testConfig(t, dir, sm)
	cfg.SnapshotInterval = 50
	cfg.SnapshotCatchUpEntries = 10
	cfg.UnsafeNoFsync = true
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	n := startNode(t, cfg)
	t.Cleanup(gate.releaseAll)

	proposeN(t, n, 60, payloadOf)
	captured := gate.waitStarted(t)
	require.GreaterOrEqual(t, captured, uint64(50))

	// The property: with the encoder stuck, writes still commit and apply.
	proposeConcurrently(t, n, 8, 400, func(i int) []byte { return payloadOf(1000 + i) })
	assert.Equal(t, 460, sm.len())
	assert.Equal(t, uint64(0), n.Stats().Snapshots, "nothing lands while encoding")
	assert.Equal(t, int64(1), gate.captures.Load(), "at most one encoder at a time")
	assert.Zero(t, snapIndexOf(t, n))
	appliedBefore := n.AppliedIndex()

	gate.releaseOne(t)
	require.Eventually(t, func() bool { return n.Stats().Snapshots == 1 }, waitFor, 5*time.Millisecond)
	assert.Equal(t, captured, snapIndexOf(t, n), "the snapshot is at the captured index, not the applied one")
	assert.Greater(t, appliedBefore, captured)
	st := n.Stats()
	assert.Positive(t, st.SnapshotEncodeTime)
	assert.Zero(t, st.SnapshotFailures)
	metrics := gather(t, reg)
	assert.Equal(t, 1.0, metrics["shoal_raft_snapshots_total"])
	assert.Contains(t, metrics, "shoal_raft_snapshot_encode_seconds_total")

	// The next one is due at once (applied - captured > interval), and held in turn.
	second := gate.waitStarted(t)
	assert.GreaterOrEqual(t, second, appliedBefore)
	gate.releaseAll()
	require.Eventually(t, func() bool { return n.Stats().Snapshots == 2 }, waitFor, 5*time.Millisecond)
	assert.Equal(t, second, snapIndexOf(t, n))
	want, applied := sm.hash(), n.AppliedIndex()
	stopNode(t, n)

	// On disk: the snapshot at the second captured index, and the log compacted behind it.
	first, last, _ := diskEntries(t, dir)
	assert.Equal(t, applied, last)
	assert.Equal(t, second-cfg.SnapshotCatchUpEntries+1, first)
	sm2 := &listSM{}
	startNode(t, testConfig(t, dir, sm2))
	require.Equal(t, []uint64{second}, sm2.restores, "restart restores the background snapshot")
	assert.Equal(t, want, sm2.hash())
	require.NoError(t, sm2.checkErr())
}

// Stop with an encoder blocked waits for it (bounded by ctx) and returns once it is released;
// no goroutine is left behind (TestMain's goleak check).
func TestAsyncSnapshotStopWaitsForEncoder(t *testing.T) {
	gate := newEncoderGate(true)
	sm := &asyncListSM{listSM: &listSM{}, gate: gate}
	cfg := testConfig(t, t.TempDir(), sm)
	cfg.SnapshotInterval = 20
	cfg.UnsafeNoFsync = true
	n, err := New(cfg)
	require.NoError(t, err)
	require.NoError(t, n.Start(context.Background()))
	t.Cleanup(gate.releaseAll)
	<-n.Ready()
	proposeN(t, n, 25, payloadOf)
	gate.waitStarted(t)

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, n.Stop(ctx), context.DeadlineExceeded, "Stop waits for the encoder")
	select {
	case <-n.Done():
		t.Fatal("Done closed while the encoder still runs")
	default:
	}
	_, err = n.Propose(context.Background(), []byte("late"))
	require.ErrorIs(t, err, ErrStopped, "the loop itself has stopped")

	gate.releaseOne(t)
	require.NoError(t, n.Stop(context.Background()))
	require.NoError(t, n.Err())
	assert.Zero(t, n.Stats().Snapshots, "a result arriving after Stop is dropped")
}

// A failing encoder is logged and counted, the node keeps running, and the snapshot is retried
// at the next due point.
func TestAsyncSnapshotEncoderFailureIsRetried(t *testing.T) {
	dir := t.TempDir()
	gate := newEncoderGate(false)
	gate.setFail(errors.New("disk full"))
	sm := &asyncListSM{listSM: &listSM{}, gate: gate}
	cfg := testConfig(t, dir, sm)
	cfg.SnapshotInterval = 30
	cfg.SnapshotCatchUpEntries = 5
	cfg.UnsafeNoFsync = true
	n := startNode(t, cfg)
	t.Cleanup(gate.releaseAll)

	proposeN(t, n, 35, payloadOf)
	failedAt := gate.waitStarted(t)
	require.Eventually(t, func() bool { return n.Stats().SnapshotFailures == 1 }, waitFor, 5*time.Millisecond)
	// Not retried before another SnapshotInterval entries have been applied.
	proposeN(t, n, 10, func(i int) []byte { return payloadOf(100 + i) })
	assert.Equal(t, int64(1), gate.captures.Load())
	assert.Zero(t, n.Stats().Snapshots)

	gate.setFail(nil)
	proposeN(t, n, 30, func(i int) []byte { return payloadOf(200 + i) })
	retriedAt := gate.waitStarted(t)
	assert.GreaterOrEqual(t, retriedAt, failedAt+cfg.SnapshotInterval)
	require.Eventually(t, func() bool { return n.Stats().Snapshots == 1 }, waitFor, 5*time.Millisecond)
	assert.Equal(t, retriedAt, snapIndexOf(t, n))
	assert.Equal(t, uint64(1), n.Stats().SnapshotFailures)
	_, err := n.Propose(context.Background(), []byte("still running"))
	require.NoError(t, err)
}

// A panicking encoder counts as a failed one; it does not take the process down.
func TestAsyncSnapshotEncoderPanicIsAFailure(t *testing.T) {
	sm := &panicSM{listSM: &listSM{}}
	cfg := testConfig(t, t.TempDir(), sm)
	cfg.SnapshotInterval = 10
	cfg.UnsafeNoFsync = true
	n := startNode(t, cfg)
	proposeN(t, n, 15, payloadOf)
	require.Eventually(t, func() bool { return n.Stats().SnapshotFailures == 1 }, waitFor, 5*time.Millisecond)
	_, err := n.Propose(context.Background(), []byte("still running"))
	require.NoError(t, err)
}

type panicSM struct{ *listSM }

func (*panicSM) CaptureSnapshot() func() ([]byte, error) {
	return func() ([]byte, error) { panic("encoder bug") }
}

// asyncCluster is a cluster of asyncChainSM members, one gate each.
func asyncCluster(t *testing.T, size int, forward bool, tune func(*Config)) (*cluster, map[uint64]*asyncChainSM) {
	sms := map[uint64]*asyncChainSM{}
	var mu sync.Mutex
	c := newClusterWrapped(t, size, forward, tune, func(id uint64, sm *chainSM) StateMachine {
		a := &asyncChainSM{chainSM: sm, gate: newEncoderGate(false)}
		mu.Lock()
		sms[id] = a
		mu.Unlock()
		return a
	})
	t.Cleanup(func() {
		for _, a := range sms {
			a.gate.releaseAll()
		}
	})
	return c, sms
}

// A follower far behind is caught up by the snapshot that the leader encoded in the
// background, at the index it was captured at; the leader kept committing meanwhile.
func TestAsyncSnapshotCatchesUpLaggingFollower(t *testing.T) {
	c, sms := asyncCluster(t, 3, false, func(cfg *Config) {
		cfg.SnapshotInterval = 50
		cfg.SnapshotCatchUpEntries = 10
	})
	lead := c.leader()
	lagger := c.follower(lead)
	proposeN(t, lead, 5, payloadOf)
	c.converged()
	c.net.isolate(lagger.ID(), true)

	g := sms[lead.ID()].gate
	g.setHold(true)
	proposeN(t, lead, 60, func(i int) []byte { return payloadOf(100 + i) })
	g.waitStarted(t)
	// Committing goes on with the leader's encoder stuck.
	proposeConcurrently(t, lead, 8, 200, func(i int) []byte { return payloadOf(1000 + i) })
	assert.Zero(t, lead.Stats().Snapshots)

	g.releaseOne(t) // the next capture (due at once) stays held
	require.Eventually(t, func() bool { return lead.Stats().Snapshots == 1 }, waitFor, 5*time.Millisecond)
	snapAt := snapIndexOf(t, lead)
	assert.Less(t, snapAt, lead.AppliedIndex()-cfg(c).SnapshotInterval, "captured well before it landed")
	st, err := lead.Status(context.Background())
	require.NoError(t, err)
	require.Less(t, st.Progress[lagger.ID()].Match, snapAt-10, "the lagger needs entries compacted away")

	c.net.isolate(lagger.ID(), false)
	c.converged()
	assert.Equal(t, []uint64{snapAt}, sms[lagger.ID()].restoredAt(), "caught up by that snapshot")
	_, count := c.sms[lagger.ID()].state()
	assert.Equal(t, uint64(265), count)
}

// cfg returns the tuned Config the cluster's members use.
func cfg(c *cluster) Config {
	cfg := DefaultConfig()
	if c.tune != nil {
		c.tune(&cfg)
	}
	return cfg
}

// A follower whose encoder is running when it receives (and applies) a newer snapshot from the
// leader discards the encoder's result when it comes back.
func TestAsyncSnapshotDiscardedAfterReceivedSnapshot(t *testing.T) {
	c, sms := asyncCluster(t, 3, false, func(cfg *Config) {
		cfg.SnapshotInterval = 50
		cfg.SnapshotCatchUpEntries = 10
	})
	lead := c.leader()
	f := c.follower(lead)
	fg := sms[f.ID()].gate
	fg.setHold(true)
	proposeN(t, lead, 60, payloadOf)
	fg.waitStarted(t) // the follower captured, and its encoder is stuck
	c.net.isolate(f.ID(), true)
	proposeN(t, lead, 200, func(i int) []byte { return payloadOf(100 + i) })
	require.Eventually(t, func() bool { return lead.Stats().Snapshots >= 4 }, waitFor, 5*time.Millisecond,
		"the leader compacted past the follower")

	c.net.isolate(f.ID(), false)
	c.converged()
	restored := sms[f.ID()].restoredAt()
	require.Len(t, restored, 1, "the follower caught up through the leader's snapshot")
	assert.Equal(t, restored[0], snapIndexOf(t, f))
	assert.Zero(t, f.Stats().Snapshots)

	fg.releaseOne(t)
	require.Eventually(t, func() bool { return f.Stats().SnapshotsDiscarded == 1 }, waitFor, 5*time.Millisecond)
	assert.Zero(t, f.Stats().Snapshots, "the stale result is not stored")
	assert.Equal(t, restored[0], snapIndexOf(t, f), "the received snapshot stays the latest")

	// The follower snapshots normally afterwards.
	fg.setHold(false)
	proposeN(t, lead, 60, func(i int) []byte { return payloadOf(1000 + i) })
	require.Eventually(t, func() bool { return f.Stats().Snapshots >= 1 }, waitFor, 5*time.Millisecond)
	c.converged()
}

// A member added after the latest snapshot gets a newer one, encoded in the background; raft
// holds snapshots back until it exists rather than send the member one it would refuse.
func TestAsyncSnapshotForNewMember(t *testing.T) {
	c, sms := asyncCluster(t, 3, true, func(cfg *Config) {
		cfg.SnapshotInterval = 20
		cfg.SnapshotCatchUpEntries = 5
	})
	lead := c.leader()
	proposeN(t, lead, 100, payloadOf)
	require.Eventually(t, func() bool { return lead.Stats().Snapshots >= 1 }, waitFor, 5*time.Millisecond)
	before := lead.Stats().Snapshots
	g := sms[lead.ID()].gate
	g.setHold(true)

	ctx := ctxFor(t)
	n4 := c.join(4)
	require.NoError(t, lead.AddLearner(ctx, 4, []byte("addr-4")))
	addedAt := lead.AppliedIndex()
	g.waitStarted(t) // the snapshot for the new member is being encoded
	// Raft wants to send member 4 a snapshot (its log is compacted) and is told to wait; the
	// old snapshot, which member 4 would refuse, is never sent.
	require.Eventually(t, func() bool {
		var held uint64
		require.NoError(t, lead.do(ctx, func() { held = lead.snapHeld }))
		return held > 0
	}, waitFor, 5*time.Millisecond)
	assert.Zero(t, c.net.snapshotsSentTo(4))
	select {
	case <-n4.Ready():
		t.Fatal("the new member cannot be ready before a snapshot that includes it exists")
	default:
	}
	g.setHold(false)
	g.releaseOne(t)
	select {
	case <-n4.Ready():
	case <-time.After(waitFor):
		t.Fatal("new member not ready")
	}
	assert.Greater(t, lead.Stats().Snapshots, before)
	restored := sms[4].restoredAt()
	require.NotEmpty(t, restored)
	assert.GreaterOrEqual(t, restored[0], addedAt, "the snapshot postdates the addition")
	proposeN(t, lead, 10, func(i int) []byte { return payloadOf(500 + i) })
	c.converged()
	_, err := n4.Propose(ctx, fmt.Appendf(nil, "from learner %d", n4.ID()))
	require.NoError(t, err)
}
