package raftstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	t.Cleanup(cancel)
	return ctx
}

func TestSentinelsAreShared(t *testing.T) {
	assert.Same(t, errdefs.ErrNotLeader, ErrNotLeader)
	assert.Same(t, errdefs.ErrStopped, ErrStopped)
	assert.Same(t, errdefs.ErrNoQuorum, ErrNoQuorum)

	qe := &QuorumError{Reachable: 1, Voters: 3, Needed: 2}
	assert.Equal(t, "no quorum: 1 of 3 managers reachable, 2 needed", qe.Error())
	assert.ErrorIs(t, qe, ErrNoQuorum)
	assert.NotErrorIs(t, qe, ErrNotLeader)
	wrapped := errors.Join(errors.New("context"), qe)
	var got *QuorumError
	require.ErrorAs(t, wrapped, &got)
	assert.Equal(t, 3, got.Voters)

	// Over gRPC the sentinel survives through the shared mapping table.
	remote := errdefs.FromGRPC(errdefs.ToGRPC(qe))
	assert.ErrorIs(t, remote, ErrNoQuorum)
	assert.Contains(t, remote.Error(), "1 of 3 managers reachable")
	assert.ErrorIs(t, errdefs.FromGRPC(errdefs.ToGRPC(ErrNotLeader)), ErrNotLeader)

	assert.NoError(t, ResultError(uint64(3), nil))
	boom := errors.New("boom")
	assert.Same(t, boom, ResultError(boom, nil))
	assert.Same(t, boom, ResultError(nil, boom))
}

func TestFollowerProposeIsForwarded(t *testing.T) {
	c := newClusterOpts(t, 3, true, nil)
	lead := c.leader()
	f := c.follower(lead)
	ctx := ctxFor(t)

	res, err := f.Propose(ctx, []byte("via follower"))
	require.NoError(t, err)
	assert.Nil(t, res, "a forwarded proposal only returns an error")
	_, err = f.Propose(ctx, []byte("fail:rejected by the state machine"))
	require.Error(t, err)
	assert.Equal(t, "rejected by the state machine", err.Error(), "the leader's Apply error comes back")
	assert.GreaterOrEqual(t, f.Stats().Forwarded, uint64(2))

	// The forwarded entries are in everyone's log.
	c.converged()
	_, count := c.sms[f.ID()].state()
	assert.Equal(t, uint64(2), count)

	// ProposeOnLeader never forwards.
	_, err = f.ProposeOnLeader(ctx, []byte("x"))
	assert.ErrorIs(t, err, ErrNotLeader)
}

func TestLeaderStopHandsOverAndProposalsResume(t *testing.T) {
	c := newClusterOpts(t, 3, true, nil)
	old := c.leader()
	proposeN(t, old, 10, payloadOf)
	f := c.follower(old)
	stopNode(t, old)

	lead := c.leader(old.ID())
	require.NotEqual(t, old.ID(), lead.ID())
	// Through a follower (forwarded), or on the new leader itself.
	ctx := ctxFor(t)
	for i := range 10 {
		_, err := f.Propose(ctx, payloadOf(100+i))
		require.NoError(t, err)
	}
	delete(c.sms, old.ID())
	delete(c.nodes, old.ID())
	c.converged()
	_, count := c.sms[f.ID()].state()
	assert.Equal(t, uint64(20), count)
}

