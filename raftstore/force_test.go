package raftstore

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// recorder collects OnMembershipChange calls.
type recorder struct {
	mu    sync.Mutex
	calls [][]uint64
}

func (r *recorder) record(ids []uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, ids)
}

func (r *recorder) last() []uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.calls) == 0 {
		return nil
	}
	return r.calls[len(r.calls)-1]
}

// membersOnly drops the leader-only progress fields.
func membersOnly(ms []Member) []Member {
	out := slices.Clone(ms)
	for i := range out {
		out[i].Match, out[i].RecentActive = 0, false
	}
	return out
}

func waitReadyOrFail(t *testing.T, n *Node) {
	t.Helper()
	select {
	case <-n.Ready():
	case <-n.Done():
		t.Fatalf("member %d stopped before Ready: %v", n.ID(), n.Err())
	case <-time.After(waitFor):
		t.Fatalf("member %d not ready", n.ID())
	}
}

func TestForceNewClusterFromThreeMembers(t *testing.T) {
	for _, compacted := range []bool{false, true} {
		name := "log"
		if compacted {
			name = "snapshot"
		}
		t.Run(name, func(t *testing.T) { testForceNewCluster(t, compacted) })
	}
}

func testForceNewCluster(t *testing.T, compacted bool) {
	c := newClusterOpts(t, 3, false, func(cfg *Config) {
		if compacted {
			// The original configuration entries are compacted away: the configuration to
			// rewrite comes from the snapshot.
			cfg.SnapshotInterval = 20
			cfg.SnapshotCatchUpEntries = 5
		}
	})
	lead := c.leader()
	ctx := ctxFor(t)
	n4 := c.join(4)
	require.NoError(t, lead.AddLearner(ctx, 4, []byte("addr-4")))
	waitReadyOrFail(t, n4)
	proposeN(t, lead, 60, payloadOf)
	c.converged()
	wantSum, wantCount := c.sms[lead.ID()].state()
	require.Equal(t, uint64(60), wantCount)

	// Disaster: every member stops; only a follower's disk survives.
	survivor := c.follower(lead, 4).ID()
	for _, n := range c.nodes {
		stopNode(t, n)
	}

	// Restart the survivor alone, with no transport at all.
	sm := &chainSM{}
	rec := &recorder{}
	cfg := testConfig(t, c.dirs[survivor], sm)
	cfg.ID = survivor
	cfg.ForceNewCluster = true
	cfg.OnMembershipChange = rec.record
	if compacted {
		cfg.SnapshotInterval, cfg.SnapshotCatchUpEntries = 20, 5
	}
	n := startNode(t, cfg)
	require.Eventually(t, n.IsLeader, waitFor, 5*time.Millisecond, "the only voter elects itself")
	sum, count := sm.state()
	assert.Equal(t, wantCount, count, "every committed entry is kept")
	assert.Equal(t, wantSum, sum)
	if compacted {
		sm.mu.Lock()
		restores := sm.restores
		sm.mu.Unlock()
		assert.Equal(t, 1, restores, "started from a snapshot taken in the old configuration")
	}
	ms, err := n.Members(ctx)
	require.NoError(t, err)
	assert.Equal(t, []Member{{ID: survivor, Voter: true}}, membersOnly(ms), "the other voters and the learner are gone, with their contexts")
	assert.Equal(t, []uint64{survivor}, rec.last())
	_, err = n.Propose(ctx, []byte("after the disaster"))
	require.NoError(t, err)
	_, err = n.ReadBarrier(ctx)
	require.NoError(t, err)
	stopNode(t, n)

	// Restart without the flag: still a one-member cluster with all the data.
	net := newMemNet(t, survivor, 5)
	sm = &chainSM{}
	rec = &recorder{}
	cfg.StateMachine, cfg.OnMembershipChange = sm, rec.record
	cfg.ForceNewCluster = false
	cfg.Transport = net.transport(survivor)
	n, err = New(cfg)
	require.NoError(t, err)
	net.setNode(survivor, n)
	require.NoError(t, n.Start(context.Background()))
	t.Cleanup(func() { stopNode(t, n) })
	waitReadyOrFail(t, n)
	require.Eventually(t, n.IsLeader, waitFor, 5*time.Millisecond)
	_, count = sm.state()
	assert.Equal(t, wantCount+1, count)
	ms, err = n.Members(ctx)
	require.NoError(t, err)
	assert.Equal(t, []Member{{ID: survivor, Voter: true}}, membersOnly(ms))
	assert.Equal(t, []uint64{survivor}, rec.last())
	_, err = n.Propose(ctx, []byte("second life"))
	require.NoError(t, err)

	// The new cluster grows the usual way.
	sm5 := &chainSM{}
	cfg5 := testConfig(t, t.TempDir(), sm5)
	cfg5.ID, cfg5.Join, cfg5.Transport = 5, true, net.transport(5)
	n5, err := New(cfg5)
	require.NoError(t, err)
	net.setNode(5, n5)
	require.NoError(t, n5.Start(context.Background()))
	t.Cleanup(func() { stopNode(t, n5) })
	require.NoError(t, n.AddLearner(ctx, 5, []byte("addr-5")))
	waitReadyOrFail(t, n5)
	require.Eventually(t, func() bool {
		ok, err := n.CaughtUp(ctx, 5)
		return err == nil && ok
	}, waitFor, 5*time.Millisecond)
	require.NoError(t, n.PromoteLearner(ctx, 5))
	_, err = n.Propose(ctx, []byte("replicated to the new member"))
	require.NoError(t, err)
	_, err = n5.ReadBarrier(ctx)
	require.NoError(t, err)
	sum, count = sm.state()
	sum5, count5 := sm5.state()
	assert.Equal(t, wantCount+3, count5)
	assert.Equal(t, count, count5)
	assert.Equal(t, sum, sum5)
	ms, err = n.Members(ctx)
	require.NoError(t, err)
	require.Len(t, ms, 2)
	assert.True(t, ms[0].Voter && ms[1].Voter)
	assert.Equal(t, []byte("addr-5"), ms[1].Context)
}

