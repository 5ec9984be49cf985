package raftstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"runtime/debug"
	"slices"

	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// Step hands a message received from a peer to raft. It returns once the message is queued for
// the raft loop (raft tolerates lost messages, so Step does not report raft's verdict), or with
// ctx.Err() or ErrStopped. The caller must not modify m afterwards.
func (n *Node) Step(ctx context.Context, m *pb.Message) error {
	if m == nil {
		return errors.New("raftstore: Step: nil message")
	}
	if !n.running() {
		return ErrStopped
	}
	select {
	case n.stepc <- m:
		return nil
	case <-n.donec:
		return ErrStopped
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ReportUnreachable tells raft that the last message to member id could not be delivered, so
// the leader stops pipelining to it. Transports call it; it does not wait for the loop.
func (n *Node) ReportUnreachable(id uint64) {
	n.doAsync(func() { n.rn.ReportUnreachable(id) })
}

// ReportSnapshot tells raft whether a snapshot (a MsgSnap from Transport.Send) reached member
// id. Transports must call it for every MsgSnap they are given. Like ReportUnreachable it does
// not wait for the loop, so a transport may call it from Send.
func (n *Node) ReportSnapshot(id uint64, ok bool) {
	status := raft.SnapshotFinish
	if !ok {
		status = raft.SnapshotFailure
	}
	n.doAsync(func() { n.rn.ReportSnapshot(id, status) })
}

// Status returns raft's view of the group (term, commit, progress of followers when leader).
func (n *Node) Status(ctx context.Context) (raft.Status, error) {
	ch := make(chan raft.Status, 1)
	if err := n.do(ctx, func() { ch <- n.rn.Status() }); err != nil {
		return raft.Status{}, err
	}
	return <-ch, nil
}

// do runs f on the loop goroutine and waits until it has run.
func (n *Node) do(ctx context.Context, f func()) error {
	if !n.running() {
		return ErrStopped
	}
	done := make(chan struct{})
	select {
	case n.opc <- func() { f(); close(done) }:
	case <-n.donec:
		return ErrStopped
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-done:
		return nil
	case <-n.donec:
		return ErrStopped
	}
}

func (n *Node) doAsync(f func()) {
	if !n.running() {
		return
	}
	go func() {
		select {
		case n.opc <- f:
		case <-n.donec:
		}
	}()
}

// run is the raft loop: it owns the RawNode, the storage and the StateMachine.
func (n *Node) run() {
	var loopErr error
	defer func() {
		if r := recover(); r != nil {
			loopErr = fmt.Errorf("raftstore: raft loop panicked: %v", r)
			n.logger.Error("raft loop panicked", "panic", r, "stack", string(debug.Stack()))
		}
		n.finish(loopErr)
	}()
	// A timer re-armed at every tick, not a time.Ticker, so the tick follows Config.Clock; a
	// loop held up past a tick gets one tick, as a Ticker would give it, not a burst.
	ticker := n.cfg.Clock.NewTimer(n.cfg.TickInterval)
	defer ticker.Stop()
	// The configuration replay will reach is the one persisted; report it now.
	start := n.startConf
	if len(memberSet(n.confState)) > 0 {
		start = n.confState
	}
	n.notifyMembers(start, true)
	for {
		select {
		case <-n.stopc: // checked first so a long replay or a flood of work cannot delay Stop
			return
		default:
		}
		n.maybeCampaign()
		if n.rn.HasReady() {
			if err := n.handleReady(); err != nil {
				loopErr = err
				return
			}
			continue
		}
		select {
		case <-n.stopc:
			return
		case <-ticker.C():
			ticker.Reset(n.cfg.TickInterval)
			n.tick()
		case p := <-n.propc:
			n.propose(p)
			// Take everything already queued: these share the next Ready and its fsync.
			for i := 1; i < n.cfg.MaxProposalBatch; i++ {
				select {
				case p := <-n.propc:
					n.propose(p)
					continue
				default:
				}
				break
			}
		case m := <-n.stepc:
			n.step(m)
			for i := 1; i < n.cfg.MaxProposalBatch; i++ {
				select {
				case m := <-n.stepc:
					n.step(m)
					continue
				default:
				}
				break
			}
		case r := <-n.readc:
			// Every call already queued shares one ReadIndex round.
			reqs := []*readReq{r}
			for len(reqs) < n.cfg.MaxProposalBatch {
				select {
				case r := <-n.readc:
					reqs = append(reqs, r)
					continue
				default:
				}
				break
			}
			n.startReadRound(reqs)
		case f := <-n.opc:
			f()
		case r := <-n.snapc:
			if err := n.landSnapshot(r); err != nil {
				loopErr = err
				return
			}
			n.startSnapshotIfDue()
		}
	}
}

func (n *Node) step(m *pb.Message) {
	if from := m.GetFrom(); from != raft.None && from != n.cfg.ID {
		n.lastHeard[from] = n.ticks
	}
	if n.catchUp && n.catchUpTarget == 0 && m.GetType() == pb.MsgApp && m.GetCommit() > 0 {
		// Only a leader sends appends; its commit index then is what a joining member must
		// reach before it calls itself ready.
		n.catchUpTarget = m.GetCommit()
	}
	if err := n.rn.Step(m); err != nil {
		n.logger.Debug("dropping raft message", "type", m.GetType().String(), "from", m.GetFrom(), "err", err)
	}
}

// maybeCampaign starts an election at once when this member is the only voter, so a
// single-member cluster is ready in a few loop iterations instead of an election timeout.
func (n *Node) maybeCampaign() {
	if n.isLeader.Load() || len(n.confState.Voters) != 1 || n.confState.Voters[0] != n.cfg.ID ||
		len(n.confState.VotersOutgoing) != 0 {
		return
	}
	st := n.rn.BasicStatus()
	if st.RaftState != raft.StateFollower || st.Lead != raft.None || n.appliedIdx < st.HardState.GetCommit() {
		return
	}
	if err := n.rn.Campaign(); err != nil {
		n.logger.Debug("campaign failed", "err", err)
	}
}

func (n *Node) handleReady() error {
	rd := n.rn.Ready()
	n.ctr.readies.Add(1)
	leaderChanged := false
	if rd.SoftState != nil {
		isLeader := rd.SoftState.RaftState == raft.StateLeader
		if isLeader && !n.isLeader.Load() {
			n.leaderTicks = 0
		}
		if !isLeader {
			n.quorumLost.Store(nil)
		}
		prev := n.leader.Swap(rd.SoftState.Lead)
		n.isLeader.Store(isLeader)
		if prev != rd.SoftState.Lead {
			n.leaderChanged()
			leaderChanged = true
		}
	}
	if n.confPending && n.confPendingIdx == 0 && len(rd.Entries) > 0 {
		n.confPendingIdx = rd.Entries[len(rd.Entries)-1].GetIndex()
	}
	// A leader sends before it persists: its appends reach the followers while its own fsync
	// runs, so a write costs one fsync of latency instead of two in a row (the Raft thesis,
	// 10.2.1; etcd does the same). That is safe for a leader because its hard state (term,
	// vote) was persisted before it became leader, and it counts its own log toward a commit
	// only once this Ready is advanced, after the save below. Followers and candidates send
	// after persisting: their replies promise durability.
	sentEarly := false
	if n.isLeader.Load() && rd.SoftState == nil && len(rd.Messages) > 0 && n.cfg.Transport != nil {
		n.cfg.Transport.Send(rd.Messages)
		sentEarly = true
	}
	// 1. Persist hard state, entries and any received snapshot: one transaction, at most one
	// fsync (none when only the commit index moved).
	if err := n.disk.save(rd.HardState, rd.Entries, rd.Snapshot, rd.MustSync); err != nil {
		return err
	}
	if !raft.IsEmptySnap(rd.Snapshot) {
		if err := n.ms.ApplySnapshot(rd.Snapshot); err != nil {
			return fmt.Errorf("raftstore: applying received snapshot: %w", err)
		}
		md := rd.Snapshot.GetMetadata()
		if err := n.cfg.StateMachine.Restore(md.GetIndex(), rd.Snapshot.GetData()); err != nil {
			return fmt.Errorf("raftstore: restoring received snapshot at index %d: %w", md.GetIndex(), err)
		}
		n.confState = proto.Clone(md.GetConfState()).(*pb.ConfState)
		n.snapIndex, n.appliedIdx = md.GetIndex(), md.GetIndex()
		n.applied.Store(n.appliedIdx)
		members := memberSet(n.confState)
		for id := range n.memberCtx {
			if !members[id] {
				delete(n.memberCtx, id)
			}
		}
		n.notifyMembers(n.confState, false)
	}
	if err := n.ms.Append(rd.Entries); err != nil {
		return fmt.Errorf("raftstore: appending to memory log: %w", err)
	}
	if !raft.IsEmptyHardState(rd.HardState) {
		if err := n.ms.SetHardState(rd.HardState); err != nil {
			return err
		}
	}
	// 2. Send: only after the writes above are durable (a leader sent already).
	if !sentEarly && len(rd.Messages) > 0 && n.cfg.Transport != nil {
		n.cfg.Transport.Send(rd.Messages)
	}
	// 3. Apply committed entries in order.
	if err := n.apply(rd.CommittedEntries); err != nil {
		return err
	}
	// Read barriers answered in this Ready, or whose index was just applied, return.
	n.handleReadStates(rd.ReadStates)
	// 4. Hand the Ready back.
	n.rn.Advance(rd)
	if leaderChanged {
		n.readsOnLeaderChange()
	}

	if n.confPending && n.confPendingIdx != 0 && n.appliedIdx >= n.confPendingIdx {
		n.confPending, n.confPendingIdx = false, 0
	}
	n.noteLeadership()
	if err := n.maybeSnapshot(); err != nil {
		return err
	}
	caughtUp := !n.catchUp || (n.catchUpTarget != 0 && n.appliedIdx >= n.catchUpTarget)
	if !n.readyDone && n.leader.Load() != raft.None && n.appliedIdx >= n.startCommit && caughtUp {
		n.readyDone = true
		close(n.readyc)
		n.logger.Info("raft log ready", "leader", n.leader.Load(), "applied", n.appliedIdx)
	}
	return nil
}

// noteLeadership tells subscribers about a leadership change and fails proposals in flight
// when leadership is lost. It runs after the Ready's committed entries were applied, so
// proposals that did commit got their results first.
func (n *Node) noteLeadership() {
	now := n.isLeader.Load()
	if now == n.wasLeader {
		return
	}
	n.wasLeader = now
	n.logger.Info("leadership changed", "leader", now, "lead", n.leader.Load())
	if !now {
		n.confPending, n.confPendingIdx = false, 0
		err := ErrLeadershipLost
		if n.leader.Load() == raft.None {
			err = fmt.Errorf("%w: %w", ErrLeadershipLost, n.quorumError())
		}
		n.failWaiters(err)
	}
	n.notifySubs(now)
}

func (n *Node) apply(ents []*pb.Entry) error {
	for _, e := range ents {
		idx := e.GetIndex()
		if idx <= n.appliedIdx {
			continue
		}
		n.appliedTerm = e.GetTerm()
		var confReq uint64
		switch e.GetType() {
		case pb.EntryNormal:
			data := e.GetData()
			if len(data) == 0 {
				break // a new leader's empty entry
			}
			if len(data) < headerLen {
				return fmt.Errorf("raftstore: %s: %w: entry %d has %d bytes, shorter than the request header", n.disk.path, ErrCorrupt, idx, len(data))
			}
			id := binary.BigEndian.Uint64(data)
			val := n.cfg.StateMachine.Apply(idx, data[headerLen:])
			// AppliedIndex covers the entry before its proposer wakes up.
			n.markApplied(idx)
			n.deliver(id, result{val: val})
		case pb.EntryConfChange:
			cc := &pb.ConfChange{}
			if err := proto.Unmarshal(e.GetData(), cc); err != nil {
				return fmt.Errorf("raftstore: %w: conf change at entry %d: %w", ErrCorrupt, idx, err)
			}
			if err := n.applyConfChange(cc, nil, cc.GetContext()); err != nil {
				return err
			}
		case pb.EntryConfChangeV2:
			cc := &pb.ConfChangeV2{}
			if err := proto.Unmarshal(e.GetData(), cc); err != nil {
				return fmt.Errorf("raftstore: %w: conf change at entry %d: %w", ErrCorrupt, idx, err)
			}
			// Our conf changes carry a request ID header, then the member context.
			var payload []byte
			if c := cc.GetContext(); len(c) >= headerLen {
				confReq, payload = binary.BigEndian.Uint64(c), c[headerLen:]
			}
			if err := n.applyConfChange(cc, cc, payload); err != nil {
				return err
			}
		default:
			return fmt.Errorf("raftstore: %w: entry %d has unknown type %d", ErrCorrupt, idx, e.GetType())
		}
		n.markApplied(idx)
		n.deliver(confReq, result{})
	}
	return nil
}

func (n *Node) markApplied(idx uint64) {
	if idx == n.appliedIdx {
		return
	}
	n.appliedIdx = idx
	n.applied.Store(idx)
	n.ctr.applied.Add(1)
}

// applyConfChange applies a committed conf change (v2 is nil for a v1 change) and persists the
// new configuration with the member context payload for the members it adds.
func (n *Node) applyConfChange(cc pb.ConfChangeI, v2 *pb.ConfChangeV2, payload []byte) error {
	if v2 == nil {
		v2 = cc.AsV2()
	}
	n.confState = n.rn.ApplyConfChange(cc)
	var set map[uint64][]byte
	if len(payload) > 0 {
		set = map[uint64][]byte{}
		for _, ch := range v2.GetChanges() {
			if t := ch.GetType(); t == pb.ConfChangeAddNode || t == pb.ConfChangeAddLearnerNode {
				set[ch.GetNodeId()] = bytes.Clone(payload)
			}
		}
	}
	for id, v := range set {
		n.memberCtx[id] = v
	}
	members := memberSet(n.confState)
	if n.snapIndex > 0 {
		for _, ch := range v2.GetChanges() {
			if t := ch.GetType(); t == pb.ConfChangeAddNode || t == pb.ConfChangeAddLearnerNode {
				n.snapForNewMember = true
			}
		}
	}
	for id := range n.memberCtx {
		if !members[id] {
			delete(n.memberCtx, id)
		}
	}
	n.logger.Info("configuration changed", "voters", n.confState.Voters, "learners", n.confState.Learners)
	if err := n.disk.saveConfState(n.confState, set); err != nil {
		return err
	}
	n.notifyMembers(n.confState, false)
	return nil
}

// notifyMembers calls Config.OnMembershipChange with cs's members if they differ from the last
// call (or always, with force).
func (n *Node) notifyMembers(cs *pb.ConfState, force bool) {
	ids := slices.Sorted(maps.Keys(memberSet(cs)))
	if !force && slices.Equal(ids, n.lastMembers) {
		return
	}
	n.lastMembers = ids
	if n.cfg.OnMembershipChange != nil {
		n.cfg.OnMembershipChange(slices.Clone(ids))
	}
}

// tick advances raft's clock and, on a leader, checks that a quorum is still reachable.
func (n *Node) tick() {
	n.ticks++
	n.rn.Tick()
	defer n.tickReads()
	if !n.isLeader.Load() {
		n.quorumLost.Store(nil)
		return
	}
	n.leaderTicks++
	if n.leaderTicks < uint64(n.cfg.ElectionTick) {
		return // followers have not had a full election timeout to answer yet
	}
	if qe := n.quorumError(); qe.Reachable < qe.Needed {
		n.quorumLost.Store(qe)
	} else {
		n.quorumLost.Store(nil)
	}
}
