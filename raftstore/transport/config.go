package transport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"slices"
	"time"

	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/shoalhq/shoal/internal/clock"
)

// MaxMessageBytes is the largest gRPC message the transport sends or accepts on its client
// side (grpc.MaxCallSendMsgSize and grpc.MaxCallRecvMsgSize on every peer connection): a batch
// of raft messages, a snapshot chunk, a forwarded proposal. It is 16 MiB, twice raftstore's
// default Config.MaxEntryBytes (8 MiB), so an append message carrying one entry of the maximum
// size, with its message and batch framing (a few dozen bytes), always fits, and so does a
// forwarded proposal of that size.
//
// The gRPC server the transport is registered on must accept it too: create it with
// grpc.MaxRecvMsgSize(transport.MaxMessageBytes), since gRPC's default receive limit (4 MiB)
// is smaller than the largest entry. raftstore.Config.MaxEntryBytes must stay below it.
const MaxMessageBytes = 16 << 20

// Config configures a Transport. Start from DefaultConfig and set ID and Credentials.
type Config struct {
	// ID is the local member's raft ID. Outgoing batches carry it, and incoming messages
	// addressed to another ID are dropped. Must be nonzero.
	ID uint64
	// Dial opens a connection to a peer's address. Nil dials TCP. Tests inject an in-memory
	// dialer here that can cut links.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// Credentials are the transport credentials of every peer connection: the node's mutual
	// TLS client credentials (pki). New refuses a Config that sets neither Credentials, nor
	// transport credentials in DialOptions (grpc.WithTransportCredentials), nor Insecure.
	Credentials credentials.TransportCredentials
	// Insecure, with no Credentials, makes peer connections plain text. For tests only: raft
	// messages carry the whole cluster state, so a node always gives transport credentials.
	Insecure bool
	// DialOptions are added to every peer connection after the transport's own options and
	// Credentials, so they win. Transport credentials set here stand in for Credentials.
	DialOptions []grpc.DialOption
	// Clock is the source of time of the reconnect back-off (MinBackoff, MaxBackoff) and of
	// SnapshotTimeout. Nil means clock.Real(); tests pass a clocktest.Fake. gRPC's own
	// connection back-off and Filter's delays run on the wall clock (see the package doc).
	Clock clock.Clock
	// Logger receives the transport's logs. Nil discards them.
	Logger *slog.Logger
	// Filter, if set, is called by Send for every outgoing message: drop discards it (as a
	// lossy network would; a dropped MsgSnap is reported as failed), a positive delay holds it
	// back for that long without blocking Send or other messages. It is called from raft's
	// loop, so it must be fast and safe for concurrent use. Fault injection for tests.
	Filter func(to uint64, m *pb.Message) (drop bool, delay time.Duration)

	// QueueSize is the number of messages queued per peer; Send drops messages to a peer
	// whose queue is full.
	QueueSize int
	// BatchSize is the most messages sent to a peer in one gRPC stream message.
	BatchSize int
	// MaxBatchBytes caps the encoded size of one batch. A single message larger than this is
	// still sent, alone, and must then fit the receiving server's message-size limit.
	MaxBatchBytes int
	// ChunkSize is the size of the data in each snapshot chunk.
	ChunkSize int
	// MaxSnapshotSize is the largest snapshot this member accepts; a larger one is refused
	// before any data is buffered.
	MaxSnapshotSize uint64
	// SnapshotTimeout bounds sending one snapshot; when it expires the send fails and raft
	// tries again later.
	SnapshotTimeout time.Duration
	// MinBackoff is the wait before reconnecting to a peer after a stream failure; it doubles
	// on every further failure up to MaxBackoff, and resets after a successful send.
	MinBackoff time.Duration
	// MaxBackoff caps the reconnect wait (also used as gRPC's own connection backoff cap).
	MaxBackoff time.Duration
}

