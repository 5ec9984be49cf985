package raftstore

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

var (
	// ErrStopped is returned by calls on a node that is not running: never started, stopped,
	// or failed (see Node.Err).
	ErrStopped = errors.New("raftstore: node is not running")
	// ErrNotLeader is returned by Propose when this member is not the raft leader. The entry
	// was not proposed; it is safe to retry on the leader.
	ErrNotLeader = errors.New("raftstore: not the leader")
	// ErrLeadershipLost is returned by Propose when this member lost leadership while the
	// entry was in flight. The outcome is unknown: the new leader may still commit the entry.
	ErrLeadershipLost = errors.New("raftstore: leadership lost while proposing; outcome unknown")
	// ErrCorrupt is wrapped by errors about a database file that cannot be read as a raftstore
	// log (damaged, truncated, or not a raftstore file). The message names the file.
	ErrCorrupt = errors.New("database corrupt")
)

// headerLen is the size of the request ID prefixed to every proposed entry's data.
const headerLen = 8

// Node is one member of a raft group: a durable, replicated log that applies committed entries
// to a StateMachine. Create it with New, then Start it. All methods are safe for concurrent use.
type Node struct {
	cfg    Config
	logger *slog.Logger
	ctr    counters

	mu       sync.Mutex
	started  bool
	stopping bool
	err      error

	stopc  chan struct{} // closed by Stop
	donec  chan struct{} // closed when the loop has exited and the database is closed
	readyc chan struct{} // closed once a leader is known and replay is done

	propc chan proposal
	stepc chan *pb.Message
	opc   chan func()

	waitMu  sync.Mutex
	waiters map[uint64]chan result
	reqSeq  atomic.Uint64

	leader   atomic.Uint64
	isLeader atomic.Bool
	applied  atomic.Uint64

	subMu      sync.Mutex
	subs       map[*subscription]struct{}
	subsClosed bool

	// Owned by the loop goroutine once Start returns.
	disk        *diskStore
	ms          *raft.MemoryStorage
	rn          *raft.RawNode
	metrics     *metrics
	confState   *pb.ConfState
	appliedIdx  uint64
	snapIndex   uint64
	startCommit uint64
	readyDone   bool
	wasLeader   bool
}

type proposal struct {
	id   uint64
	data []byte // header + payload
}

type result struct {
	val any
	err error
}

// New validates cfg and returns a Node. It opens nothing and starts nothing. cfg is copied.
func New(cfg Config) (*Node, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.Peers = slices.Clone(cfg.Peers)
	logger := cfg.Logger
	if logger == nil {
		logger = discardLogger()
	}
	n := &Node{
		cfg:     cfg,
		logger:  logger.With("component", "raftstore", "raft_id", cfg.ID),
		stopc:   make(chan struct{}),
		donec:   make(chan struct{}),
		readyc:  make(chan struct{}),
		propc:   make(chan proposal, cfg.MaxProposalBatch),
		stepc:   make(chan *pb.Message, 1024),
		opc:     make(chan func()),
		waiters: make(map[uint64]chan result),
		subs:    make(map[*subscription]struct{}),
	}
	return n, nil
}

