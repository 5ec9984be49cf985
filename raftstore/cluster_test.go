package raftstore

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// memNet is an in-process network for several members, with partitions. It shows the shape of
// a real transport: Send queues without blocking, a receiver goroutine calls Step, and the sender
// is told about MsgSnap delivery through ReportSnapshot.
type memNet struct {
	mu       sync.Mutex
	nodes    map[uint64]*Node
	isolated map[uint64]bool
	queues   map[uint64]chan *pb.Message
	snapsTo  map[uint64]int // MsgSnap messages sent, by destination
	stop     chan struct{}
	wg       sync.WaitGroup
}

func newMemNet(t testing.TB, ids ...uint64) *memNet {
	mn := &memNet{
		nodes:    map[uint64]*Node{},
		isolated: map[uint64]bool{},
		queues:   map[uint64]chan *pb.Message{},
		snapsTo:  map[uint64]int{},
		stop:     make(chan struct{}),
	}
	for _, id := range ids {
		mn.addMember(id)
	}
	t.Cleanup(func() {
		close(mn.stop)
		mn.wg.Wait()
	})
	return mn
}

// addMember gives member id an inbox (before its node is set).
func (mn *memNet) addMember(id uint64) {
	q := make(chan *pb.Message, 4096)
	mn.mu.Lock()
	mn.queues[id] = q
	mn.mu.Unlock()
	mn.wg.Go(func() { mn.deliver(id, q) })
}

// errUnreachable is what memForwarder returns across a partition.
var errUnreachable = errors.New("memnet: member unreachable")

// memForwarder forwards a proposal to the leader's ProposeOnLeader, the way a network
// forwarder's server side does, honouring partitions.
type memForwarder struct {
	mn   *memNet
	from uint64
}

func (f memForwarder) Forward(ctx context.Context, leader uint64, data []byte) error {
	f.mn.mu.Lock()
	to := f.mn.nodes[leader]
	cut := f.mn.isolated[f.from] || f.mn.isolated[leader]
	f.mn.mu.Unlock()
	if to == nil || cut {
		return errUnreachable
	}
	return ResultError(to.ProposeOnLeader(ctx, data))
}

func (mn *memNet) deliver(id uint64, q chan *pb.Message) {
	for {
		select {
		case <-mn.stop:
			return
		case m := <-q:
			mn.mu.Lock()
			to, from := mn.nodes[id], mn.nodes[m.GetFrom()]
			cut := mn.isolated[id] || mn.isolated[m.GetFrom()]
			mn.mu.Unlock()
			if to == nil || cut {
				if m.GetType() == pb.MsgSnap && from != nil {
					from.ReportSnapshot(id, false)
				}
				continue
			}
			err := to.Step(context.Background(), m)
			if m.GetType() == pb.MsgSnap && from != nil {
				from.ReportSnapshot(id, err == nil)
			}
		}
	}
}

func (mn *memNet) transport(from uint64) Transport { return memTransport{mn: mn, from: from} }

func (mn *memNet) setNode(id uint64, n *Node) {
	mn.mu.Lock()
	defer mn.mu.Unlock()
	mn.nodes[id] = n
}

func (mn *memNet) snapshotsSentTo(id uint64) int {
	mn.mu.Lock()
	defer mn.mu.Unlock()
	return mn.snapsTo[id]
}

func (mn *memNet) isolate(id uint64, cut bool) {
	mn.mu.Lock()
	defer mn.mu.Unlock()
	mn.isolated[id] = cut
}

type memTransport struct {
	mn   *memNet
	from uint64
}