func TestForceNewClusterOnSingleMemberChangesNothing(t *testing.T) {
	dir := t.TempDir()
	sm := &listSM{}
	n := startNode(t, testConfig(t, dir, sm))
	proposeN(t, n, 5, payloadOf)
	applied := n.AppliedIndex()
	stopNode(t, n)

	sm = &listSM{}
	cfg := testConfig(t, dir, sm)
	cfg.ForceNewCluster = true
	n = startNode(t, cfg)
	assert.GreaterOrEqual(t, n.AppliedIndex(), applied)
	assert.Equal(t, 5, sm.len())
	require.NoError(t, sm.checkErr())
	stopNode(t, n)

	// The log holds the bootstrap's configuration entry and no other.
	ds, st, err := openDisk(dir, 1, true, nil)
	require.NoError(t, err)
	require.NoError(t, ds.close())
	confEntries := 0
	for _, e := range st.entries {
		if e.GetType() != pb.EntryNormal {
			confEntries++
		}
	}
	assert.Equal(t, 1, confEntries, "no configuration change was appended")
}

func TestForceNewClusterRefusals(t *testing.T) {
	t.Run("no database", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "missing")
		cfg := testConfig(t, dir, &listSM{})
		cfg.ForceNewCluster = true
		n, err := New(cfg)
		require.NoError(t, err)
		err = n.Start(context.Background())
		require.Error(t, err)
		assert.Contains(t, err.Error(), "ForceNewCluster")
		assert.ErrorIs(t, err, os.ErrNotExist)
		_, statErr := os.Stat(filepath.Join(dir, DBFileName))
		assert.ErrorIs(t, statErr, os.ErrNotExist, "nothing was created")
		require.NoError(t, n.Stop(context.Background()))
		_, err = n.ReadBarrier(context.Background())
		assert.ErrorIs(t, err, ErrStopped)
	})
	t.Run("database never written", func(t *testing.T) {
		dir := t.TempDir()
		ds, _, err := openDisk(dir, 1, true, nil)
		require.NoError(t, err)
		require.NoError(t, ds.close())
		cfg := testConfig(t, dir, &listSM{})
		cfg.ForceNewCluster = true
		n, err := New(cfg)
		require.NoError(t, err)
		err = n.Start(context.Background())
		require.Error(t, err)
		assert.Contains(t, err.Error(), "ForceNewCluster")
		require.NoError(t, n.Stop(context.Background()))
	})
	t.Run("with Join", func(t *testing.T) {
		cfg := testConfig(t, t.TempDir(), &listSM{})
		cfg.ForceNewCluster, cfg.Join, cfg.Transport = true, true, memTransport{}
		_, err := New(cfg)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "ForceNewCluster must not be set with Join")
	})
	t.Run("with other peers", func(t *testing.T) {
		cfg := testConfig(t, t.TempDir(), &listSM{})
		cfg.ForceNewCluster, cfg.Peers, cfg.Transport = true, []uint64{1, 2}, memTransport{}
		_, err := New(cfg)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "ForceNewCluster must not be set with Peers")
	})
}

