package transport

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	pb "go.etcd.io/raft/v3/raftpb"

	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/raftstore"
)

// listSM is a list of entries plus a fixed block of padding that makes every snapshot large.
// Entries whose payload starts with "fail-notfound" are not applied; Apply returns an error
// wrapping errdefs.ErrNotFound for them (on every member alike, so state stays identical).
type listSM struct {
	pad []byte

	mu       sync.Mutex
	items    [][]byte
	restores atomic.Int64
}

func newListSM(padSize int) *listSM {
	pad := make([]byte, padSize)
	r := rand.NewChaCha8([32]byte{7})
	_, _ = r.Read(pad)
	return &listSM{pad: pad}
}

func (s *listSM) Apply(_ uint64, data []byte) any {
	if bytes.HasPrefix(data, []byte("fail-notfound")) {
		return fmt.Errorf("object %s: %w", data, errdefs.ErrNotFound)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.items = append(s.items, bytes.Clone(data))
	return nil
}

func (s *listSM) Snapshot() ([]byte, error) { return s.CaptureSnapshot()() }

// CaptureSnapshot captures the item list by reference (items are never modified, and Apply
// only appends past the captured length), so the raft loop does not stall encoding the padded
// state: the object store, raftstore's real user, is a SnapshotCapturer too.
func (s *listSM) CaptureSnapshot() func() ([]byte, error) {
	s.mu.Lock()
	items := s.items[:len(s.items):len(s.items)]
	s.mu.Unlock()
	return func() ([]byte, error) {
		size := 8 + len(s.pad)
		for _, it := range items {
			size += binary.MaxVarintLen64 + len(it)
		}
		out := make([]byte, 0, size)
		out = binary.BigEndian.AppendUint64(out, uint64(len(items)))
		for _, it := range items {
			out = binary.AppendUvarint(out, uint64(len(it)))
			out = append(out, it...)
		}
		return append(out, s.pad...), nil
	}
}

func (s *listSM) Restore(_ uint64, data []byte) error {
	if len(data) < 8+len(s.pad) || !bytes.Equal(data[len(data)-len(s.pad):], s.pad) {
		return errors.New("listSM: snapshot padding damaged")
	}
	n := binary.BigEndian.Uint64(data)
	data = data[8 : len(data)-len(s.pad)]
	items := make([][]byte, 0, n)
	for range n {
		l, k := binary.Uvarint(data)
		if k <= 0 || uint64(len(data)-k) < l {
			return errors.New("listSM: bad snapshot")
		}
		items = append(items, bytes.Clone(data[k:k+int(l)]))
		data = data[k+int(l):]
	}
	s.mu.Lock()
	s.items = items
	s.mu.Unlock()
	s.restores.Add(1)
	return nil
}

func (s *listSM) digest() (int, [32]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := sha256.New()
	for _, it := range s.items {
		h.Write(binary.AppendUvarint(nil, uint64(len(it))))
		h.Write(it)
	}
	var d [32]byte
	copy(d[:], h.Sum(nil))
	return len(s.items), d
}

// cmember is one manager: a transport with its gRPC server and a raftstore node.
type cmember struct {
	id   uint64
	m    *member
	dir  string
	sm   *listSM
	node *raftstore.Node
}

type cluster struct {
	t       *testing.T
	ids     []uint64
	members map[uint64]*cmember
	padSize int
	tune    func(*raftstore.Config)
}

// newCluster starts transports for ids and raft nodes for those in run (all when run is nil).
// Members not in run still have a transport and server (they are merely not running raft).
func newCluster(t *testing.T, ids []uint64, padSize int, trCfg func(*Config), tune func(*raftstore.Config)) *cluster {
	c := &cluster{t: t, ids: ids, members: map[uint64]*cmember{}, padSize: padSize, tune: tune}
	for _, id := range ids {
		cfg := testConfig(id)
		if trCfg != nil {
			trCfg(&cfg)
		}
		c.members[id] = &cmember{id: id, m: startMember(t, cfg), dir: t.TempDir()}
	}
	for _, a := range c.members {
		for _, b := range c.members {
			if a != b {
				require.NoError(t, a.m.tr.AddPeer(b.id, b.m.addr))
			}
		}
	}
	for _, id := range ids {
		c.startNode(id)
	}
	return c
}

// startNode starts (or restarts, from its directory) member id's raft node with an empty
// StateMachine. Cleanup stops it before its transport (cleanups run in reverse order).
func (c *cluster) startNode(id uint64) {
	t := c.t
	cm := c.members[id]
	cm.sm = newListSM(c.padSize)
	cfg := raftstore.DefaultConfig()
	cfg.ID, cfg.Dir, cfg.StateMachine = id, cm.dir, cm.sm
	cfg.Transport = cm.m.tr
	cfg.Peers = c.ids
	cfg.TickInterval = 20 * time.Millisecond
	cfg.UnsafeNoFsync = true
	if c.tune != nil {
		c.tune(&cfg)
	}
	n, err := raftstore.New(cfg)
	require.NoError(t, err)
	cm.m.tr.SetLocal(n)
	require.NoError(t, n.Start(context.Background()))
	cm.node = n
	t.Cleanup(func() { c.stopNode(id) })
}

func (c *cluster) stopNode(id uint64) {
	cm := c.members[id]
	if cm.node == nil {
		return
	}
	cm.m.tr.SetLocal(nil)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(c.t, cm.node.Stop(ctx))
	require.NoError(c.t, cm.node.Err())
	cm.node = nil
}

// leader waits until a running member is leader and returns it.
func (c *cluster) leader() *cmember {
	var l *cmember
	require.Eventually(c.t, func() bool {
		for _, cm := range c.members {
			if cm.node != nil && cm.node.IsLeader() {
				l = cm
				return true
			}
		}
		return false
	}, waitFor, tick, "no leader")
	return l
}

// propose proposes data on the current leader, retrying across leader changes, and returns
// the Apply result's error.
func (c *cluster) propose(data []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	for {
		val, err := c.leader().node.Propose(ctx, data)
		if errors.Is(err, raftstore.ErrNotLeader) || errors.Is(err, raftstore.ErrLeadershipLost) {
			continue // an entry lost with leadership may apply twice; tests use unique payloads
		}
		require.NoError(c.t, err)
		if e, ok := val.(error); ok {
			return e
		}
		return nil
	}
}

// converged waits until every running member has applied the same count items.
func (c *cluster) converged(count int) {
	require.Eventually(c.t, func() bool {
		var want [32]byte
		first := true
		for _, cm := range c.members {
			if cm.node == nil {
				continue
			}
			n, d := cm.sm.digest()
			if n < count {
				return false
			}
			if first {
				want, first = d, false
			} else if d != want {
				return false
			}
		}
		return true
	}, waitFor, tick, "members did not converge on %d items", count)
}

func (c *cluster) follower() *cmember {
	l := c.leader()
	for _, id := range c.ids {
		if cm := c.members[id]; cm != l && cm.node != nil {
			return cm
		}
	}
	c.t.Fatal("no follower")
	return nil
}

func TestClusterReplicates(t *testing.T) {
	for _, size := range []int{2, 3} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			ids := []uint64{1, 2, 3}[:size]
			c := newCluster(t, ids, 0, nil, nil)
			for i := range 50 {
				require.NoError(t, c.propose(fmt.Appendf(nil, "entry-%d", i)))
			}
			c.converged(50)
			for _, cm := range c.members {
				assert.Positive(t, cm.m.tr.Stats().MessagesSent)
				assert.Positive(t, cm.m.tr.Stats().MessagesReceived)
			}
		})
	}
}