// DefaultConfig returns a Config with every tunable set to its default. ID and Credentials
// must still be set.
func DefaultConfig() Config {
	return Config{
		// 4096 messages covers raft's own in-flight limit (256 appends by default) plus
		// heartbeats and votes many times over, so a queue only fills when the peer is really
		// not keeping up; its memory is bounded by raftstore's MaxSizePerMsg per append.
		QueueSize: 4096,
		// 64 messages per batch amortise the per-message gRPC cost under load while one batch
		// never waits for more than what is already queued.
		BatchSize: 64,
		// 2 MiB keeps every batch far below MaxMessageBytes (and even half of gRPC's default
		// 4 MiB limit), with room for one default-sized (1 MiB) append plus smaller messages;
		// a bigger single message (one large entry) is sent alone.
		MaxBatchBytes: 2 << 20,
		// 1 MiB chunks are far below gRPC's default 4 MiB message limit, so a snapshot of any
		// size fits, while being large enough that per-chunk overhead is negligible.
		ChunkSize: 1 << 20,
		// 1 GiB is far beyond any realistic cluster state; the cap only stops a corrupt or
		// hostile size field from making the receiver buffer without bound.
		MaxSnapshotSize: 1 << 30,
		// 5 minutes moves a 1 GiB snapshot at under 4 MiB/s, while a hung stream still frees
		// the peer's snapshot slot eventually.
		SnapshotTimeout: 5 * time.Minute,
		// 50ms: a restarted peer is reconnected well within one default election timeout (1s)
		// without the sender spinning on a dead address.
		MinBackoff: 50 * time.Millisecond,
		// 2s caps the wait so a peer that comes back after a long outage rejoins within a
		// couple of seconds, at the cost of one cheap dial attempt every 2s while it is down.
		MaxBackoff: 2 * time.Second,
	}
}

func (c *Config) validate() error {
	var errs []error
	bad := func(field, rule string) {
		errs = append(errs, fmt.Errorf("raft transport: invalid config: %s %s", field, rule))
	}
	if c.ID == 0 {
		bad("ID", "must be nonzero")
	} else if c.ID >= math.MaxUint64-1 {
		bad("ID", "must not be a raft-reserved ID (math.MaxUint64, math.MaxUint64-1)")
	}
	if c.QueueSize <= 0 {
		bad("QueueSize", "must be positive")
	}
	if c.BatchSize <= 0 {
		bad("BatchSize", "must be positive")
	}
	if c.MaxBatchBytes <= 0 {
		bad("MaxBatchBytes", "must be positive")
	} else if c.MaxBatchBytes > MaxMessageBytes/2 {
		bad("MaxBatchBytes", fmt.Sprintf("must be at most %d (half of MaxMessageBytes, leaving room for framing)", MaxMessageBytes/2))
	}
	if c.ChunkSize <= 0 {
		bad("ChunkSize", "must be positive")
	} else if c.ChunkSize > MaxMessageBytes/2 {
		bad("ChunkSize", fmt.Sprintf("must be at most %d (half of MaxMessageBytes, leaving room for framing)", MaxMessageBytes/2))
	}
	if c.MaxSnapshotSize == 0 {
		bad("MaxSnapshotSize", "must be positive")
	}
	if c.SnapshotTimeout <= 0 {
		bad("SnapshotTimeout", "must be positive")
	}
	if c.MinBackoff <= 0 {
		bad("MinBackoff", "must be positive")
	}
	if c.MaxBackoff < c.MinBackoff {
		bad("MaxBackoff", "must be at least MinBackoff")
	}
	if slices.Contains(c.DialOptions, nil) {
		bad("DialOptions", "must not contain nil")
	} else if c.Credentials != nil && c.Insecure {
		bad("Insecure", "must not be set with Credentials")
	} else if err := c.checkSecurity(); err != nil {
		bad("Credentials", fmt.Sprintf("must be set (mutual TLS credentials), or DialOptions must carry transport credentials; Insecure (plain text) is for tests only: %v", err))
	}
	return errors.Join(errs...)
}

// checkSecurity checks that peer connections get transport credentials, as gRPC itself does:
// it refuses to create a client connection without them. grpc.NewClient does not dial, and
// the trial connection is closed at once.
func (c *Config) checkSecurity() error {
	conn, err := grpc.NewClient("passthrough:///raft-transport-config-check", c.dialOptions()...)
	if err != nil {
		return err
	}
	return conn.Close()
}

// dialOptions are the options of every peer connection: the transport's defaults, the
// credentials, then the caller's DialOptions, which override them.
func (c *Config) dialOptions() []grpc.DialOption {
	bo := backoff.DefaultConfig
	bo.BaseDelay = c.MinBackoff
	bo.MaxDelay = c.MaxBackoff
	opts := []grpc.DialOption{
		// gRPC's default reconnect backoff grows to 2 minutes; a raft peer that comes back must
		// be reachable again within seconds.
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: bo, MinConnectTimeout: 5 * time.Second}),
		// An append carrying one entry of raftstore's MaxEntryBytes, or a forwarded proposal of
		// that size, must fit one message each way; gRPC's default receive limit is 4 MiB.
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(MaxMessageBytes), grpc.MaxCallRecvMsgSize(MaxMessageBytes)),
	}
	switch {
	case c.Credentials != nil:
		opts = append(opts, grpc.WithTransportCredentials(c.Credentials))
	case c.Insecure:
		opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	if c.Dial != nil {
		opts = append(opts, grpc.WithContextDialer(c.Dial))
	}
	return append(opts, c.DialOptions...)
}