func (t memTransport) Send(msgs []*pb.Message) {
	t.mn.mu.Lock()
	defer t.mn.mu.Unlock()
	if t.mn.isolated[t.from] {
		return
	}
	for _, m := range msgs {
		if m.GetType() == pb.MsgSnap {
			t.mn.snapsTo[m.GetTo()]++
		}
		q := t.mn.queues[m.GetTo()]
		if q == nil || t.mn.isolated[m.GetTo()] {
			// Like a real transport, a snapshot that cannot be delivered is reported as
			// failed; otherwise the leader would wait for its outcome forever.
			if from := t.mn.nodes[t.from]; m.GetType() == pb.MsgSnap && from != nil {
				from.ReportSnapshot(m.GetTo(), false)
			}
			continue
		}
		// In-process delivery must copy: the receiver's raft may modify what it is given,
		// and the sender's raft still holds these messages.
		select {
		case q <- proto.Clone(m).(*pb.Message):
		default: // full: drop, raft retransmits
			if from := t.mn.nodes[t.from]; m.GetType() == pb.MsgSnap && from != nil {
				from.ReportSnapshot(m.GetTo(), false)
			}
		}
	}
}

type cluster struct {
	t       testing.TB
	net     *memNet
	dirs    map[uint64]string
	sms     map[uint64]*chainSM
	nodes   map[uint64]*Node
	tune    func(*Config)
	forward bool // members forward proposals to the leader
	// wrap, if set, wraps each member's chainSM into the StateMachine the node is given.
	wrap func(id uint64, sm *chainSM) StateMachine

	mu      sync.Mutex
	changes map[uint64][][]uint64 // OnMembershipChange calls per member
}

func newCluster(t testing.TB, size int, tune func(*Config)) *cluster {
	return newClusterOpts(t, size, false, tune)
}

func newClusterOpts(t testing.TB, size int, forward bool, tune func(*Config)) *cluster {
	return newClusterWrapped(t, size, forward, tune, nil)
}

func newClusterWrapped(t testing.TB, size int, forward bool, tune func(*Config),
	wrap func(id uint64, sm *chainSM) StateMachine) *cluster {
	var ids []uint64
	for i := 1; i <= size; i++ {
		ids = append(ids, uint64(i))
	}
	c := &cluster{t: t, net: newMemNet(t, ids...), dirs: map[uint64]string{}, sms: map[uint64]*chainSM{},
		nodes: map[uint64]*Node{}, tune: tune, forward: forward, changes: map[uint64][][]uint64{}, wrap: wrap}
	for _, id := range ids {
		c.dirs[id] = t.TempDir()
	}
	for _, id := range ids {
		c.start(id, ids)
	}
	return c
}

func (c *cluster) start(id uint64, peers []uint64) {
	c.startWith(id, func(cfg *Config) { cfg.Peers = peers })
}

// join starts a new member id that waits to be added (Config.Join).
func (c *cluster) join(id uint64) *Node {
	c.net.addMember(id)
	c.dirs[id] = c.t.TempDir()
	c.startWith(id, func(cfg *Config) { cfg.Join = true })
	return c.nodes[id]
}

func (c *cluster) membershipChanges(id uint64) [][]uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.changes[id])
}

func (c *cluster) startWith(id uint64, set func(*Config)) {
	sm := &chainSM{}
	var smi StateMachine = sm
	if c.wrap != nil {
		smi = c.wrap(id, sm)
	}
	cfg := testConfig(c.t, c.dirs[id], smi)
	cfg.ID = id
	cfg.Transport = c.net.transport(id)
	cfg.UnsafeNoFsync = true
	if c.forward {
		cfg.Forwarder = memForwarder{mn: c.net, from: id}
	}
	cfg.OnMembershipChange = func(members []uint64) {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.changes[id] = append(c.changes[id], members)
	}
	set(&cfg)
	if c.tune != nil {
		c.tune(&cfg)
	}
	n, err := New(cfg)
	require.NoError(c.t, err)
	c.net.setNode(id, n)
	require.NoError(c.t, n.Start(context.Background()))
	c.t.Cleanup(func() { stopNode(c.t, n) })
	c.sms[id], c.nodes[id] = sm, n
}

// leader waits until exactly one member among those not excluded is leader and all of them
// agree on it.
func (c *cluster) leader(exclude ...uint64) *Node {
	c.t.Helper()
	var lead *Node
	require.Eventually(c.t, func() bool {
		lead = nil
		var seen uint64
	nodes:
		for id, n := range c.nodes {
			for _, x := range exclude {
				if id == x {
					continue nodes
				}
			}
			if seen == 0 {
				seen = n.Leader()
			}
			if seen == 0 || n.Leader() != seen {
				return false
			}
			if n.IsLeader() {
				lead = n
			}
		}
		return lead != nil && lead.ID() == seen
	}, waitFor, 5*time.Millisecond)
	return lead
}