// Start opens (or creates) the database under Config.Dir, restores the latest snapshot into the
// StateMachine, bootstraps a new cluster if the database is new, and starts the raft loop, which
// replays committed entries after the snapshot. It returns once the loop runs; wait on Ready for
// replay and leader election. Start may be called once; ctx bounds opening only.
func (n *Node) Start(ctx context.Context) (err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.started {
		return errors.New("raftstore: Start called twice")
	}
	if n.stopping {
		return ErrStopped
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	n.started = true
	defer func() {
		if err != nil {
			// Leave the node stopped so later calls see ErrStopped rather than hang.
			n.stopping = true
			n.err = err
			close(n.stopc)
			n.closeSubs()
			close(n.donec)
		}
	}()
	var base [8]byte
	if _, err := rand.Read(base[:]); err != nil {
		return fmt.Errorf("raftstore: request ID seed: %w", err)
	}
	// Request IDs start at a random point so that entries proposed by an earlier incarnation of
	// this member (still in the log) do not match this incarnation's waiters.
	n.reqSeq.Store(binary.BigEndian.Uint64(base[:]))

	disk, st, err := openDisk(n.cfg.Dir, n.cfg.ID, n.cfg.UnsafeNoFsync)
	if err != nil {
		return err
	}
	disk.committed = func(synced bool) {
		n.ctr.dbCommits.Add(1)
		if synced {
			n.ctr.fsyncs.Add(1)
		}
	}
	n.disk = disk
	if err := n.restore(ctx, st); err != nil {
		_ = disk.close()
		return err
	}
	m, err := newMetrics(n, n.cfg.Registerer)
	if err != nil {
		_ = disk.close()
		return err
	}
	n.metrics = m
	n.logger.Info("raft log opened", "path", disk.path, "new", st.fresh, "snapshot_index", n.snapIndex,
		"commit", n.startCommit, "entries", len(st.entries))
	go n.run()
	return nil
}

// restore builds the in-memory raft state from what was read from disk.
func (n *Node) restore(ctx context.Context, st *loadedState) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("raftstore: %s: %w: restoring raft state: %v", n.disk.path, ErrCorrupt, r)
		}
	}()
	n.ms = raft.NewMemoryStorage()
	n.confState = &pb.ConfState{}
	if st.snapshot != nil {
		if err := n.ms.ApplySnapshot(st.snapshot); err != nil {
			return fmt.Errorf("raftstore: %s: %w: snapshot: %w", n.disk.path, ErrCorrupt, err)
		}
		md := st.snapshot.GetMetadata()
		if err := n.cfg.StateMachine.Restore(md.GetIndex(), st.snapshot.GetData()); err != nil {
			return fmt.Errorf("raftstore: restoring snapshot at index %d into StateMachine: %w", md.GetIndex(), err)
		}
		n.snapIndex, n.appliedIdx = md.GetIndex(), md.GetIndex()
		n.applied.Store(n.appliedIdx)
		n.confState = proto.Clone(md.GetConfState()).(*pb.ConfState)
	}
	if st.hard != nil {
		if err := n.ms.SetHardState(st.hard); err != nil {
			return err
		}
	}
	if err := n.ms.Append(st.entries); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	n.rn, err = raft.NewRawNode(&raft.Config{
		ID:              n.cfg.ID,
		ElectionTick:    n.cfg.ElectionTick,
		HeartbeatTick:   n.cfg.HeartbeatTick,
		Storage:         n.ms,
		Applied:         n.appliedIdx,
		MaxSizePerMsg:   n.cfg.MaxSizePerMsg,
		MaxInflightMsgs: n.cfg.MaxInflightMsgs,
		// A leader that cannot hear from a quorum steps down, so a partitioned leader stops
		// accepting writes that can never commit.
		CheckQuorum: true,
		// A member rejoining after a partition cannot disrupt the cluster with a higher term.
		PreVote: true,
		// Forwarding is done above raft (a later layer); here a follower refuses proposals so
		// that Propose can say ErrNotLeader.
		DisableProposalForwarding: true,
		StepDownOnRemoval:         true,
		Logger:                    raftLogger{l: n.logger},
	})
	if err != nil {
		return fmt.Errorf("raftstore: creating raft node: %w", err)
	}
	n.startCommit = st.hard.GetCommit()
	if st.fresh && !n.cfg.Join {
		peers := n.cfg.Peers
		if len(peers) == 0 {
			peers = []uint64{n.cfg.ID}
		}
		rp := make([]raft.Peer, len(peers))
		for i, id := range peers {
			rp[i] = raft.Peer{ID: id}
		}
		if err := n.rn.Bootstrap(rp); err != nil {
			return fmt.Errorf("raftstore: bootstrapping cluster: %w", err)
		}
		n.startCommit = uint64(len(rp))
	}
	return nil
}

// Ready returns a channel closed once a leader is known and every entry committed before Start
// has been applied to the StateMachine.
func (n *Node) Ready() <-chan struct{} { return n.readyc }

// Done returns a channel closed once the node has stopped (by Stop or by failing; see Err) and
// its database is closed.
func (n *Node) Done() <-chan struct{} { return n.donec }

// Err says why the node stopped: nil while running and after a clean Stop, otherwise the error
// that stopped it (a failed Start, a database write failure, a StateMachine error).
func (n *Node) Err() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.err
}

// IsLeader reports whether this member is currently the raft leader.
func (n *Node) IsLeader() bool { return n.isLeader.Load() }

// Leader returns the raft ID of the current leader, or 0 if none is known.
func (n *Node) Leader() uint64 { return n.leader.Load() }

// AppliedIndex returns the index of the last entry applied to the StateMachine.
func (n *Node) AppliedIndex() uint64 { return n.applied.Load() }

// ID returns this member's raft ID.
func (n *Node) ID() uint64 { return n.cfg.ID }