// TestForceNewClusterKeepsUncommittedTail builds a log by hand: a three-member bootstrap,
// entries the member saw committed, and entries it had not seen committed yet (the old
// leader may have committed them). All are kept and applied, in order.
func TestForceNewClusterKeepsUncommittedTail(t *testing.T) {
	dir := t.TempDir()
	ds, _, err := openDisk(dir, 2, true, nil)
	require.NoError(t, err)
	ds.committed = func(bool) {}
	var ents []*pb.Entry
	for i, id := range []uint64{1, 2, 3} {
		cc, err := proto.Marshal(&pb.ConfChange{Type: pb.ConfChangeAddNode.Enum(), NodeId: new(id)})
		require.NoError(t, err)
		ents = append(ents, &pb.Entry{Type: pb.EntryConfChange.Enum(), Term: new(uint64(1)), Index: new(uint64(i + 1)), Data: cc})
	}
	for i := range 6 {
		data := binary.BigEndian.AppendUint64(nil, uint64(1000+i))
		data = append(data, payloadOf(i)...)
		ents = append(ents, &pb.Entry{Type: pb.EntryNormal.Enum(), Term: new(uint64(2)), Index: new(uint64(4 + i)), Data: data})
	}
	// Member 1 led term 2 and member 2 voted for it; the commit index known here is 6.
	hard := &pb.HardState{Term: new(uint64(2)), Vote: new(uint64(1)), Commit: new(uint64(6))}
	require.NoError(t, ds.save(hard, ents, nil, true))
	require.NoError(t, ds.saveConfState(&pb.ConfState{Voters: []uint64{1, 2, 3}}, map[uint64][]byte{3: []byte("addr-3")}))
	require.NoError(t, ds.close())

	sm := &listSM{}
	rec := &recorder{}
	cfg := testConfig(t, dir, sm)
	cfg.ID, cfg.ForceNewCluster, cfg.OnMembershipChange = 2, true, rec.record
	n := startNode(t, cfg)
	require.Eventually(t, n.IsLeader, waitFor, 5*time.Millisecond)
	require.NoError(t, sm.checkErr())
	sm.mu.Lock()
	items := slices.Clone(sm.items)
	sm.mu.Unlock()
	require.Len(t, items, 6)
	for i, it := range items {
		assert.Equal(t, payloadOf(i), it)
	}
	ms, err := n.Members(ctxFor(t))
	require.NoError(t, err)
	assert.Equal(t, []Member{{ID: 2, Voter: true}}, membersOnly(ms))
	assert.Equal(t, []uint64{2}, rec.last())
	res, err := n.Propose(ctxFor(t), []byte("next"))
	require.NoError(t, err)
	assert.Equal(t, 7, res)
}