func TestMinorityPartitionFailsFastWithNoQuorum(t *testing.T) {
	c := newClusterOpts(t, 3, true, nil)
	old := c.leader()
	proposeN(t, old, 5, payloadOf)
	c.converged()

	c.net.isolate(old.ID(), true)
	require.Eventually(t, func() bool { return !old.IsLeader() }, waitFor, 5*time.Millisecond,
		"CheckQuorum makes the isolated leader step down")
	lead := c.leader(old.ID())

	// The minority side: no leader, so the write fails with ErrNoQuorum long before ctx ends.
	ctx := ctxFor(t)
	require.Eventually(t, func() bool { return old.Leader() == 0 }, waitFor, 5*time.Millisecond)
	_, err := old.Propose(ctx, []byte("minority"))
	require.ErrorIs(t, err, ErrNoQuorum)
	assert.NoError(t, ctx.Err(), "failed fast, not at the deadline")
	assert.Contains(t, err.Error(), "1 of 3 managers reachable, 2 needed")
	var qe *QuorumError
	require.ErrorAs(t, err, &qe)
	assert.Equal(t, QuorumError{Reachable: 1, Voters: 3, Needed: 2}, *qe)

	// The majority side keeps taking writes, through either member.
	_, err = lead.Propose(ctx, []byte("majority"))
	require.NoError(t, err)
	_, err = c.follower(lead, old.ID()).Propose(ctx, []byte("majority, forwarded"))
	require.NoError(t, err)

	c.net.isolate(old.ID(), false)
	c.converged()
	_, count := c.sms[old.ID()].state()
	assert.Equal(t, uint64(7), count)
}

func TestLeaderWithoutQuorumFailsProposals(t *testing.T) {
	// A long election timeout keeps the leader in place while its followers are gone, so the
	// leader-side check (not CheckQuorum's step-down) is what answers.
	c := newCluster(t, 3, func(cfg *Config) { cfg.ElectionTick = 20 })
	lead := c.leader()
	for id, n := range c.nodes {
		if id != lead.ID() {
			c.net.isolate(id, true)
			_ = n
		}
	}
	ctx := ctxFor(t)
	var err error
	require.Eventually(t, func() bool {
		_, err = lead.Propose(ctx, []byte("x"))
		return errors.Is(err, ErrNoQuorum)
	}, waitFor, 5*time.Millisecond)
	assert.Contains(t, err.Error(), "of 3 managers reachable, 2 needed")
	assert.NoError(t, ctx.Err())
}

func TestLearnerCatchesUpBySnapshotThenIsPromoted(t *testing.T) {
	c := newClusterOpts(t, 3, true, func(cfg *Config) {
		cfg.SnapshotInterval = 20
		cfg.SnapshotCatchUpEntries = 5
	})
	lead := c.leader()
	proposeN(t, lead, 100, payloadOf)
	ctx := ctxFor(t)

	n4 := c.join(4)
	select {
	case <-n4.Ready():
		t.Fatal("a joining member is not ready before it is added")
	case <-time.After(50 * time.Millisecond):
	}
	require.NoError(t, lead.AddLearner(ctx, 4, []byte("10.0.0.4:4242")))
	select {
	case <-n4.Ready():
	case <-time.After(waitFor):
		t.Fatal("learner not ready")
	}
	_, count := c.sms[4].state()
	assert.GreaterOrEqual(t, count, uint64(100), "Ready means caught up with the leader's commit index")
	c.sms[4].mu.Lock()
	restores := c.sms[4].restores
	c.sms[4].mu.Unlock()
	assert.GreaterOrEqual(t, restores, 1, "caught up by a snapshot")

	ms, err := lead.Members(ctx)
	require.NoError(t, err)
	require.Len(t, ms, 4)
	assert.True(t, ms[3].Learner)
	assert.False(t, ms[3].Voter)
	assert.Equal(t, []byte("10.0.0.4:4242"), ms[3].Context)

	// A learner does not count towards the quorum, but its proposals are forwarded.
	_, err = n4.Propose(ctx, []byte("from the learner"))
	require.NoError(t, err)

	require.Eventually(t, func() bool {
		ok, err := lead.CaughtUp(ctx, 4)
		return err == nil && ok
	}, waitFor, 5*time.Millisecond)
	require.NoError(t, lead.PromoteLearner(ctx, 4))
	require.NoError(t, lead.PromoteLearner(ctx, 4), "promoting a voter is a no-op")

	ms, err = lead.Members(ctx)
	require.NoError(t, err)
	assert.True(t, ms[3].Voter)
	assert.False(t, ms[3].Learner)
	assert.Equal(t, []byte("10.0.0.4:4242"), ms[3].Context, "promotion keeps the context")
	for _, m := range ms {
		assert.NotZero(t, m.Match, "leader knows member %d's progress", m.ID)
	}
	st, err := lead.Status(ctx)
	require.NoError(t, err)
	assert.Len(t, st.Config.Voters[0], 4)

	proposeN(t, lead, 10, func(i int) []byte { return payloadOf(1000 + i) })
	c.converged()

	// OnMembershipChange: at start, then when 4 was added.
	assert.Equal(t, [][]uint64{{1, 2, 3}, {1, 2, 3, 4}}, c.membershipChanges(lead.ID()))
	changes := c.membershipChanges(4)
	require.NotEmpty(t, changes)
	assert.Empty(t, changes[0], "a joining member starts with no configuration")
	assert.Equal(t, []uint64{1, 2, 3, 4}, changes[len(changes)-1])

	// Errors: AddLearner on a voter, unknown members, followers.
	assert.ErrorIs(t, lead.AddLearner(ctx, 4, nil), errdefs.ErrExist)
	assert.ErrorIs(t, lead.PromoteLearner(ctx, 99), errdefs.ErrNotFound)
	assert.ErrorIs(t, lead.RemoveMember(ctx, 99), errdefs.ErrNotFound)
	assert.ErrorIs(t, lead.AddLearner(ctx, 0, nil), errdefs.ErrInvalidSpec)
	_, err = lead.CaughtUp(ctx, 99)
	assert.ErrorIs(t, err, errdefs.ErrNotFound)
	f := c.follower(lead)
	assert.ErrorIs(t, f.AddLearner(ctx, 5, nil), ErrNotLeader)
	_, err = f.CaughtUp(ctx, 4)
	assert.ErrorIs(t, err, ErrNotLeader)
	fms, err := f.Members(ctx)
	require.NoError(t, err)
	require.Len(t, fms, 4)
	assert.Zero(t, fms[0].Match, "followers do not know progress")
	sm := c.sms[f.ID()]
	sm.mu.Lock()
	fromLog := sm.restores == 0
	sm.mu.Unlock()
	if fromLog {
		// A member that applied the change from the log has the context; one restored from
		// a later snapshot knows only the IDs (documented on Member.Context).
		assert.Equal(t, []byte("10.0.0.4:4242"), fms[3].Context, "every member applied the context")
	}
}

