package raftstore

import (
	"cmp"
	"context"
	"encoding/binary"
	"slices"

	"go.etcd.io/raft/v3"
)

// readReq is one ReadBarrier call waiting on the raft loop. done is buffered (one send).
type readReq struct {
	done chan readResult
}

type readResult struct {
	index uint64
	err   error
}

// readRound is one raft ReadIndex request shared by every ReadBarrier call that reached the
// loop before it was issued. Rounds are owned by the raft loop.
type readRound struct {
	waiters []*readReq
	// key is the request context given to raft (empty once the ReadState came back).
	key string
	// issued is the tick at which the request was (last) handed to raft.
	issued uint64
	// index is the read index from raft's ReadState; 0 until it arrived.
	index uint64
}

// ReadBarrier returns once this member has applied every entry committed before the call, so
// that a read of the StateMachine made after it returns sees every write acknowledged before
// ReadBarrier was called (a linearizable read). It returns the read index: the leader's commit
// index as confirmed by a quorum, which this member's AppliedIndex has reached.
//
// It uses raft's ReadIndex protocol: the leader confirms with a round of heartbeats that it
// still leads, and a follower or learner asks the leader for that index over the Transport.
// Concurrent calls share one round. ReadBarrier waits for Ready first. If no leader is known it
// waits up to one election timeout for one and then fails with a *QuorumError (errors.Is
// ErrNoQuorum), as Propose does; a leader that has not heard from a quorum for an election
// timeout fails with one at once, and so does a round whose leader is lost and not replaced
// within an election timeout. A round unanswered for an election timeout (a lost message) is
// asked again. It returns ErrStopped if the node is not running or stops, and ctx.Err() if ctx
// ends first.
func (n *Node) ReadBarrier(ctx context.Context) (uint64, error) {
	if err := n.waitReady(ctx); err != nil {
		return 0, err
	}
	if n.isLeader.Load() {
		if qe := n.quorumLost.Load(); qe != nil {
			cp := *qe
			return 0, &cp
		}
	} else if _, err := n.awaitLeader(ctx); err != nil {
		return 0, err
	}
	req := &readReq{done: make(chan readResult, 1)}
	n.ctr.readBarriers.Add(1)
	select {
	case n.readc <- req:
	case <-n.donec:
		return 0, ErrStopped
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	select {
	case r := <-req.done:
		return r.index, r.err
	case <-n.donec:
		// The loop answers every request before closing donec, so an answer may be waiting.
		select {
		case r := <-req.done:
			return r.index, r.err
		default:
			return 0, ErrStopped
		}
	case <-ctx.Done():
		// The loop still answers req (into its buffer) and then forgets it.
		return 0, ctx.Err()
	}
}

// startReadRound (on the loop) issues one ReadIndex request for reqs.
func (n *Node) startReadRound(reqs []*readReq) {
	if n.isLeader.Load() {
		if qe := n.quorumLost.Load(); qe != nil {
			for _, r := range reqs {
				cp := *qe
				r.done <- readResult{err: &cp}
			}
			return
		}
	}
	rd := &readRound{waiters: reqs}
	n.issueRead(rd)
	n.ctr.readRounds.Add(1)
}

// issueRead hands rd to raft under a fresh request context. A context from an earlier attempt
// is forgotten: a late ReadState for it is ignored.
func (n *Node) issueRead(rd *readRound) {
	if rd.key != "" {
		delete(n.readPending, rd.key)
	}
	key := binary.BigEndian.AppendUint64(nil, n.nextRequestID())
	rd.key, rd.issued = string(key), n.ticks
	n.readPending[rd.key] = rd
	// On a follower without a leader raft drops the request; tickReads asks again once a
	// leader is known, or fails the round.
	n.rn.ReadIndex(key)
}

// handleReadStates (on the loop, after the Ready's entries were applied) matches raft's read
// states with their rounds and releases every round whose index has been applied.
func (n *Node) handleReadStates(states []raft.ReadState) {
	for _, rs := range states {
		rd, ok := n.readPending[string(rs.RequestCtx)]
		if !ok {
			continue
		}
		delete(n.readPending, rd.key)
		rd.key, rd.index = "", rs.Index
		n.readApplying = append(n.readApplying, rd)
	}
	n.releaseReads()
}

// releaseReads answers the rounds whose read index this member has applied.
func (n *Node) releaseReads() {
	if len(n.readApplying) == 0 {
		return
	}
	kept := n.readApplying[:0]
	for _, rd := range n.readApplying {
		if rd.index > n.appliedIdx {
			kept = append(kept, rd)
			continue
		}
		for _, r := range rd.waiters {
			r.done <- readResult{index: rd.index}
		}
	}
	clear(n.readApplying[len(kept):])
	n.readApplying = kept
}

// readsOnLeaderChange (on the loop) asks the new leader again for every unanswered round: raft
// drops pending read requests when leadership changes.
func (n *Node) readsOnLeaderChange() {
	if n.leader.Load() == raft.None {
		return
	}
	for _, rd := range n.pendingRounds() {
		n.issueRead(rd)
	}
}

// tickReads (on the loop, every tick) retries rounds unanswered for an election timeout and
// fails every round when no leader has been known for an election timeout, or when this member
// leads without a reachable quorum.
func (n *Node) tickReads() {
	if n.leader.Load() == raft.None {
		n.noLeaderTicks++
	} else {
		n.noLeaderTicks = 0
	}
	if len(n.readPending) == 0 && len(n.readApplying) == 0 {
		return
	}
	if n.noLeaderTicks >= uint64(n.cfg.ElectionTick) {
		n.failReads(n.quorumError())
		return
	}
	if qe := n.quorumLost.Load(); qe != nil && n.isLeader.Load() {
		n.failReads(qe)
		return
	}
	if n.leader.Load() == raft.None {
		return
	}
	for _, rd := range n.pendingRounds() {
		if n.ticks-rd.issued >= uint64(n.cfg.ElectionTick) {
			n.issueRead(rd)
		}
	}
}

// pendingRounds returns the unanswered rounds, oldest first (deterministic retry order).
func (n *Node) pendingRounds() []*readRound {
	out := make([]*readRound, 0, len(n.readPending))
	for _, rd := range n.readPending {
		out = append(out, rd)
	}
	slices.SortFunc(out, func(a, b *readRound) int { return cmp.Compare(a.issued, b.issued) })
	return out
}

// failReads answers every round with err (a *QuorumError is copied for each caller).
func (n *Node) failReads(err error) {
	answer := func(rd *readRound) {
		for _, r := range rd.waiters {
			e := err
			if qe, ok := err.(*QuorumError); ok {
				cp := *qe
				e = &cp
			}
			r.done <- readResult{err: e}
		}
	}
	for key, rd := range n.readPending {
		delete(n.readPending, key)
		answer(rd)
	}
	for _, rd := range n.readApplying {
		answer(rd)
	}
	n.readApplying = nil
}
