package raftstore

import (
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"

	"github.com/shoalhq/shoal/internal/clock"
)

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
