package raftstore

import (
	"context"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/tracker"
)

// subscription is one LeadershipChanges subscriber: a one-slot channel holding the latest value.
type subscription struct {
	ch chan bool
}

// LeadershipChanges subscribes to this member's leadership: the channel receives true when this
// member becomes leader and false when it stops being leader. If it is leader when subscribing,
// true is delivered at once. The channel holds only the latest value: a slow reader misses
// intermediate flips (and may see the same value twice) but always sees the current state last,
// and the raft loop never waits for it. The channel is closed by cancel or when the node stops. cancel is idempotent.
func (n *Node) LeadershipChanges() (<-chan bool, func()) {
	s := &subscription{ch: make(chan bool, 1)}
	n.subMu.Lock()
	if n.subsClosed {
		n.subMu.Unlock()
		close(s.ch)
		return s.ch, func() {}
	}
	n.subs[s] = struct{}{}
	if n.isLeader.Load() {
		s.ch <- true
	}
	n.subMu.Unlock()
	cancel := func() {
		n.subMu.Lock()
		defer n.subMu.Unlock()
		if _, ok := n.subs[s]; ok {
			delete(n.subs, s)
			close(s.ch)
		}
	}
	return s.ch, cancel
}

// notifySubs replaces each subscriber's pending value with v, never blocking.
func (n *Node) notifySubs(v bool) {
	n.subMu.Lock()
	defer n.subMu.Unlock()
	for s := range n.subs {
		select {
		case <-s.ch: // drop the stale value
		default:
		}
		s.ch <- v // cannot block: we hold the only sender and just emptied the slot
	}
}

func (n *Node) closeSubs() {
	n.subMu.Lock()
	defer n.subMu.Unlock()
	if n.subsClosed {
		return
	}
	n.subsClosed = true
	for s := range n.subs {
		delete(n.subs, s)
		close(s.ch)
	}
}

// electionTimeout is the wall-clock length of raft's (minimum) election timeout.
func (n *Node) electionTimeout() time.Duration {
	return time.Duration(n.cfg.ElectionTick) * n.cfg.TickInterval
}

// leaderWatch returns a channel closed at the next change of the known leader.
func (n *Node) leaderWatch() <-chan struct{} {
	n.leadMu.Lock()
	defer n.leadMu.Unlock()
	return n.leadCh
}

func (n *Node) leaderChanged() {
	n.leadMu.Lock()
	close(n.leadCh)
	n.leadCh = make(chan struct{})
	n.leadMu.Unlock()
}

// awaitLeader returns the known leader, waiting for one; then it fails with a *QuorumError.
//
// It waits one election timeout, and longer in two cases where failing would be wrong:
//   - the member started less than startGraceTimeouts election timeouts ago: it may not have
//     heard from its peers yet (their transports may still be backing off from when it was
//     down), so "unreachable" would only mean "not heard from yet";
//   - a quorum of voters is reachable: an election is under way (raft randomizes the election
//     timeout up to twice its minimum, and PreVote adds a round), so a leader is coming; this
//     extension is bounded by maxElectionWaitTimeouts election timeouts in all.
//
// Without quorum the error still comes after one election timeout (or the start grace).
func (n *Node) awaitLeader(ctx context.Context) (uint64, error) {
	et := n.electionTimeout()
	clk := n.cfg.Clock
	now := clk.Now()
	deadline := now.Add(et)
	if grace := n.startedAt.Add(startGraceTimeouts * et); grace.After(deadline) {
		deadline = grace
	}
	hardDeadline := now.Add(maxElectionWaitTimeouts * et)
	if deadline.After(hardDeadline) {
		hardDeadline = deadline
	}
	timer := clk.NewTimer(deadline.Sub(now))
	defer timer.Stop()
	for {
		ch := n.leaderWatch()
		if l := n.leader.Load(); l != raft.None {
			return l, nil
		}
		select {
		case <-ch:
		case <-timer.C():
			if l := n.leader.Load(); l != raft.None {
				return l, nil
			}
			var qe *QuorumError
			if err := n.do(ctx, func() { qe = n.quorumError() }); err != nil {
				return 0, err
			}
			if now := clk.Now(); qe.Reachable >= qe.Needed && now.Before(hardDeadline) {
				timer.Reset(min(et/2, hardDeadline.Sub(now)))
				continue
			}
			return 0, qe
		case <-n.donec:
			return 0, ErrStopped
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

const (
	// startGraceTimeouts: for this many election timeouts after it started, a member waits for
	// a leader rather than report a lack of quorum.
	startGraceTimeouts = 3
	// maxElectionWaitTimeouts bounds, in election timeouts, how long a write waits for an
	// election that a reachable quorum is holding.
	maxElectionWaitTimeouts = 4
)

// awaitLeaderChange waits until the known leader is no longer old, for up to one election
// timeout (then the caller tries again with whatever is known).
func (n *Node) awaitLeaderChange(ctx context.Context, old uint64) error {
	timer := n.cfg.Clock.NewTimer(n.electionTimeout())
	defer timer.Stop()
	for {
		ch := n.leaderWatch()
		if l := n.leader.Load(); l != old && l != raft.None {
			return nil
		}
		select {
		case <-ch:
		case <-timer.C():
			return nil
		case <-n.donec:
			return ErrStopped
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// WorkingLeader reports whether this member leads or follows a leader it can
// hear: it leads, or it is a member of its own configuration, a follower,
// and it heard from its leader within the last election timeout. raft keeps
// the last leader it heard of until it learns of another, so Leader alone
// does not tell: a member removed while it was down may have received one
// stale message from the old leader (and applied its own removal, so it
// never campaigns) and then hear nothing more.
func (n *Node) WorkingLeader(ctx context.Context) (bool, error) {
	var ok bool
	err := n.do(ctx, func() {
		st := n.rn.BasicStatus()
		switch {
		case st.RaftState == raft.StateLeader:
			ok = true
		case st.RaftState != raft.StateFollower || st.Lead == raft.None:
		case !memberSet(n.confState)[n.cfg.ID]:
		default:
			at, heard := n.lastHeard[st.Lead]
			ok = heard && n.ticks-at <= uint64(n.cfg.ElectionTick)
		}
	})
	return ok, err
}

// reachableSet returns the members heard from within the last election timeout (this member
// always included). On a leader it adds raft's own RecentActive flags.
func (n *Node) reachableSet() map[uint64]bool {
	r := map[uint64]bool{n.cfg.ID: true}
	for id, at := range n.lastHeard {
		if n.ticks-at <= uint64(n.cfg.ElectionTick) {
			r[id] = true
		}
	}
	if n.isLeader.Load() {
		n.rn.WithProgress(func(id uint64, _ raft.ProgressType, pr tracker.Progress) {
			if pr.RecentActive {
				r[id] = true
			}
		})
	}
	return r
}

// quorumError describes the current configuration's quorum as this member sees it.
func (n *Node) quorumError() *QuorumError {
	return quorumOf(n.confState.GetVoters(), n.reachableSet())
}

func quorumOf(voters []uint64, reachable map[uint64]bool) *QuorumError {
	qe := &QuorumError{Voters: len(voters), Needed: len(voters)/2 + 1}
	for _, v := range voters {
		if reachable[v] {
			qe.Reachable++
		}
	}
	return qe
}
