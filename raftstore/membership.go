package raftstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/shoalhq/shoal/internal/errdefs"
	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"
)

// CaughtUpSlack is how many entries a learner's log may trail the leader's commit index and
// still count as caught up (CaughtUp). Entries keep flowing while a cluster takes writes, so a
// healthy learner is always a few appends behind; a few dozen entries is a fraction of a
// second of replication, while a learner that needs a snapshot or a long catch-up is
// thousands of entries behind.
const CaughtUpSlack = 64

// Member is one member of the raft configuration, as returned by Node.Members.
type Member struct {
	// ID is the member's raft ID.
	ID uint64
	// Voter is true for a voting member, Learner for a non-voting one (being caught up).
	Voter   bool
	Learner bool
	// Match is the highest log index known to be replicated on the member. Only the leader
	// knows it; elsewhere it is 0.
	Match uint64
	// RecentActive is true when the leader heard from the member within the last election
	// timeout (always true for the leader itself). Only the leader knows it; elsewhere it is
	// false.
	RecentActive bool
	// Context is the context given to AddLearner for the member (e.g. its address), or nil if
	// none is known: members of the initial configuration (Config.Peers), and members added
	// before a snapshot this member was restored from, have no context here; the object store
	// replicates the managers' addresses for that case.
	Context []byte
}

type confKind int

const (
	confAddLearner confKind = iota
	confPromote
	confRemove
	confDemote
)

func (k confKind) String() string {
	switch k {
	case confAddLearner:
		return "adding learner"
	case confPromote:
		return "promoting learner"
	case confRemove:
		return "removing member"
	case confDemote:
		return "demoting voter"
	}
	return "changing membership"
}

// errConfBusy: the leader cannot take a conf change yet (one is pending, its term has no
// applied entry yet, or it is transferring leadership). The caller retries.
var errConfBusy = errors.New("raftstore: configuration change pending")

// confOutcome is what the loop decided about a membership change.
type confOutcome struct {
	err      error
	noop     bool // the configuration already is as asked
	transfer bool // the change concerns the leader itself: hand leadership over first
	waiter   chan result
	reqID    uint64
}

// AddLearner adds member id as a learner: it receives the log (a snapshot first if it is far
// behind) but does not vote, so adding it never changes the quorum. context is stored with
// the member (Member.Context) and survives restarts; the lead stores the member's address
// there. AddLearner on a learner updates its context; on a voter it fails with an error
// matching errdefs.ErrExist.
//
// Like every membership change it must be called on the leader (otherwise ErrNotLeader), and
// it returns once the change is committed and applied on this member, bounded by ctx. Changes
// are made one at a time: a call waits while another change is pending.
func (n *Node) AddLearner(ctx context.Context, id uint64, context []byte) error {
	return n.changeMembership(ctx, confAddLearner, id, context)
}

// PromoteLearner makes learner id a voter. It is a no-op for a voter and fails with an error
// matching errdefs.ErrNotFound for an unknown ID. Call it once CaughtUp(id) is true, so that
// the new voter can vote (and the quorum, which grows with it, keeps being reachable).
func (n *Node) PromoteLearner(ctx context.Context, id uint64) error {
	return n.changeMembership(ctx, confPromote, id, nil)
}

// RemoveMember removes voter or learner id from the configuration. Removing a voter is refused
// with an error wrapping a *QuorumError (errors.Is ErrNoQuorum) when the remaining voters
// would not have a reachable quorum, and removing the last voter is always refused. An unknown
// ID fails with an error matching errdefs.ErrNotFound.
//
// Removing the leader itself first hands leadership to the most up-to-date reachable voter
// and then returns an error matching ErrNotLeader: repeat the request on the new leader.
func (n *Node) RemoveMember(ctx context.Context, id uint64) error {
	return n.changeMembership(ctx, confRemove, id, nil)
}

