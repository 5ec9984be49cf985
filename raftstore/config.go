package raftstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"

	"github.com/shoalhq/shoal/internal/clock"
)

// StateMachine is what the log applies committed entries to. All three methods are called from
// one goroutine (the apply loop), never concurrently with each other.
//
// The state machine is in-memory state: the raft database is the only durable copy. On Start the
// node calls Restore with the latest snapshot (if any) and then Apply for every committed entry
// after it, so the StateMachine handed to New must be empty.
type StateMachine interface {
	// Apply applies one committed entry's data at log index idx. Its return value is handed to
	// the Propose call that proposed this entry, if that call was made on this node and is still
	// waiting. Apply must be deterministic: every member applies the same entries in the same
	// order and must reach the same state. It must not retain data after it returns.
	Apply(idx uint64, data []byte) any
	// Snapshot returns the whole state, to be stored as a raft snapshot. The returned slice must
	// not be modified afterwards.
	Snapshot() ([]byte, error)
	// Restore replaces the whole state with a snapshot's data taken at log index idx.
	Restore(idx uint64, data []byte) error
}

// SnapshotCapturer is an optional StateMachine extension: the raft loop calls CaptureSnapshot
// right after applying entries, and it must be cheap (a copy of references to immutable
// state); the function it returns encodes the captured state and runs on another goroutine,
// concurrently with later Apply calls (and with Restore, when a member receives a snapshot from
// the leader meanwhile).
//
// With it, a snapshot never stalls the raft loop (heartbeats, commits) for the time it takes
// to encode a large state: the loop captures at the applied index, the encoder runs in the
// background (at most one at a time), and the loop stores the result as the snapshot at the
// captured index once it is ready. A StateMachine without it is snapshotted synchronously, on
// the loop, with Snapshot. An encoder error is logged and counted (Stats.SnapshotFailures) and
// the snapshot is tried again later; it does not stop the node. Node.Stop waits for a running
// encoder to return.
type SnapshotCapturer interface {
	// CaptureSnapshot is called on the raft loop, between Apply calls, and must return
	// quickly. The returned function is called once, on another goroutine, and returns the
	// state as of the capture, in the form Restore accepts. The returned slice must not be
	// modified afterwards.
	CaptureSnapshot() func() ([]byte, error)
}

// Transport delivers raft messages to other members. It is only needed when the cluster has more
// than one member; a nil Transport means a single member with no network.
type Transport interface {
	// Send queues msgs for delivery to the members named in each message's To field. It is called
	// from the raft loop, one call at a time, so it must not block: a transport queues and
	// returns, and may drop messages (raft retransmits). It may call Node.ReportUnreachable and
	// Node.ReportSnapshot before it returns; they do not wait for the loop. Send must not modify the messages; it may keep them after it
	// returns, but an in-process transport must deliver copies (proto.Clone), since raft may
	// modify a message it steps. Delivery on the far side is Node.Step; for every MsgSnap the
	// transport reports the outcome with Node.ReportSnapshot on the sending node.
	Send(msgs []*pb.Message)
}

// Forwarder carries a proposal from a follower to the leader. The lead's implementation sends
// data to member leader, where it is proposed with Node.ProposeOnLeader, and returns
// ResultError of that call's results: the leader's StateMachine.Apply result comes back only
// if it is an error. Forward is called from Propose's goroutine, concurrently from many; it must
// honour ctx. If the leader answers ErrNotLeader (it lost leadership before proposing), Forward
// must return an error matching ErrNotLeader so that Propose can retry on the new leader.
type Forwarder interface {
	Forward(ctx context.Context, leader uint64, data []byte) error
}

// Encryptor seals Raft entries and snapshots before they are written to the database file, and
// opens them when read (encryption at rest). *keys.Cipher (internal/keys) satisfies it. Both
// methods are called from the raft loop, and from Start before the loop runs; an implementation
// must be safe for use from one goroutine at a time at least.
type Encryptor interface {
	// Seal encrypts and authenticates plaintext and authenticates additionalData (which the
	// result need not contain), returning a new slice. It must not fail: a nonce or key problem
	// is the implementation's to prevent.
	Seal(plaintext, additionalData []byte) []byte
	// Open reverses Seal given the same additionalData. It returns an error, and no data, if
	// the key, the additional data or any byte of ciphertext differs.
	Open(ciphertext, additionalData []byte) ([]byte, error)
}

