package raftstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"
	"google.golang.org/protobuf/proto"

	"github.com/shoalhq/shoal/internal/clock"
)

// headerLen is the size of the request ID prefixed to every proposed entry's data.
const headerLen = 8

// Node is one member of a raft group: a durable, replicated log that applies committed entries
// to a StateMachine. Create it with New, then Start it. All methods are safe for concurrent use.
type Node struct {
	cfg    Config
	logger *slog.Logger
	ctr    counters

	mu            sync.Mutex
	started       bool
	stopRequested bool // Stop was called (it may still be handing leadership over)
	stopping      bool // the loop was told to stop
	err           error

	stopc  chan struct{} // closed by Stop
	donec  chan struct{} // closed when the loop has exited and the database is closed
	readyc chan struct{} // closed once a leader is known and replay is done

	propc chan proposal
	stepc chan *pb.Message
	opc   chan func()
	readc chan *readReq

	waitMu  sync.Mutex
	waiters map[uint64]chan result
	reqSeq  atomic.Uint64

	leader   atomic.Uint64
	isLeader atomic.Bool
	applied  atomic.Uint64
	// quorumLost is set by the loop while this member is a leader that has not heard from a
	// quorum for an election timeout, so Propose fails fast instead of waiting for CheckQuorum.
	quorumLost atomic.Pointer[QuorumError]

	leadMu sync.Mutex
	leadCh chan struct{} // closed and replaced whenever the known leader changes

	confSem chan struct{} // one membership change at a time on this node

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
	// memberCtx is the context each member was added with (persisted in the members bucket).
	memberCtx   map[uint64][]byte
	lastMembers []uint64 // as last passed to OnMembershipChange
	// ticks counts raft ticks; lastHeard is the tick at which each peer was last heard from.
	ticks       uint64
	lastHeard   map[uint64]uint64
	leaderTicks uint64 // ticks since this member became leader
	appliedTerm uint64 // term of the last applied entry
	// confPending: a conf change proposed here is not applied yet; confPendingIdx is an index at
	// or after it (0 until the Ready carrying it was seen).
	confPending    bool
	confPendingIdx uint64
	// catchUp: this member joined with an empty configuration; it is ready only once it has
	// applied up to catchUpTarget, the leader's commit index in the first append it received.
	catchUp       bool
	catchUpTarget uint64
	startConf     *pb.ConfState // the configuration persisted when the database was opened
	// snapForNewMember: a member was added after the latest snapshot; take a new one.
	snapForNewMember bool
	// readPending holds the ReadBarrier rounds raft has not answered yet, by request context;
	// readApplying the answered ones waiting for their index to be applied.
	readPending  map[string]*readRound
	readApplying []*readRound
	// noLeaderTicks counts the ticks since a leader was last known.
	noLeaderTicks uint64
	// startedAt is when the raft loop was started (set before it runs, then only read).
	startedAt time.Time

	// Background snapshots, when the StateMachine is a SnapshotCapturer (capturer non-nil).
	// At most one encoder runs (snapRunning); it sends its result on snapc (buffered, so it
	// never blocks) and the loop stores it. snapWG lets the loop's exit wait for it.
	capturer SnapshotCapturer
	snapc    chan snapResult
	snapWG   sync.WaitGroup
	// snapRunning: an encoder is running; snapRunningForMember: it was started for a member
	// added after the latest snapshot (snapForNewMember).
	snapRunning          bool
	snapRunningForMember bool
	// After a failed encoding, periodic snapshots count SnapshotInterval from snapFailIdx (the
	// failed capture's index) and a new member's snapshot waits for tick snapRetryTick.
	snapFailIdx   uint64
	snapRetryTick uint64
	// snapHeld counts the times raft asked for a snapshot to send and was told to wait.
	snapHeld uint64
}