// DemoteVoter turns voter id into a learner, under the same rules as RemoveMember (refused
// without a reachable quorum of the remaining voters or for the last voter; a demoted leader
// hands leadership over first and the request returns ErrNotLeader). It is a no-op for a
// learner.
func (n *Node) DemoteVoter(ctx context.Context, id uint64) error {
	return n.changeMembership(ctx, confDemote, id, nil)
}

func (n *Node) changeMembership(ctx context.Context, kind confKind, id uint64, payload []byte) error {
	if id == raft.None || id == raft.LocalAppendThread || id == raft.LocalApplyThread {
		return fmt.Errorf("raftstore: %s: member ID %d: must be nonzero and not raft-reserved: %w", kind, id, errdefs.ErrInvalidSpec)
	}
	if err := n.waitReady(ctx); err != nil {
		return err
	}
	select {
	case n.confSem <- struct{}{}:
	case <-n.donec:
		return ErrStopped
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-n.confSem }()
	payload = bytes.Clone(payload)
	for {
		var out confOutcome
		if err := n.do(ctx, func() { out = n.proposeConfChange(kind, id, payload) }); err != nil {
			return err
		}
		switch {
		case errors.Is(out.err, errConfBusy):
			// Wait a tick for the pending change (or the new leader's first entry) to apply.
			t := n.cfg.Clock.NewTimer(n.cfg.TickInterval)
			select {
			case <-t.C():
			case <-n.donec:
				t.Stop()
				return ErrStopped
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			}
			continue
		case out.err != nil:
			return out.err
		case out.noop:
			return nil
		case out.transfer:
			if err := n.transferLeadership(ctx, raft.None, false); err != nil {
				return fmt.Errorf("raftstore: %s %d: it is the leader and handing leadership over failed: %w", kind, id, err)
			}
			return fmt.Errorf("raftstore: %s %d: it was the leader; leadership moved to %d, repeat the request there: %w",
				kind, id, n.leader.Load(), ErrNotLeader)
		}
		r, err := n.waitResult(ctx, out.reqID, out.waiter)
		if err != nil {
			return err
		}
		if r.err != nil {
			return fmt.Errorf("raftstore: %s %d: %w", kind, id, r.err)
		}
		return nil
	}
}

// proposeConfChange runs on the loop: it checks the change against the current configuration
// and, if it is valid and the leader can take it, proposes it.
func (n *Node) proposeConfChange(kind confKind, id uint64, payload []byte) confOutcome {
	if !n.isLeader.Load() {
		return confOutcome{err: ErrNotLeader}
	}
	st := n.rn.BasicStatus()
	if n.confPending || n.appliedTerm != st.HardState.GetTerm() || st.LeadTransferee != raft.None {
		return confOutcome{err: errConfBusy}
	}
	cs := n.confState
	voter, learner := slices.Contains(cs.GetVoters(), id), slices.Contains(cs.GetLearners(), id)
	var typ pb.ConfChangeType
	switch kind {
	case confAddLearner:
		if voter {
			return confOutcome{err: fmt.Errorf("raftstore: %s %d: it is a voter: %w", kind, id, errdefs.ErrExist)}
		}
		typ = pb.ConfChangeAddLearnerNode
	case confPromote:
		if voter {
			return confOutcome{noop: true}
		}
		if !learner {
			return confOutcome{err: fmt.Errorf("raftstore: %s %d: not a member: %w", kind, id, errdefs.ErrNotFound)}
		}
		typ = pb.ConfChangeAddNode
	case confRemove, confDemote:
		if kind == confDemote && learner {
			return confOutcome{noop: true}
		}
		if !voter && !learner {
			return confOutcome{err: fmt.Errorf("raftstore: %s %d: not a member: %w", kind, id, errdefs.ErrNotFound)}
		}
		if voter {
			if err := n.checkVoterLoss(kind, id); err != nil {
				return confOutcome{err: err}
			}
			if id == n.cfg.ID {
				return confOutcome{transfer: true}
			}
		}
		typ = pb.ConfChangeRemoveNode
		if kind == confDemote {
			typ = pb.ConfChangeAddLearnerNode // on a voter, raft turns it into a learner
		}
	}
	reqID := n.nextRequestID()
	cc := &pb.ConfChangeV2{
		Changes: []*pb.ConfChangeSingle{{Type: typ.Enum(), NodeId: &id}},
		Context: binary.BigEndian.AppendUint64(nil, reqID),
	}
	cc.Context = append(cc.Context, payload...)
	ch := n.addWaiter(reqID)
	if err := n.rn.ProposeConfChange(cc); err != nil {
		n.dropWaiter(reqID)
		if errors.Is(err, raft.ErrProposalDropped) {
			return confOutcome{err: errConfBusy}
		}
		return confOutcome{err: fmt.Errorf("raftstore: %s %d: %w", kind, id, err)}
	}
	n.confPending, n.confPendingIdx = true, 0
	return confOutcome{waiter: ch, reqID: reqID}
}