// Config configures a Node. Start from DefaultConfig and set ID, Dir and StateMachine.
type Config struct {
	// ID is this member's raft ID. It must be nonzero and is stored in the database: reopening a
	// directory with a different ID is an error.
	ID uint64
	// Dir is the directory holding the database file (Dir/raft.db). It is created with mode 0700
	// if missing.
	Dir string
	// StateMachine receives committed entries. Required.
	StateMachine StateMachine
	// Transport sends messages to other members. Nil means a single-member cluster.
	Transport Transport
	// Peers are the raft IDs of the initial voters, used only when the database is new and Join
	// is false. Empty means a single-member cluster of ID alone. If non-empty it must contain ID.
	Peers []uint64
	// Forwarder, if set, makes Propose on a follower forward the entry to the leader. Nil means
	// Propose on a follower returns ErrNotLeader. With forwarding, StateMachine.Apply results
	// must be nil or an error: only an error travels back from the leader.
	Forwarder Forwarder
	// OnMembershipChange, if set, is called with the IDs of all members (voters and learners,
	// sorted) when the loop starts and after every applied configuration change or received
	// snapshot that changes them. It runs on the raft loop: it must return quickly and must not
	// call the Node's blocking methods. The lead uses it to update the transport's peers.
	OnMembershipChange func(members []uint64)
	// ForceNewCluster, when the database exists, makes this member the only voter of a new
	// one-member cluster that keeps all its state: disaster recovery after losing the quorum
	// for good, like `docker swarm init --force-new-cluster`. At Start it appends
	// configuration changes removing every other voter and learner to the log and commits
	// them together with every entry already in the log, then starts as usual. The change is
	// durable: later starts, with or without the flag, find a one-member cluster, which grows
	// again with AddLearner and PromoteLearner. The other members' databases must not be
	// started again as members of the old cluster. It is refused when Dir holds no database,
	// and together with Join or with Peers naming other members. Leaving it set on later
	// starts changes nothing once this member is alone.
	ForceNewCluster bool
	// Join, when the database is new, starts the member with an empty log and no configuration:
	// it waits for an existing cluster's leader to add it and send it the log.
	Join bool
	// Logger receives the node's logs, including raft's own (at debug level, except warnings and
	// errors). Nil discards logs.
	Logger *slog.Logger
	// Registerer, if non-nil, receives the node's Prometheus metrics, labelled with raft_id.
	Registerer prometheus.Registerer

	// TickInterval is the length of one raft tick.
	TickInterval time.Duration
	// ElectionTick is the number of ticks without hearing from a leader after which a follower
	// campaigns. Must be greater than HeartbeatTick.
	ElectionTick int
	// HeartbeatTick is the number of ticks between leader heartbeats.
	HeartbeatTick int
	// SnapshotInterval is how many applied entries trigger a new snapshot and log compaction.
	SnapshotInterval uint64
	// SnapshotCatchUpEntries is how many entries before a snapshot are kept in the log after
	// compaction, so a slightly lagging follower can catch up without a full snapshot.
	SnapshotCatchUpEntries uint64
	// MaxSizePerMsg caps the bytes of entries in one append message (and in one batch of
	// committed entries handed to the apply loop).
	MaxSizePerMsg uint64
	// MaxInflightMsgs caps the append messages in flight to one follower.
	MaxInflightMsgs int
	// MaxEntryBytes is the largest data Propose accepts for one entry; larger data fails with
	// ErrEntryTooLarge before anything enters the log. Every member must be able to receive
	// an append message carrying one such entry, so it must stay below the transport's message
	// size limit (raftstore/transport.MaxMessageBytes, with room for the message's overhead).
	MaxEntryBytes int
	// MaxProposalBatch caps how many queued proposals the loop takes into one Ready, i.e. into
	// one fsync.
	MaxProposalBatch int
	// Encryptor, if set, seals every stored entry and the stored snapshot data (the hard state,
	// configuration, member contexts and format metadata stay in the clear). Whether a file is
	// encrypted is recorded in it when it is created: reopening it requires an Encryptor with
	// the same data key if it is encrypted, and no Encryptor if it is not; a mismatch fails
	// Start with an error naming the file. Nil stores everything in the clear.
	Encryptor Encryptor
	// Clock is the source of time of the raft loop's ticks and of the waits counted in
	// election timeouts (for a leader, a leadership transfer, a busy configuration change).
	// Nil means clock.Real(). Tests pass a clocktest.Fake to tick raft by hand; hosts outside
	// this module, which cannot name internal/clock, leave it nil.
	Clock clock.Clock
	// UnsafeNoFsync skips fsync on every write. A crash can then lose acknowledged writes or
	// corrupt the log. Only for tests and benchmarks of code above this package.
	UnsafeNoFsync bool
}