// Stats returns counters since Start.
func (n *Node) Stats() Stats { return n.ctr.stats() }

// Path returns the database file's path.
func (n *Node) Path() string { return filepath.Join(n.cfg.Dir, DBFileName) }

// Propose appends data to the replicated log and returns the StateMachine.Apply result for it,
// once the entry is committed and applied on this member.
//
// Propose waits for Ready first (bounded by ctx). It returns ErrNotLeader at once if this member
// is not the leader (nothing was proposed), ErrStopped if the node is not running, and
// ErrLeadershipLost if leadership was lost while the entry was in flight. If ctx ends first it
// returns ctx.Err(): the entry may still commit and be applied later, without anyone receiving
// the result. Likewise an entry in flight when Stop is called may have been persisted and will
// then be applied after the next Start. data is copied; the caller may reuse it.
func (n *Node) Propose(ctx context.Context, data []byte) (any, error) {
	if err := ctx.Err(); err != nil {
		return nil, err // never propose under a context that is already done
	}
	if !n.running() {
		return nil, ErrStopped
	}
	select {
	case <-n.readyc:
	case <-n.donec:
		return nil, ErrStopped
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if !n.isLeader.Load() {
		return nil, ErrNotLeader
	}
	id := n.reqSeq.Add(1)
	if id == 0 { // 0 means "no waiter"
		id = n.reqSeq.Add(1)
	}
	buf := make([]byte, headerLen+len(data))
	binary.BigEndian.PutUint64(buf, id)
	copy(buf[headerLen:], data)
	ch := make(chan result, 1)
	n.waitMu.Lock()
	n.waiters[id] = ch
	n.waitMu.Unlock()

	select {
	case n.propc <- proposal{id: id, data: buf}:
	case <-n.donec:
		n.dropWaiter(id)
		return nil, ErrStopped
	case <-ctx.Done():
		n.dropWaiter(id)
		return nil, ctx.Err()
	}
	select {
	case r := <-ch:
		return r.val, r.err
	case <-n.donec:
		// The loop fails all waiters before closing donec, so a result may be waiting.
		select {
		case r := <-ch:
			return r.val, r.err
		default:
			return nil, ErrStopped
		}
	case <-ctx.Done():
		n.dropWaiter(id)
		return nil, ctx.Err()
	}
}

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
// id. Transports must call it for every MsgSnap they are given.
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

func (n *Node) running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.started && !n.stopping
}

func (n *Node) dropWaiter(id uint64) {
	n.waitMu.Lock()
	delete(n.waiters, id)
	n.waitMu.Unlock()
}

func (n *Node) deliver(id uint64, r result) {
	if id == 0 {
		return
	}
	n.waitMu.Lock()
	ch, ok := n.waiters[id]
	delete(n.waiters, id)
	n.waitMu.Unlock()
	if ok {
		ch <- r // buffered, one send per waiter
	}
}

func (n *Node) failWaiters(err error) {
	n.waitMu.Lock()
	defer n.waitMu.Unlock()
	for id, ch := range n.waiters {
		ch <- result{err: err}
		delete(n.waiters, id)
	}
}

// Stop stops the raft loop and closes the database. It is idempotent and safe to call before
// Start (the node then never starts). It waits for the loop to exit, bounded by ctx; if ctx ends
// first (a StateMachine call is stuck), Stop returns ctx.Err() and the loop closes the database
// when that call returns. Pending Propose calls return ErrStopped.
func (n *Node) Stop(ctx context.Context) error {
	n.mu.Lock()
	if !n.started {
		if !n.stopping {
			n.stopping = true
			close(n.stopc)
			n.closeSubs()
			close(n.donec)
		}
		n.mu.Unlock()
		return nil
	}
	if !n.stopping {
		n.stopping = true
		close(n.stopc)
	}
	n.mu.Unlock()
	select {
	case <-n.donec:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
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
	ticker := time.NewTicker(n.cfg.TickInterval)
	defer ticker.Stop()
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
		case <-ticker.C:
			n.rn.Tick()
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
		case f := <-n.opc:
			f()
		}
	}
}

func (n *Node) propose(p proposal) {
	if err := n.rn.Propose(p.data); err != nil {
		if errors.Is(err, raft.ErrProposalDropped) && !n.isLeader.Load() {
			err = ErrNotLeader
		} else {
			err = fmt.Errorf("raftstore: proposal refused: %w", err)
		}
		n.deliver(p.id, result{err: err})
		return
	}
	n.ctr.proposals.Add(1)
}