func TestRemoveMemberRefusals(t *testing.T) {
	single := startNode(t, testConfig(t, t.TempDir(), &listSM{}))
	ctx := ctxFor(t)
	err := single.RemoveMember(ctx, 1)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "last voter")
	assert.Error(t, single.DemoteVoter(ctx, 1))
	assert.Error(t, single.TransferLeadership(ctx, 0), "no other voter")

	c := newCluster(t, 3, nil)
	lead := c.leader()
	var down, live *Node
	for id, n := range c.nodes {
		if id == lead.ID() {
			continue
		}
		if down == nil {
			down = n
		} else {
			live = n
		}
	}
	assert.ErrorIs(t, live.RemoveMember(ctx, down.ID()), ErrNotLeader)
	stopNode(t, down)
	require.Eventually(t, func() bool {
		ms, err := lead.Members(ctx)
		require.NoError(t, err)
		for _, m := range ms {
			if m.ID == down.ID() {
				return !m.RecentActive
			}
		}
		return false
	}, waitFor, 5*time.Millisecond)

	// Removing the live follower would leave {leader, down}: 1 of 2 reachable, 2 needed.
	err = lead.RemoveMember(ctx, live.ID())
	require.ErrorIs(t, err, ErrNoQuorum)
	assert.Contains(t, err.Error(), "1 of 2 managers reachable, 2 needed")
	err = lead.DemoteVoter(ctx, live.ID())
	require.ErrorIs(t, err, ErrNoQuorum)

	// Removing the member that is down is fine: {leader, live} are both reachable.
	require.NoError(t, lead.RemoveMember(ctx, down.ID()))
	ms, err := lead.Members(ctx)
	require.NoError(t, err)
	require.Len(t, ms, 2)
	for _, m := range ms {
		assert.NotEqual(t, down.ID(), m.ID)
		assert.True(t, m.Voter)
	}
	_, err = lead.Propose(ctx, []byte("two voters"))
	require.NoError(t, err)
	delete(c.nodes, down.ID())
	delete(c.sms, down.ID())
	c.converged()
}