// DefaultConfig returns a Config with every tunable set to its default. ID, Dir and StateMachine
// must still be set.
func DefaultConfig() Config {
	return Config{
		// 100ms ticks make elections (ElectionTick ticks) take about a second, fast enough for a
		// failover and slow enough that a loaded machine does not cause spurious elections.
		TickInterval: 100 * time.Millisecond,
		// 10 heartbeats per election timeout is raft's recommended ratio: a follower only starts
		// an election after missing many heartbeats, which absorbs GC pauses and packet loss.
		ElectionTick: 10,
		// A heartbeat every tick (100ms) keeps followers' election timers well clear of firing.
		HeartbeatTick: 1,
		// 10000 entries of typical object-store writes (a few hundred bytes to a few KB) keep
		// the log at tens of MB between snapshots while snapshotting rarely enough that its cost
		// (serialising the whole state) is amortised over many writes.
		SnapshotInterval: 10000,
		// 5000 trailing entries let a follower that was briefly away (seconds of writes at a
		// high rate) catch up from the log instead of receiving a whole snapshot.
		SnapshotCatchUpEntries: 5000,
		// 1 MiB per append message batches well on LANs without making a single message (or
		// a single apply batch) big enough to stall heartbeats behind it.
		MaxSizePerMsg: 1 << 20,
		// 256 in-flight appends pipeline replication over a high-latency link; with
		// MaxSizePerMsg this bounds per-follower buffering to 256 MiB in the worst case.
		MaxInflightMsgs: 256,
		// 8 MiB: half of the raft transport's 16 MiB message limit, so one entry of this size
		// plus its message and batch framing always fits a single gRPC message and replicates
		// (an entry the transport cannot carry would commit on the leader and never reach the
		// followers), while leaving ample room for the orchestrator's batched writes, which
		// are a few hundred KB at most.
		MaxEntryBytes: 8 << 20,
		// 4096 proposals per fsync is far more than a batch ever reaches in practice; the cap
		// only keeps one Ready (and its memory) bounded under a flood of writes.
		MaxProposalBatch: 4096,
		// Encryptor stays nil: the data key is the host's key material (internal/keys), which
		// raftstore cannot make up; the host sets it when encryption at rest is on.
		// Clock stays nil, the real clock: only tests need another.
	}
}

func (c *Config) validate() error {
	var errs []error
	bad := func(field, rule string) {
		errs = append(errs, fmt.Errorf("raftstore: invalid config: %s %s", field, rule))
	}
	if c.ID == 0 {
		bad("ID", "must be nonzero")
	} else if c.ID == raft.LocalAppendThread || c.ID == raft.LocalApplyThread {
		bad("ID", "must not be a raft-reserved ID (math.MaxUint64, math.MaxUint64-1)")
	}
	if c.Dir == "" {
		bad("Dir", "must be set")
	}
	if c.StateMachine == nil {
		bad("StateMachine", "must be set")
	}
	if len(c.Peers) > 0 {
		found := false
		seen := make(map[uint64]bool, len(c.Peers))
		for _, p := range c.Peers {
			if p == 0 {
				bad("Peers", "must not contain 0")
			}
			if seen[p] {
				bad("Peers", fmt.Sprintf("must not repeat ID %d", p))
			}
			seen[p] = true
			found = found || p == c.ID
		}
		if !found {
			bad("Peers", fmt.Sprintf("must contain this member's ID %d", c.ID))
		}
		if c.Join {
			bad("Peers", "must be empty when Join is set")
		}
		if c.ForceNewCluster && (len(c.Peers) > 1 || !found) {
			bad("ForceNewCluster", "must not be set with Peers naming other members (the new cluster has this member alone)")
		}
		if len(c.Peers) > 1 && c.Transport == nil {
			bad("Transport", "must be set when Peers has more than one member")
		}
	}
	if c.ForceNewCluster && c.Join {
		bad("ForceNewCluster", "must not be set with Join (it needs this member's existing database)")
	}
	if c.Join && c.Transport == nil {
		bad("Transport", "must be set when Join is set")
	}
	if c.TickInterval <= 0 {
		bad("TickInterval", "must be positive")
	}
	if c.HeartbeatTick <= 0 {
		bad("HeartbeatTick", "must be positive")
	}
	if c.ElectionTick <= c.HeartbeatTick {
		bad("ElectionTick", "must be greater than HeartbeatTick")
	}
	if c.SnapshotInterval == 0 {
		bad("SnapshotInterval", "must be positive")
	}
	if c.MaxSizePerMsg == 0 {
		bad("MaxSizePerMsg", "must be positive")
	}
	if c.MaxInflightMsgs <= 0 {
		bad("MaxInflightMsgs", "must be positive")
	}
	if c.MaxEntryBytes <= 0 {
		bad("MaxEntryBytes", "must be positive")
	}
	if c.MaxProposalBatch <= 0 {
		bad("MaxProposalBatch", "must be positive")
	}
	if c.SnapshotCatchUpEntries > math.MaxUint64/2 {
		bad("SnapshotCatchUpEntries", "must be at most MaxUint64/2")
	}
	return errors.Join(errs...)
}
