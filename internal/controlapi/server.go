package controlapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/shoalhq/shoal/internal/allocator"
	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/clock"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/state"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// Server implements api.ControlServer.
//
// The read RPCs (Get*, List*, and the object a write answers with) return
// the store's shared objects without copying them (state.Store.ViewShared):
// gRPC only marshals a response, so that is safe for them, but an in-process
// caller of these methods must not modify what they return.
type Server struct {
	api.UnimplementedControlServer
	store *state.Store
	opts  Options
	clock clock.Clock // opts.Clock, or the real clock
	log   *slog.Logger
	// resolveTimeout is opts.ResolveTimeout, or DefaultResolveTimeout.
	resolveTimeout time.Duration
	// ports is the range ingress ports are allocated from; tests shrink it.
	ports allocator.PortRange
	// portMu serializes the service writes of this manager that allocate
	// ports, so two of them do not hand out the same free port.
	portMu sync.Mutex
}

var _ api.ControlServer = (*Server)(nil)

// MemberAdmin changes the Raft membership; raftstore.Node implements it.
//
// Its methods are safe for concurrent use. The membership changes
// (RemoveMember, AddLearner) must be made on the leader (elsewhere they fail
// with an error matching ErrNotLeader), block until the change is applied on
// this member or ctx ends, and are made one at a time: a call waits while
// another change is pending. IsLeader does not block.
type MemberAdmin interface {
	// IsLeader reports whether this member leads now; the answer may be stale
	// by the time the caller acts on it, which the changes then report.
	IsLeader() bool
	// RemoveMember removes a member, refusing (errors.Is ErrNoQuorum) when
	// the remaining voters could not reach a quorum, and an unknown ID with
	// an error matching ErrNotFound. It returns once applied. On the leader
	// removing itself it hands leadership over first and returns an error
	// matching ErrNotLeader: repeat on the new leader.
	RemoveMember(ctx context.Context, id uint64) error
	// AddLearner adds a member that receives the log but does not vote (the
	// leader promotes it once it caught up); context is stored with it. It
	// returns once the change is applied.
	AddLearner(ctx context.Context, id uint64, context []byte) error
}

// Options are a manager's hooks into the Raft group, for the operations that
// need the leader, its clock, image pinning and logger. Zero Options serve a store without Raft
// membership (tests): role changes and removing a manager are refused with
// ErrInvalidSpec.
type Options struct {
	// Members changes the Raft membership (removing managers).
	Members MemberAdmin
	// Leader returns a control client of the leader and a func to release
	// it; requests that must run on the leader are forwarded through it. It
	// is called concurrently, once per forwarded request.
	Leader func(ctx context.Context) (api.ControlClient, func(), error)
	// Clock is the time source of what the server stamps into the cluster
	// object (the start of a gossip key rotation phase). Nil means
	// clock.Real().
	Clock clock.Clock
	// Resolver pins the image of a service to a digest when it is created
	// and when its image changes, so that every node runs the same image.
	// Nil means no pinning: the tag is kept, and the answer warns that
	// pinning is off.
	Resolver ImageResolver
	// ResolveTimeout bounds each Resolver call; 0 means
	// DefaultResolveTimeout. A call that runs out keeps the tag, with a
	// warning in the answer.
	ResolveTimeout time.Duration
	// Logger receives the server's logs (images that could not be pinned,
	// never credentials). Nil discards them: a library writes to the host's
	// logs only when asked.
	Logger *slog.Logger
}

// New returns a control API server over store.
func New(store *state.Store, opts ...Options) *Server {
	s := &Server{store: store, ports: allocator.DynamicPorts}
	if len(opts) > 0 {
		s.opts = opts[0]
	}
	s.clock = s.opts.Clock
	if s.clock == nil {
		s.clock = clock.Real()
	}
	s.log = s.opts.Logger
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.resolveTimeout = s.opts.ResolveTimeout
	if s.resolveTimeout <= 0 {
		s.resolveTimeout = DefaultResolveTimeout
	}
	return s
}

// StaleReadHeader is the response header a read carries when it was served
// from this manager's local state without a quorum to confirm it is current.
const StaleReadHeader = "shoal-stale-read"

// readBarrier makes the following read linearizable: it waits until this
// manager has applied every write committed before the call. Without a
// quorum the read is served anyway from local state, and says so in the
// StaleReadHeader response header.
func (s *Server) readBarrier(ctx context.Context) error {
	err := s.store.ReadBarrier(ctx)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, errdefs.ErrNoQuorum), errors.Is(err, errdefs.ErrNotLeader), errors.Is(err, errdefs.ErrStopped):
		_ = grpc.SetHeader(ctx, metadata.Pairs(StaleReadHeader, err.Error()))
		return nil
	default:
		return errdefs.ToGRPC(err)
	}
}

// read runs fn on a shared view of the store (no copies). It is for the read
// RPCs only: what fn reads goes into a response unmodified, and gRPC only
// marshals it. Paths that modify what they read use View or Update.
func (s *Server) read(fn func(state.ReadTx)) { s.store.ViewShared(fn) }

func notFound(kind, id string) error {
	return errdefs.ToGRPC(fmt.Errorf("%s %q: %w", kind, id, errdefs.ErrNotFound))
}

// localService, localNode and localCluster answer a write with the object as
// this manager applied it (the write returned, so it is applied here: no
// read barrier needed).
func (s *Server) localService(id string, warnings []string) (*api.ServiceResponse, error) {
	var svc *api.Service
	s.read(func(tx state.ReadTx) { svc = tx.GetService(id) })
	if svc == nil {
		return nil, notFound("service", id)
	}
	return &api.ServiceResponse{Service: RedactService(svc), Warnings: warnings}, nil
}

func (s *Server) localNode(id string) (*api.NodeResponse, error) {
	var n *api.Node
	s.read(func(tx state.ReadTx) { n = tx.GetNode(id) })
	if n == nil {
		return nil, notFound("node", id)
	}
	return &api.NodeResponse{Node: n}, nil
}

func (s *Server) localCluster(id string) (*api.ClusterResponse, error) {
	var c *api.Cluster
	s.read(func(tx state.ReadTx) { c = tx.GetCluster(id) })
	if c == nil {
		return nil, notFound("cluster", id)
	}
	return &api.ClusterResponse{Cluster: Redact(c)}, nil
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}