// snapResult is a background snapshot encoder's outcome for the state captured at index, with
// the configuration as of that index.
type snapResult struct {
	index     uint64
	conf      *pb.ConfState
	data      []byte
	err       error
	forMember bool
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
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
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
		readc:   make(chan *readReq, cfg.MaxProposalBatch),
		waiters: make(map[uint64]chan result),
		subs:    make(map[*subscription]struct{}),
		leadCh:  make(chan struct{}),
		confSem: make(chan struct{}, 1),
		snapc:   make(chan snapResult, 1),
	}
	n.capturer, _ = cfg.StateMachine.(SnapshotCapturer)
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

	if n.cfg.ForceNewCluster {
		// Checked before opening, which would create the file.
		path := filepath.Join(n.cfg.Dir, DBFileName)
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("raftstore: invalid config: ForceNewCluster needs an existing database, and %s cannot be used: %w", path, err)
		}
	}
	disk, st, err := openDisk(n.cfg.Dir, n.cfg.ID, n.cfg.UnsafeNoFsync, n.cfg.Encryptor)
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
	if n.cfg.ForceNewCluster {
		if st.fresh {
			_ = disk.close()
			return fmt.Errorf("raftstore: invalid config: ForceNewCluster needs an existing database, and %s holds no raft state yet", disk.path)
		}
		changed, err := disk.forceNewCluster(n.cfg.ID, st)
		if err != nil {
			_ = disk.close()
			return err
		}
		if changed {
			n.logger.Warn("forced a new one-member cluster from the existing state", "path", disk.path,
				"commit", st.hard.GetCommit())
		}
	}
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
	n.startedAt = n.cfg.Clock.Now()
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
	n.memberCtx = st.members
	n.lastHeard = map[uint64]uint64{}
	n.readPending = map[string]*readRound{}
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
		Storage:         raftStorage{MemoryStorage: n.ms, n: n},
		Applied:         n.appliedIdx,
		MaxSizePerMsg:   n.cfg.MaxSizePerMsg,
		MaxInflightMsgs: n.cfg.MaxInflightMsgs,
		// A leader that cannot hear from a quorum steps down, so a partitioned leader stops
		// accepting writes that can never commit.
		CheckQuorum: true,
		// A member rejoining after a partition cannot disrupt the cluster with a higher term.
		PreVote: true,
		// Forwarding is done by Propose through Config.Forwarder, which returns the leader's
		// Apply result; raft's own forwarding would lose it, so followers refuse proposals.
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
		st.conf = &pb.ConfState{Voters: slices.Clone(peers)}
	}
	if n.cfg.Join && len(memberSet(n.confState)) == 0 && len(memberSet(st.conf)) == 0 {
		n.catchUp = true
	}
	n.startConf = st.conf
	return nil
}

// Ready returns a channel closed once a leader is known and every entry committed before Start
// has been applied to the StateMachine. For a member started with Config.Join, it is closed
// once the member was added and has applied the log (or a snapshot) up to the leader's commit
// index as of the first entries the leader sent it: it has caught up.
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
// Propose waits for Ready first (bounded by ctx). On the leader it proposes locally. On a
// follower, with Config.Forwarder set, it forwards data to the leader and returns (nil, the
// error Forward returned): the leader's Apply result comes back only as an error, and this
// member may apply the entry a little later than Propose returns. Without a Forwarder a follower
// returns ErrNotLeader (nothing was proposed). If no leader is known, Propose waits for one for
// up to one election timeout (ElectionTick*TickInterval) and then fails with a *QuorumError
// (errors.Is ErrNoQuorum) saying how many voters are reachable and how many are needed; a leader
// that has not heard from a quorum for an election timeout fails with one at once.
//
// It returns ErrStopped if the node is not running, and ErrLeadershipLost if leadership was
// lost while the entry was in flight. If ctx ends first it returns ctx.Err(): the entry may
// still commit and be applied later, without anyone receiving the result. Likewise an entry in
// flight when Stop is called may have been persisted and will then be applied after the next
// Start. data is copied; the caller may reuse it.
//
// Data longer than Config.MaxEntryBytes is refused at once with an error matching
// ErrEntryTooLarge (on a follower too, before forwarding): nothing is proposed.
func (n *Node) Propose(ctx context.Context, data []byte) (any, error) {
	if err := n.checkEntrySize(data); err != nil {
		return nil, err
	}
	if err := n.waitReady(ctx); err != nil {
		return nil, err
	}
	// A forward refused with ErrNotLeader (leadership moved before the leader proposed) is
	// retried on the new leader a few times; nothing was proposed, so retrying is safe.
	const maxForwardAttempts = 4
	for attempt := 1; ; attempt++ {
		if n.isLeader.Load() {
			val, err := n.proposeLocal(ctx, data)
			if errors.Is(err, ErrNotLeader) && attempt < maxForwardAttempts && ctx.Err() == nil {
				// Leadership was lost, or is being transferred, before the entry was
				// proposed: wait for the new leader and try there.
				if werr := n.awaitLeaderChange(ctx, n.cfg.ID); werr != nil {
					return nil, werr
				}
				continue
			}
			return val, err
		}
		lead, err := n.awaitLeader(ctx)
		if err != nil {
			return nil, err
		}
		if lead == n.cfg.ID {
			continue
		}
		if n.cfg.Forwarder == nil {
			return nil, ErrNotLeader
		}
		n.ctr.forwarded.Add(1)
		err = n.cfg.Forwarder.Forward(ctx, lead, data)
		if errors.Is(err, ErrNotLeader) && attempt < maxForwardAttempts && ctx.Err() == nil {
			if werr := n.awaitLeaderChange(ctx, lead); werr != nil {
				return nil, werr
			}
			continue
		}
		return nil, err
	}
}