// checkVoterLoss refuses to remove or demote voter id when no voter would remain, or when the
// remaining voters would not have a reachable quorum (the change could then never commit, or
// would leave a group that cannot take writes).
func (n *Node) checkVoterLoss(kind confKind, id uint64) error {
	var rest []uint64
	for _, v := range n.confState.GetVoters() {
		if v != id {
			rest = append(rest, v)
		}
	}
	if len(rest) == 0 {
		return fmt.Errorf("raftstore: %s %d refused: it is the last voter, and a group without voters cannot elect a leader", kind, id)
	}
	if qe := quorumOf(rest, n.reachableSet()); qe.Reachable < qe.Needed {
		if n.leaderTicks < uint64(n.cfg.ElectionTick) {
			// A new leader has not heard from every member yet: decide once it had an
			// election timeout to.
			return errConfBusy
		}
		return fmt.Errorf("raftstore: %s %d refused: the remaining voters need a reachable quorum: %w", kind, id, qe)
	}
	return nil
}

// Members returns the current configuration, sorted by ID. Match and RecentActive are only
// known on the leader.
func (n *Node) Members(ctx context.Context) ([]Member, error) {
	var out []Member
	err := n.do(ctx, func() {
		cs := n.confState
		ids := slices.Sorted(func(yield func(uint64) bool) {
			for id := range memberSet(cs) {
				if !yield(id) {
					return
				}
			}
		})
		var prs map[uint64]tracker.Progress
		var reach map[uint64]bool
		if n.isLeader.Load() {
			prs = map[uint64]tracker.Progress{}
			n.rn.WithProgress(func(id uint64, _ raft.ProgressType, pr tracker.Progress) { prs[id] = pr })
			reach = n.reachableSet()
		}
		for _, id := range ids {
			m := Member{
				ID:      id,
				Voter:   slices.Contains(cs.GetVoters(), id) || slices.Contains(cs.GetVotersOutgoing(), id),
				Learner: slices.Contains(cs.GetLearners(), id) || slices.Contains(cs.GetLearnersNext(), id),
				Context: bytes.Clone(n.memberCtx[id]),
			}
			if pr, ok := prs[id]; ok {
				m.Match = pr.Match
				m.RecentActive = reach[id]
			}
			out = append(out, m)
		}
	})
	return out, err
}

// CaughtUp reports whether member id's log is within CaughtUpSlack entries of the leader's
// commit index and being replicated normally (not waiting for a snapshot or probing). The lead
// promotes a learner once it is caught up. It must be called on the leader (otherwise
// ErrNotLeader); an unknown ID fails with an error matching errdefs.ErrNotFound.
func (n *Node) CaughtUp(ctx context.Context, id uint64) (bool, error) {
	var ok bool
	var cerr error
	err := n.do(ctx, func() {
		if !n.isLeader.Load() {
			cerr = ErrNotLeader
			return
		}
		st := n.rn.BasicStatus()
		commit := st.HardState.GetCommit()
		found := false
		n.rn.WithProgress(func(pid uint64, _ raft.ProgressType, pr tracker.Progress) {
			if pid != id {
				return
			}
			found = true
			ok = pr.State == tracker.StateReplicate && pr.Match+CaughtUpSlack >= commit
		})
		if !found {
			cerr = fmt.Errorf("raftstore: member %d: not a member: %w", id, errdefs.ErrNotFound)
		}
	})
	if err != nil {
		return false, err
	}
	return ok, cerr
}