// A follower's writes reach the leader through Forward, and the leader's Apply error comes
// back matching its sentinel.
func TestClusterForward(t *testing.T) {
	c := newCluster(t, []uint64{1, 2, 3}, 0, nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	var n int
	require.Eventually(t, func() bool {
		f := c.follower()
		err := f.m.tr.Forward(ctx, f.node.Leader(), fmt.Appendf(nil, "forwarded-%d", n))
		if err == nil {
			n++
		}
		return n == 20
	}, waitFor, tick)
	c.converged(20)

	var err error
	require.Eventually(t, func() bool {
		f := c.follower()
		err = f.m.tr.Forward(ctx, f.node.Leader(), []byte("fail-notfound-1"))
		return !errors.Is(err, errdefs.ErrNotLeader) // only a leader change makes it retry
	}, waitFor, tick)
	require.ErrorIs(t, err, errdefs.ErrNotFound)
	assert.Contains(t, err.Error(), "fail-notfound-1")

	// A member that is not the leader refuses (forwarding only goes to the leader).
	f := c.follower()
	err = c.members[1].m.tr.Forward(ctx, f.id, []byte("x"))
	if f.id != 1 {
		assert.ErrorIs(t, err, errdefs.ErrNotLeader)
	}
}

// A member that was down while the log was compacted past it catches up through a snapshot
// larger than gRPC's 4 MiB message limit, sent in chunks.
//
// Every member stores each snapshot it takes on its raft loop (one bbolt transaction holding
// the whole state), and the restarted member stores and restores the one it receives there
// too: under the race detector on a loaded 2-core machine that stalls a loop for hundreds of
// milliseconds per MiB. The healthy follower stalling longer than the leader by more than an
// election timeout makes the leader count it unreachable (1 of 3 managers), so the election
// timeout here is a second, as in production (DefaultConfig), not the 200ms of the other
// cluster tests, and the state is 5 MiB, just above the limit.
func TestClusterSnapshotCatchUp(t *testing.T) {
	const pad = 5 << 20
	c := newCluster(t, []uint64{1, 2, 3}, pad, nil, func(cfg *raftstore.Config) {
		cfg.SnapshotInterval = 40
		cfg.SnapshotCatchUpEntries = 5
		cfg.ElectionTick = snapshotElectionTick
	})
	for i := range 5 {
		require.NoError(t, c.propose(fmt.Appendf(nil, "before-%d", i)))
	}
	c.converged(5)
	lagger := c.follower()
	c.stopNode(lagger.id)
	for i := range 100 {
		require.NoError(t, c.propose(fmt.Appendf(nil, "while-down-%d", i)))
	}
	c.startNode(lagger.id)
	c.converged(105)
	assert.Positive(t, lagger.sm.restores.Load(), "caught up through a snapshot")
	assert.Positive(t, lagger.m.tr.Stats().SnapshotsReceived)
	var sent uint64
	for _, cm := range c.members {
		sent += cm.m.tr.Stats().SnapshotsSent
	}
	assert.Positive(t, sent)
	// And it keeps replicating normally afterwards.
	require.NoError(t, c.propose([]byte("after")))
	c.converged(106)
}

// snapshotElectionTick is TestClusterSnapshotCatchUp's ElectionTick: one second of the cluster
// tests' 20ms ticks.
const snapshotElectionTick = 50

// A voter that never answers (accepts connections, then nothing) does not stop the other two
// from replicating.
func TestClusterHungMember(t *testing.T) {
	hole := newBlackhole(t)
	ids := []uint64{1, 2, 3}
	c := &cluster{t: t, ids: ids, members: map[uint64]*cmember{}}
	for _, id := range ids[:2] {
		c.members[id] = &cmember{id: id, m: startMember(t, testConfig(id)), dir: t.TempDir()}
	}
	require.NoError(t, c.members[1].m.tr.AddPeer(2, c.members[2].m.addr))
	require.NoError(t, c.members[2].m.tr.AddPeer(1, c.members[1].m.addr))
	for _, id := range ids[:2] {
		require.NoError(t, c.members[id].m.tr.AddPeer(3, hole.addr()))
		c.startNode(id)
	}
	for i := range 100 {
		require.NoError(t, c.propose(fmt.Appendf(nil, "entry-%d", i)))
	}
	c.converged(100)
}

// Config.Filter partitions a member away and heals it: the shape shoaltest's fault injection
// takes.
func TestClusterPartitionWithFilter(t *testing.T) {
	var cut atomic.Uint64 // the isolated member, 0 for none
	var c *cluster
	c = newCluster(t, []uint64{1, 2, 3}, 0, func(cfg *Config) {
		from := cfg.ID
		cfg.Filter = func(to uint64, _ *pb.Message) (bool, time.Duration) {
			iso := cut.Load()
			return iso != 0 && (to == iso || from == iso), 0
		}
	}, nil)
	require.NoError(t, c.propose([]byte("first")))
	c.converged(1)
	isolated := c.follower()
	cut.Store(isolated.id)
	for i := range 30 {
		require.NoError(t, c.propose(fmt.Appendf(nil, "during-%d", i)))
	}
	n, _ := isolated.sm.digest()
	assert.Less(t, n, 31, "the isolated member receives nothing")
	cut.Store(0)
	c.converged(31)
	var filtered uint64
	for _, cm := range c.members {
		filtered += cm.m.tr.Stats().Filtered
	}
	assert.Positive(t, filtered)
}

var _ raftstore.SnapshotCapturer = (*listSM)(nil)

// With the transport as raftstore's Forwarder, Propose on a follower just works, and the
// leader's Apply error comes back through it.
func TestClusterNodeForwarder(t *testing.T) {
	c := newCluster(t, []uint64{1, 2, 3}, 0, nil, func(cfg *raftstore.Config) {
		cfg.Forwarder = cfg.Transport.(*Transport)
	})
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	c.leader()
	for i := range 20 {
		f := c.follower()
		_, err := f.node.Propose(ctx, fmt.Appendf(nil, "via-follower-%d", i))
		require.NoError(t, err)
	}
	c.converged(20)
	_, err := c.follower().node.Propose(ctx, []byte("fail-notfound-2"))
	require.ErrorIs(t, err, errdefs.ErrNotFound)
	var forwarded uint64
	for _, cm := range c.members {
		forwarded += cm.node.Stats().Forwarded
	}
	assert.Positive(t, forwarded)
}