// ProposeOnLeader is Propose without forwarding: on a member that is not the leader it returns
// ErrNotLeader at once. The receiving side of a Forwarder uses it, so that a forwarded entry is
// never forwarded again.
func (n *Node) ProposeOnLeader(ctx context.Context, data []byte) (any, error) {
	if err := n.checkEntrySize(data); err != nil {
		return nil, err
	}
	if err := n.waitReady(ctx); err != nil {
		return nil, err
	}
	return n.proposeLocal(ctx, data)
}

// checkEntrySize refuses data longer than Config.MaxEntryBytes: an entry the transport could
// not carry would commit on the leader and never replicate.
func (n *Node) checkEntrySize(data []byte) error {
	if len(data) > n.cfg.MaxEntryBytes {
		return fmt.Errorf("%w: %d bytes exceeds the limit of %d bytes (Config.MaxEntryBytes)",
			ErrEntryTooLarge, len(data), n.cfg.MaxEntryBytes)
	}
	return nil
}

// waitReady returns nil once Ready is closed, or ErrStopped or ctx.Err().
func (n *Node) waitReady(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err // never act under a context that is already done
	}
	if !n.running() {
		return ErrStopped
	}
	select {
	case <-n.readyc:
		return nil
	case <-n.donec:
		return ErrStopped
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (n *Node) nextRequestID() uint64 {
	id := n.reqSeq.Add(1)
	if id == 0 { // 0 means "no waiter"
		id = n.reqSeq.Add(1)
	}
	return id
}

func (n *Node) proposeLocal(ctx context.Context, data []byte) (any, error) {
	if !n.isLeader.Load() {
		return nil, ErrNotLeader
	}
	if qe := n.quorumLost.Load(); qe != nil {
		cp := *qe
		return nil, &cp
	}
	id := n.nextRequestID()
	buf := make([]byte, headerLen+len(data))
	binary.BigEndian.PutUint64(buf, id)
	copy(buf[headerLen:], data)
	ch := n.addWaiter(id)

	select {
	case n.propc <- proposal{id: id, data: buf}:
	case <-n.donec:
		n.dropWaiter(id)
		return nil, ErrStopped
	case <-ctx.Done():
		n.dropWaiter(id)
		return nil, ctx.Err()
	}
	r, err := n.waitResult(ctx, id, ch)
	if err != nil {
		return nil, err
	}
	return r.val, r.err
}

func (n *Node) addWaiter(id uint64) chan result {
	ch := make(chan result, 1)
	n.waitMu.Lock()
	n.waiters[id] = ch
	n.waitMu.Unlock()
	return ch
}

// waitResult waits for the result delivered to waiter id.
func (n *Node) waitResult(ctx context.Context, id uint64, ch chan result) (result, error) {
	select {
	case r := <-ch:
		return r, nil
	case <-n.donec:
		// The loop fails all waiters before closing donec, so a result may be waiting.
		select {
		case r := <-ch:
			return r, nil
		default:
			return result{}, ErrStopped
		}
	case <-ctx.Done():
		n.dropWaiter(id)
		return result{}, ctx.Err()
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
// Start (the node then never starts). On the leader of a group with other voters, Stop first
// hands leadership to the most up-to-date reachable voter, so the group does not wait an
// election timeout for a new leader; that is best effort and takes at most two election
// timeouts (or until ctx ends). Stop then waits for the loop to exit, bounded by ctx; if ctx
// ends first (a StateMachine call is stuck), Stop returns ctx.Err() and the loop closes the
// database when that call returns. A background snapshot encoder (SnapshotCapturer) that is
// running is waited for the same way: Done is closed only after it returned, and its result is
// dropped. Pending Propose calls return ErrStopped.
func (n *Node) Stop(ctx context.Context) error {
	n.mu.Lock()
	if !n.started {
		if !n.stopping {
			n.stopRequested = true
			n.stopping = true
			close(n.stopc)
			n.closeSubs()
			close(n.donec)
		}
		n.mu.Unlock()
		return nil
	}
	first := !n.stopRequested
	n.stopRequested = true
	n.mu.Unlock()
	if first && n.isLeader.Load() {
		tctx, cancel := context.WithTimeout(ctx, 2*n.electionTimeout())
		err := n.transferLeadership(tctx, raft.None, true)
		cancel()
		if err != nil {
			n.logger.Debug("no leadership transfer before stopping", "err", err)
		}
	}
	n.mu.Lock()
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

func (n *Node) propose(p proposal) {
	if err := n.rn.Propose(p.data); err != nil {
		if errors.Is(err, raft.ErrProposalDropped) && !n.isLeader.Load() {
			err = ErrNotLeader
		} else if errors.Is(err, raft.ErrProposalDropped) && n.rn.BasicStatus().LeadTransferee != raft.None {
			err = fmt.Errorf("raftstore: leadership is being transferred: %w", ErrNotLeader)
		} else {
			err = fmt.Errorf("raftstore: proposal refused: %w", err)
		}
		n.deliver(p.id, result{err: err})
		return
	}
	n.ctr.proposals.Add(1)
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

// maybeSnapshot snapshots the StateMachine every SnapshotInterval applied entries and compacts
// the log, keeping SnapshotCatchUpEntries entries before the snapshot.
//
// It also snapshots right after a member was added while the log is compacted: raft sends the
// latest snapshot to a member that needs one, and a member refuses a snapshot whose
// configuration does not include it, so the snapshot must postdate the addition.
//
// A StateMachine that is a SnapshotCapturer is snapshotted in the background (see
// startSnapshotIfDue); any other is encoded here, on the loop.
func (n *Node) maybeSnapshot() error {
	if n.capturer != nil {
		select {
		case r := <-n.snapc:
			if err := n.landSnapshot(r); err != nil {
				return err
			}
		default:
		}
		n.startSnapshotIfDue()
		return nil
	}
	due := n.appliedIdx-n.snapIndex >= n.cfg.SnapshotInterval
	if n.snapForNewMember && n.appliedIdx > n.snapIndex {
		due = true
	}
	if !due {
		return nil
	}
	n.snapForNewMember = false
	start := time.Now()
	data, err := n.cfg.StateMachine.Snapshot()
	n.ctr.snapEncodeNanos.Add(uint64(time.Since(start)))
	if err != nil {
		return fmt.Errorf("raftstore: StateMachine.Snapshot at index %d: %w", n.appliedIdx, err)
	}
	return n.saveSnapshot(n.appliedIdx, n.confState, data)
}

// startSnapshotIfDue starts a background snapshot of a SnapshotCapturer when one is due and
// none is running: it captures the state at the applied index on the loop and encodes it on
// another goroutine, whose result the loop stores with landSnapshot.
//
// After a failed encoding, the periodic snapshot is due again SnapshotInterval entries after
// the failed one's index, and a new member's snapshot is retried from the next tick on (the
// member needs it to join; raft holds snapshots back for it meanwhile, see raftStorage).
func (n *Node) startSnapshotIfDue() {
	if n.capturer == nil || n.snapRunning {
		return
	}
	due := n.appliedIdx-max(n.snapIndex, n.snapFailIdx) >= n.cfg.SnapshotInterval
	forMember := n.snapForNewMember && n.appliedIdx > n.snapIndex
	if forMember && n.ticks >= n.snapRetryTick {
		due = true
	}
	if !due {
		return
	}
	n.snapForNewMember = false
	r := snapResult{index: n.appliedIdx, conf: proto.Clone(n.confState).(*pb.ConfState), forMember: forMember}
	encode := n.capturer.CaptureSnapshot()
	if encode == nil {
		r.err = errors.New("CaptureSnapshot returned a nil encoder")
		n.snapRunning, n.snapRunningForMember = true, forMember
		n.snapc <- r // buffered and empty: no encoder is running
		return
	}
	n.snapRunning, n.snapRunningForMember = true, forMember
	n.logger.Debug("snapshot captured; encoding in the background", "index", r.index, "for_new_member", forMember)
	n.snapWG.Go(func() {
		start := time.Now()
		r.data, r.err = runEncoder(encode)
		n.ctr.snapEncodeNanos.Add(uint64(time.Since(start)))
		n.snapc <- r
	})
}

// runEncoder calls a SnapshotCapturer's encoder, turning a panic into an error: the encoder
// runs off the loop, where a panic would take the whole process down.
func runEncoder(encode func() ([]byte, error)) (data []byte, err error) {
	defer func() {
		if p := recover(); p != nil {
			data, err = nil, fmt.Errorf("snapshot encoder panicked: %v", p)
		}
	}()
	return encode()
}

// landSnapshot stores a background snapshot's result, on the loop: as the raft snapshot at its
// captured index, unless the encoder failed (logged, counted, retried later) or a newer
// snapshot, received from the leader, was applied while it was encoding (discarded).
func (n *Node) landSnapshot(r snapResult) error {
	n.snapRunning, n.snapRunningForMember = false, false
	if r.err != nil {
		n.ctr.snapFailures.Add(1)
		n.snapFailIdx = max(n.snapFailIdx, r.index)
		n.snapRetryTick = n.ticks + 1
		if r.forMember {
			n.snapForNewMember = true
		}
		n.logger.Error("snapshot encoding failed; will retry", "index", r.index, "err", r.err)
		return nil
	}
	if r.index <= n.snapIndex {
		// The state machine was restored from a newer snapshot meanwhile (whose configuration
		// includes any member added before r.index).
		n.ctr.snapDiscarded.Add(1)
		n.logger.Debug("background snapshot discarded: a newer snapshot was applied while it was encoding",
			"index", r.index, "snapshot_index", n.snapIndex)
		return nil
	}
	return n.saveSnapshot(r.index, r.conf, r.data)
}

// saveSnapshot makes data, the state at applied index idx with configuration cs, the raft
// snapshot, saves it durably and compacts the log to SnapshotCatchUpEntries before idx.
func (n *Node) saveSnapshot(idx uint64, cs *pb.ConfState, data []byte) error {
	snap, err := n.ms.CreateSnapshot(idx, cs, data)
	if err != nil {
		return fmt.Errorf("raftstore: creating snapshot at index %d: %w", idx, err)
	}
	var compact uint64
	if idx > n.cfg.SnapshotCatchUpEntries {
		compact = idx - n.cfg.SnapshotCatchUpEntries
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
	n.snapIndex = idx
	n.ctr.snapshots.Add(1)
	n.logger.Debug("snapshot taken", "index", idx, "compacted_to", compact, "bytes", len(data))
	return nil
}

// raftStorage is the raft.Storage the RawNode reads: the MemoryStorage, except that while a
// member added after the latest snapshot waits for a newer one (being encoded in the
// background), Snapshot says it is temporarily unavailable. Raft then retries later instead of
// sending the old snapshot, which the new member would refuse since its configuration does not
// include it. Raft calls it only from the loop goroutine.
type raftStorage struct {
	*raft.MemoryStorage
	n *Node
}

func (s raftStorage) Snapshot() (*pb.Snapshot, error) {
	if s.n.capturer != nil && (s.n.snapForNewMember || s.n.snapRunningForMember) {
		s.n.snapHeld++
		return nil, raft.ErrSnapshotTemporarilyUnavailable
	}
	return s.MemoryStorage.Snapshot()
}

// finish runs on the loop goroutine as it exits.
func (n *Node) finish(loopErr error) {
	if loopErr != nil {
		n.logger.Error("raft loop stopped", "err", loopErr)
	}
	n.isLeader.Store(false)
	n.leader.Store(raft.None)
	n.failWaiters(ErrStopped)
	n.failReads(ErrStopped)
	n.metrics.unregister()
	if err := n.disk.close(); err != nil && loopErr == nil {
		loopErr = err
	}
	if n.snapRunning {
		n.logger.Info("waiting for the background snapshot encoder to return")
	}
	// An encoder still running is waited for (Stop returns only after it): no goroutine
	// outlives the node. Its result is dropped.
	n.snapWG.Wait()
	n.mu.Lock()
	n.stopping = true
	if n.err == nil {
		n.err = loopErr
	}
	n.mu.Unlock()
	n.closeSubs()
	close(n.donec)
}