// TransferLeadership hands leadership to voter to (0: the most up-to-date reachable voter) and
// waits until that member leads, bounded by ctx. It must be called on the leader (otherwise
// ErrNotLeader, unless to already leads); to being this member is a no-op. raft gives up a
// transfer the target does not complete within an election timeout; TransferLeadership then
// asks again until ctx ends. Proposals made during a transfer are refused by raft and come back
// as errors, so callers retry them.
func (n *Node) TransferLeadership(ctx context.Context, to uint64) error {
	if err := n.waitReady(ctx); err != nil {
		return err
	}
	return n.transferLeadership(ctx, to, false)
}

func (n *Node) transferLeadership(ctx context.Context, to uint64, stopping bool) error {
	for first := true; ; first = false {
		var target uint64
		var terr error
		err := n.do(ctx, func() {
			if !n.isLeader.Load() {
				if lead := n.leader.Load(); lead != raft.None && (lead == to || (to == raft.None && !first)) {
					target = lead // already moved
					return
				}
				terr = ErrNotLeader
				return
			}
			target, terr = n.transferTarget(to)
			if terr == nil && target != n.cfg.ID {
				n.rn.TransferLeader(target)
			}
		})
		if err != nil {
			return err
		}
		if terr != nil {
			return terr
		}
		if target == n.cfg.ID {
			return nil
		}
		if n.leader.Load() == target {
			return nil
		}
		done, err := n.awaitLeaderIs(ctx, target)
		if err != nil || done {
			return err
		}
		if stopping {
			return fmt.Errorf("raftstore: leadership transfer to %d did not complete", target)
		}
	}
}

// awaitLeaderIs waits until target leads (true), for up to one election timeout while this
// member still leads (false: raft gave up the transfer), or for as long as ctx allows while no
// leader is known.
func (n *Node) awaitLeaderIs(ctx context.Context, target uint64) (bool, error) {
	timer := n.cfg.Clock.NewTimer(n.electionTimeout())
	defer timer.Stop()
	for {
		ch := n.leaderWatch()
		switch lead := n.leader.Load(); {
		case lead == target:
			return true, nil
		case lead != raft.None && lead != n.cfg.ID:
			return false, fmt.Errorf("raftstore: leadership moved to %d instead of %d", lead, target)
		}
		select {
		case <-ch:
		case <-timer.C():
			if n.isLeader.Load() {
				return false, nil
			}
			timer.Reset(n.electionTimeout())
		case <-n.donec:
			return false, ErrStopped
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
}

// transferTarget picks the member to hand leadership to (on the loop, on the leader).
func (n *Node) transferTarget(to uint64) (uint64, error) {
	voters := n.confState.GetVoters()
	if to != raft.None {
		if !slices.Contains(voters, to) {
			return 0, fmt.Errorf("raftstore: transferring leadership to %d: not a voter: %w", to, errdefs.ErrNotFound)
		}
		return to, nil
	}
	reach := n.reachableSet()
	var best uint64
	var bestMatch uint64
	n.rn.WithProgress(func(id uint64, typ raft.ProgressType, pr tracker.Progress) {
		if id == n.cfg.ID || typ != raft.ProgressTypePeer || !slices.Contains(voters, id) || !reach[id] {
			return
		}
		if best == raft.None || pr.Match > bestMatch || (pr.Match == bestMatch && id < best) {
			best, bestMatch = id, pr.Match
		}
	})
	if best == raft.None {
		return 0, fmt.Errorf("raftstore: transferring leadership: no other reachable voter among %v", voters)
	}
	return best, nil
}