func TestDemoteAndRemoveLearner(t *testing.T) {
	c := newCluster(t, 3, nil)
	lead := c.leader()
	ctx := ctxFor(t)
	f := c.follower(lead)
	require.NoError(t, lead.DemoteVoter(ctx, f.ID()))
	require.NoError(t, lead.DemoteVoter(ctx, f.ID()), "demoting a learner is a no-op")
	ms, err := lead.Members(ctx)
	require.NoError(t, err)
	for _, m := range ms {
		assert.Equal(t, m.ID == f.ID(), m.Learner, "member %d", m.ID)
	}
	proposeN(t, lead, 5, payloadOf)
	c.converged() // a learner still receives the log
	require.NoError(t, lead.RemoveMember(ctx, f.ID()))
	ms, err = lead.Members(ctx)
	require.NoError(t, err)
	assert.Len(t, ms, 2)
	assert.Equal(t, [][]uint64{{1, 2, 3}, sortedWithout([]uint64{1, 2, 3}, f.ID())}, c.membershipChanges(lead.ID()))
}

func sortedWithout(ids []uint64, x uint64) []uint64 {
	var out []uint64
	for _, id := range ids {
		if id != x {
			out = append(out, id)
		}
	}
	return out
}

func TestDemotingTheLeaderHandsOverFirst(t *testing.T) {
	c := newCluster(t, 3, nil)
	old := c.leader()
	ctx := ctxFor(t)
	err := old.DemoteVoter(ctx, old.ID())
	require.ErrorIs(t, err, ErrNotLeader)
	lead := c.leader()
	require.NotEqual(t, old.ID(), lead.ID())
	assert.Contains(t, err.Error(), "leadership moved")
	require.NoError(t, lead.DemoteVoter(ctx, old.ID()))
	ms, err := lead.Members(ctx)
	require.NoError(t, err)
	for _, m := range ms {
		assert.Equal(t, m.ID == old.ID(), m.Learner, "member %d", m.ID)
	}
}

func TestTransferLeadership(t *testing.T) {
	c := newCluster(t, 3, nil)
	lead := c.leader()
	ctx := ctxFor(t)
	target := c.follower(lead)
	assert.ErrorIs(t, target.TransferLeadership(ctx, 0), ErrNotLeader)
	require.NoError(t, lead.TransferLeadership(ctx, target.ID()))
	assert.True(t, target.IsLeader())
	assert.Equal(t, target.ID(), c.leader().ID())
	require.NoError(t, target.TransferLeadership(ctx, target.ID()), "to itself: no-op")
	assert.ErrorIs(t, target.TransferLeadership(ctx, 99), errdefs.ErrNotFound)

	require.NoError(t, target.TransferLeadership(ctx, 0))
	next := c.leader()
	assert.NotEqual(t, target.ID(), next.ID())
	_, err := next.Propose(ctx, []byte("after two transfers"))
	require.NoError(t, err)
	c.converged()
}