func (n *Node) step(m *pb.Message) {
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
	if rd.SoftState != nil {
		n.leader.Store(rd.SoftState.Lead)
		n.isLeader.Store(rd.SoftState.RaftState == raft.StateLeader)
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
	}
	if err := n.ms.Append(rd.Entries); err != nil {
		return fmt.Errorf("raftstore: appending to memory log: %w", err)
	}
	if !raft.IsEmptyHardState(rd.HardState) {
		if err := n.ms.SetHardState(rd.HardState); err != nil {
			return err
		}
	}
	// 2. Send: only after the writes above are durable.
	if len(rd.Messages) > 0 && n.cfg.Transport != nil {
		n.cfg.Transport.Send(rd.Messages)
	}
	// 3. Apply committed entries in order.
	if err := n.apply(rd.CommittedEntries); err != nil {
		return err
	}
	// 4. Hand the Ready back.
	n.rn.Advance(rd)

	n.noteLeadership()
	if err := n.maybeSnapshot(); err != nil {
		return err
	}
	if !n.readyDone && n.leader.Load() != raft.None && n.appliedIdx >= n.startCommit {
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
		n.failWaiters(ErrLeadershipLost)
	}
	n.notifySubs(now)
}

func (n *Node) apply(ents []*pb.Entry) error {
	for _, e := range ents {
		idx := e.GetIndex()
		if idx <= n.appliedIdx {
			continue
		}
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
			if err := n.applyConfChange(cc); err != nil {
				return err
			}
		case pb.EntryConfChangeV2:
			cc := &pb.ConfChangeV2{}
			if err := proto.Unmarshal(e.GetData(), cc); err != nil {
				return fmt.Errorf("raftstore: %w: conf change at entry %d: %w", ErrCorrupt, idx, err)
			}
			if err := n.applyConfChange(cc); err != nil {
				return err
			}
		default:
			return fmt.Errorf("raftstore: %w: entry %d has unknown type %d", ErrCorrupt, idx, e.GetType())
		}
		n.markApplied(idx)
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

func (n *Node) applyConfChange(cc pb.ConfChangeI) error {
	n.confState = n.rn.ApplyConfChange(cc)
	n.logger.Info("configuration changed", "voters", n.confState.Voters, "learners", n.confState.Learners)
	return n.disk.saveConfState(n.confState)
}

// maybeSnapshot snapshots the StateMachine every SnapshotInterval applied entries and compacts
// the log, keeping SnapshotCatchUpEntries entries before the snapshot.
func (n *Node) maybeSnapshot() error {
	if n.appliedIdx-n.snapIndex < n.cfg.SnapshotInterval {
		return nil
	}
	data, err := n.cfg.StateMachine.Snapshot()
	if err != nil {
		return fmt.Errorf("raftstore: StateMachine.Snapshot at index %d: %w", n.appliedIdx, err)
	}
	snap, err := n.ms.CreateSnapshot(n.appliedIdx, n.confState, data)
	if err != nil {
		return fmt.Errorf("raftstore: creating snapshot at index %d: %w", n.appliedIdx, err)
	}
	var compact uint64
	if n.appliedIdx > n.cfg.SnapshotCatchUpEntries {
		compact = n.appliedIdx - n.cfg.SnapshotCatchUpEntries
	}
	if err := n.disk.saveSnapshot(snap, compact); err != nil {
		return err
	}
	first, err := n.ms.FirstIndex()
	if err != nil {
		return err
	}
	if compact >= first {
		if err := n.ms.Compact(compact); err != nil {
			return fmt.Errorf("raftstore: compacting log to %d: %w", compact, err)
		}
	}
	n.snapIndex = n.appliedIdx
	n.ctr.snapshots.Add(1)
	n.logger.Debug("snapshot taken", "index", n.appliedIdx, "compacted_to", compact, "bytes", len(data))
	return nil
}

// finish runs on the loop goroutine as it exits.
func (n *Node) finish(loopErr error) {
	if loopErr != nil {
		n.logger.Error("raft loop stopped", "err", loopErr)
	}
	n.isLeader.Store(false)
	n.leader.Store(raft.None)
	n.failWaiters(ErrStopped)
	n.metrics.unregister()
	if err := n.disk.close(); err != nil && loopErr == nil {
		loopErr = err
	}
	n.mu.Lock()
	n.stopping = true
	if n.err == nil {
		n.err = loopErr
	}
	n.mu.Unlock()
	n.closeSubs()
	close(n.donec)
}