func (c *cluster) follower(lead *Node, exclude ...uint64) *Node {
	for id, n := range c.nodes {
		skip := id == lead.ID()
		for _, x := range exclude {
			skip = skip || id == x
		}
		if !skip {
			return n
		}
	}
	c.t.Fatal("no follower")
	return nil
}

// converged waits until every member has applied the same entries.
func (c *cluster) converged() {
	c.t.Helper()
	require.Eventually(c.t, func() bool {
		var want [32]byte
		first := true
		for _, sm := range c.sms {
			sum, _ := sm.state()
			if first {
				want, first = sum, false
			} else if sum != want {
				return false
			}
		}
		return true
	}, waitFor, 5*time.Millisecond)
}

func TestThreeMembersReplicate(t *testing.T) {
	c := newCluster(t, 3, nil)
	lead := c.leader()
	for _, n := range c.nodes {
		select {
		case <-n.Ready():
		case <-time.After(waitFor):
			t.Fatalf("member %d not ready", n.ID())
		}
	}
	proposeConcurrently(t, lead, 8, 200, payloadOf)
	c.converged()

	f := c.follower(lead)
	_, err := f.Propose(context.Background(), []byte("on a follower"))
	assert.ErrorIs(t, err, ErrNotLeader)

	st, err := lead.Status(context.Background())
	require.NoError(t, err)
	assert.Len(t, st.Progress, 3)
}

func TestIsolatedLeaderStepsDownAndCatchesUp(t *testing.T) {
	c := newCluster(t, 3, func(cfg *Config) {
		cfg.SnapshotInterval = 50
		cfg.SnapshotCatchUpEntries = 10
	})
	old := c.leader()
	changes, cancel := old.LeadershipChanges()
	defer cancel()
	require.True(t, <-changes)
	proposeN(t, old, 20, payloadOf)

	c.net.isolate(old.ID(), true)
	// Proposed on the isolated leader: can never commit there.
	_, err := old.Propose(context.Background(), []byte("lost"))
	require.Error(t, err)
	assert.True(t, errorsIsAny(err, ErrLeadershipLost, ErrNotLeader, ErrNoQuorum), "got %v", err)

	select {
	case v := <-changes:
		assert.False(t, v, "CheckQuorum makes the isolated leader step down")
	case <-time.After(waitFor):
		t.Fatal("no leadership change")
	}

	lead := c.leader(old.ID())
	require.NotEqual(t, old.ID(), lead.ID())
	// Enough writes that the old leader's missing entries are compacted away: it must catch up
	// from a snapshot.
	proposeN(t, lead, 200, func(i int) []byte { return payloadOf(1000 + i) })
	c.net.isolate(old.ID(), false)
	c.converged()
	assert.Equal(t, lead.ID(), c.leader().ID())
	_, count := c.sms[old.ID()].state()
	assert.Equal(t, uint64(220), count, "the lost proposal never committed")
	sm := c.sms[old.ID()]
	sm.mu.Lock()
	defer sm.mu.Unlock()
	assert.Equal(t, 1, sm.restores, "caught up by a snapshot sent over the Transport")
}

func TestClusterMemberRestartReplays(t *testing.T) {
	c := newCluster(t, 3, nil)
	lead := c.leader()
	proposeN(t, lead, 50, payloadOf)
	c.converged()
	f := c.follower(lead)
	id := f.ID()
	stopNode(t, f)
	proposeN(t, lead, 50, func(i int) []byte { return payloadOf(100 + i) })
	c.start(id, nil) // Peers only matter for a new database
	c.converged()
	_, count := c.sms[id].state()
	assert.Equal(t, uint64(100), count)
}

func errorsIsAny(err error, targets ...error) bool {
	for _, target := range targets {
		if errors.Is(err, target) {
			return true
		}
	}
	return false
}