func TestMemberContextsSurviveRestartAndSnapshots(t *testing.T) {
	c := newCluster(t, 3, func(cfg *Config) {
		// Snapshots every 10 entries compact the log, but keep enough entries that a
		// follower applies the conf change from the log rather than from a snapshot.
		cfg.SnapshotInterval = 10
		cfg.SnapshotCatchUpEntries = 30
	})
	lead := c.leader()
	ctx := ctxFor(t)
	c.join(4)
	require.NoError(t, lead.AddLearner(ctx, 4, []byte("addr-4")))
	// Enough writes that every member snapshots after the change and compacts it away.
	proposeN(t, lead, 40, payloadOf)
	c.converged()

	f := c.follower(lead, 4)
	id := f.ID()
	stopNode(t, f)
	c.start(id, nil)
	f = c.nodes[id]
	select {
	case <-f.Ready():
	case <-time.After(waitFor):
		t.Fatal("restarted member not ready")
	}
	ms, err := f.Members(ctx)
	require.NoError(t, err)
	require.Len(t, ms, 4)
	assert.Equal(t, []byte("addr-4"), ms[3].Context)
	assert.True(t, ms[3].Learner)
	assert.Equal(t, []uint64{1, 2, 3, 4}, c.membershipChanges(id)[len(c.membershipChanges(id))-1])

	// Removing the member deletes its context everywhere, also across restart.
	lead = c.leader()
	require.NoError(t, lead.RemoveMember(ctx, 4))
	c.converged()
	stopNode(t, c.nodes[4])
	delete(c.nodes, 4)
	delete(c.sms, 4)
	require.Eventually(t, func() bool {
		ms, err := f.Members(ctx)
		return err == nil && len(ms) == 3
	}, waitFor, 5*time.Millisecond)
	stopNode(t, f)
	c.start(id, nil)
	f = c.nodes[id]
	<-f.Ready()
	ms, err = f.Members(ctx)
	require.NoError(t, err)
	assert.Len(t, ms, 3)
	for _, m := range ms {
		assert.Nil(t, m.Context)
	}
}

// flakyForwarder answers ErrNotLeader a number of times (as a leader that just lost
// leadership does), then forwards.
type flakyForwarder struct {
	next  Forwarder
	mu    sync.Mutex
	fails int
	calls int
}

func (f *flakyForwarder) Forward(ctx context.Context, leader uint64, data []byte) error {
	f.mu.Lock()
	f.calls++
	fail := f.calls <= f.fails
	f.mu.Unlock()
	if fail {
		return fmt.Errorf("forwarding to %d: %w", leader, ErrNotLeader)
	}
	return f.next.Forward(ctx, leader, data)
}

func TestForwardRetriesWhenLeaderAnswersNotLeader(t *testing.T) {
	flaky := map[uint64]*flakyForwarder{}
	c := newClusterOpts(t, 3, true, func(cfg *Config) {
		f := &flakyForwarder{next: cfg.Forwarder, fails: 1}
		flaky[cfg.ID] = f
		cfg.Forwarder = f
	})
	lead := c.leader()
	f := c.follower(lead)
	ctx := ctxFor(t)
	_, err := f.Propose(ctx, []byte("retried"))
	require.NoError(t, err)
	assert.Equal(t, 2, flaky[f.ID()].calls, "refused once, then forwarded again")

	// A forwarder that keeps answering ErrNotLeader makes Propose give up with it.
	flaky[f.ID()].mu.Lock()
	flaky[f.ID()].fails = 100
	flaky[f.ID()].mu.Unlock()
	_, err = f.Propose(ctx, []byte("never"))
	assert.ErrorIs(t, err, ErrNotLeader)
	assert.NoError(t, ctx.Err())
	c.converged()
	_, count := c.sms[lead.ID()].state()
	assert.Equal(t, uint64(1), count)
}

// WorkingLeader is true on the leader and on followers that hear it; false
// on a member cut off from the leader, and on a member removed from the
// configuration (it keeps the last leader's ID but hears nothing more).
func TestWorkingLeader(t *testing.T) {
	c := newClusterOpts(t, 3, true, nil)
	ctx := context.Background()
	lead := c.leader()
	working := func(n *Node) bool {
		ok, err := n.WorkingLeader(ctx)
		require.NoError(t, err)
		return ok
	}
	for _, n := range c.nodes {
		require.Eventually(t, func() bool { return working(n) }, waitFor, 5*time.Millisecond, "member %d", n.ID())
	}

	f := c.follower(lead)
	c.net.isolate(f.ID(), true)
	require.Eventually(t, func() bool { return !working(f) }, waitFor, 5*time.Millisecond)
	c.net.isolate(f.ID(), false)
	require.Eventually(t, func() bool { return working(f) }, waitFor, 5*time.Millisecond)

	lead = c.leader()
	f = c.follower(lead)
	require.NoError(t, lead.RemoveMember(ctx, f.ID()))
	require.Eventually(t, func() bool { return !working(f) }, waitFor, 5*time.Millisecond)
	assert.True(t, working(lead))
}
