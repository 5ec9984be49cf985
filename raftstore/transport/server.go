package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/raftstore"
)

// server is the Raft gRPC service: the receiving end of Messages and Snapshot streams and of
// forwarded proposals.
type server struct {
	api.UnimplementedRaftServer
	t *Transport
}

// Messages hands every message of every batch to Local.Step, in order. A message addressed to
// another member is dropped (the address now belongs to someone else); with no Local set all
// are dropped. If Step fails (the member stopped) the stream ends with Unavailable, so the
// sender reports this member unreachable.
func (s *server) Messages(stream grpc.ClientStreamingServer[api.RaftMessageBatch, api.RaftAck]) error {
	return s.untilStopped(func() error { return s.messages(stream) })
}

// untilStopped runs a stream handler, and ends the stream when the transport
// stops (the peer's stream would otherwise hold the server's graceful stop
// until the peer closed it). Returning cancels the stream, which ends the
// handler's Recv.
func (s *server) untilStopped(h func() error) error {
	errc := make(chan error, 1)
	go func() { errc <- h() }()
	select {
	case err := <-errc:
		return err
	case <-s.t.ctx.Done():
		return status.Error(codes.Unavailable, "raft transport: stopped")
	}
}

func (s *server) messages(stream grpc.ClientStreamingServer[api.RaftMessageBatch, api.RaftAck]) error {
	t := s.t
	ctx := stream.Context()
	for {
		batch, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&api.RaftAck{})
		}
		if err != nil {
			return err
		}
		local := t.getLocal()
		for _, b := range batch.GetMessages() {
			m := &pb.Message{}
			if err := proto.Unmarshal(b, m); err != nil {
				return status.Errorf(codes.InvalidArgument, "raft transport: member %d: undecodable message from %d: %v",
					t.cfg.ID, batch.GetFrom(), err)
			}
			if m.GetTo() != t.cfg.ID {
				t.logger.Debug("dropping raft message for another member", "to", m.GetTo(), "from", m.GetFrom())
				continue
			}
			if local == nil {
				continue
			}
			if err := local.Step(ctx, m); err != nil {
				if ctx.Err() != nil {
					return status.FromContextError(ctx.Err()).Err()
				}
				return status.Errorf(codes.Unavailable, "raft transport: member %d cannot take messages: %v", t.cfg.ID, err)
			}
			t.stats.received.Add(1)
		}
	}
}

// Snapshot reassembles one chunked MsgSnap and hands it to Local.Step.
func (s *server) Snapshot(stream grpc.ClientStreamingServer[api.SnapshotChunk, api.RaftAck]) error {
	return s.untilStopped(func() error { return s.snapshot(stream) })
}

func (s *server) snapshot(stream grpc.ClientStreamingServer[api.SnapshotChunk, api.RaftAck]) error {
	t := s.t
	ctx := stream.Context()
	a := assembler{max: t.cfg.MaxSnapshotSize, to: t.cfg.ID}
	for {
		c, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if err := a.add(c); err != nil {
			return status.Error(codes.InvalidArgument, err.Error())
		}
	}
	m, err := a.finish()
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	local := t.getLocal()
	if local == nil {
		return status.Errorf(codes.Unavailable, "raft transport: member %d has no running raft member", t.cfg.ID)
	}
	if err := local.Step(ctx, m); err != nil {
		if ctx.Err() != nil {
			return status.FromContextError(ctx.Err()).Err()
		}
		return status.Errorf(codes.Unavailable, "raft transport: member %d cannot take the snapshot: %v", t.cfg.ID, err)
	}
	t.stats.snapshotsReceived.Add(1)
	t.logger.Info("snapshot received", "from", m.GetFrom(), "index", m.GetSnapshot().GetMetadata().GetIndex(),
		"bytes", len(m.GetSnapshot().GetData()))
	return stream.SendAndClose(&api.RaftAck{})
}

// assembler rebuilds a MsgSnap from SnapshotChunks, checking every size against the header
// and a cap. It is a pure value, fuzzed directly.
type assembler struct {
	max  uint64 // largest accepted total size
	to   uint64 // the receiving member's ID
	msg  *pb.Message
	size uint64 // announced total
	data []byte
}

func (a *assembler) add(c *api.SnapshotChunk) error {
	if a.msg == nil {
		if len(c.GetMessage()) == 0 {
			return errors.New("raft transport: snapshot stream: first chunk has no message")
		}
		m := &pb.Message{}
		if err := proto.Unmarshal(c.GetMessage(), m); err != nil {
			return fmt.Errorf("raft transport: snapshot stream: undecodable message: %w", err)
		}
		if m.GetType() != pb.MsgSnap || m.GetSnapshot() == nil {
			return fmt.Errorf("raft transport: snapshot stream: message is %s, not a MsgSnap with a snapshot", m.GetType())
		}
		if m.GetTo() != a.to {
			return fmt.Errorf("raft transport: snapshot stream: snapshot for member %d sent to member %d", m.GetTo(), a.to)
		}
		if len(m.GetSnapshot().GetData()) != 0 {
			return errors.New("raft transport: snapshot stream: first chunk's message must not carry snapshot data")
		}
		if c.GetTotalSize() > a.max {
			return fmt.Errorf("raft transport: snapshot stream: snapshot of %d bytes exceeds the limit of %d bytes (MaxSnapshotSize)",
				c.GetTotalSize(), a.max)
		}
		a.msg, a.size = m, c.GetTotalSize()
		// Grow as data arrives, up to a modest initial capacity: the size is the sender's word.
		a.data = make([]byte, 0, min(a.size, 64<<20))
	} else if len(c.GetMessage()) != 0 || c.GetTotalSize() != 0 {
		return errors.New("raft transport: snapshot stream: only the first chunk may carry a message or a size")
	}
	if uint64(len(a.data))+uint64(len(c.GetData())) > a.size {
		return fmt.Errorf("raft transport: snapshot stream: more data than the announced %d bytes", a.size)
	}
	a.data = append(a.data, c.GetData()...)
	return nil
}

func (a *assembler) finish() (*pb.Message, error) {
	if a.msg == nil {
		return nil, errors.New("raft transport: snapshot stream: no chunks")
	}
	if uint64(len(a.data)) != a.size {
		return nil, fmt.Errorf("raft transport: snapshot stream: got %d of %d bytes", len(a.data), a.size)
	}
	if a.size > 0 {
		a.msg.Snapshot.Data = a.data
	}
	return a.msg, nil
}

// Propose proposes the request's data on the local member (with ProposeOnLeader if the Local is
// a LeaderProposer) and returns the outcome: success,
// the Propose error, or the error that the StateMachine's Apply returned as its result,
// encoded with errdefs.ToGRPC so the sender's errdefs.FromGRPC restores the sentinel.
func (s *server) Propose(ctx context.Context, req *api.ProposeRequest) (*api.ProposeResponse, error) {
	local := s.t.getLocal()
	if local == nil {
		return errorResponse(fmt.Errorf("raft transport: member %d has no running raft member: %w", s.t.cfg.ID, errdefs.ErrNotLeader)), nil
	}
	var resp *api.ProposeResponse
	if lp, ok := local.(LeaderProposer); ok {
		resp = errorResponse(outcome(lp.ProposeOnLeader(ctx, req.GetData())))
	} else {
		resp = errorResponse(outcome(local.Propose(ctx, req.GetData())))
	}
	if ai, ok := local.(AppliedIndexer); ok {
		resp.AppliedIndex = ai.AppliedIndex()
	}
	return resp, nil
}

// AppliedIndexer is an optional capability of a Local, found by type assertion: the index of
// the last entry it applied. When both sides have it, Forward returns only once the
// forwarding member has applied as far as the leader had when the forwarded entry was
// applied, so the caller reads its own write from its local state.
type AppliedIndexer interface {
	// AppliedIndex returns the index of the last applied entry; it never decreases while
	// the member runs. On the leader it is called from the gRPC handler of each forwarded
	// proposal after Propose returns; on the forwarding member, Forward's goroutine polls it
	// about every millisecond while it waits. Calls come from many goroutines at once, never
	// from the raft loop. It must not block: raftstore.Node reads an atomic.
	AppliedIndex() uint64
}

// LeaderProposer is an optional capability of a Local, found by type assertion: proposing
// only if this member is the leader, never forwarding. When the Local has it, forwarded
// proposals use it, so a proposal that reaches a member which has just lost leadership comes
// back as ErrNotLeader instead of being forwarded again.
type LeaderProposer interface {
	// ProposeOnLeader proposes data if this member leads, and returns its Apply result; on
	// any other member it fails at once with an error matching errdefs.ErrNotLeader. It is
	// called from the gRPC handler of each forwarded proposal, concurrently, never from the
	// raft loop, and blocks until the entry is applied or ctx ends.
	ProposeOnLeader(ctx context.Context, data []byte) (any, error)
}

var (
	_ Local          = (*raftstore.Node)(nil)
	_ AppliedIndexer = (*raftstore.Node)(nil)
	_ LeaderProposer = (*raftstore.Node)(nil)
)

// outcome turns Propose's result into the error the proposer should see.
func outcome(val any, err error) error {
	if err != nil {
		return err
	}
	if e, ok := val.(error); ok && e != nil {
		return e
	}
	return nil
}

func errorResponse(err error) *api.ProposeResponse {
	if err == nil {
		return &api.ProposeResponse{}
	}
	st, _ := status.FromError(errdefs.ToGRPC(err))
	if errors.Is(err, raftstore.ErrLeadershipLost) {
		// No errdefs sentinel says "outcome unknown"; Unknown carries it (see Forward).
		st = status.New(codes.Unknown, err.Error())
	}
	return &api.ProposeResponse{ErrorCode: uint32(st.Code()), ErrorMessage: st.Message()}
}

// Forward proposes data on the leader (raft ID leader) and returns the outcome there: nil when
// the entry was applied and its Apply result was not an error; otherwise the Propose error or
// the Apply error, matching errdefs' sentinels (and context errors) with errors.Is. An error
// that raftstore reports as ErrLeadershipLost matches raftstore.ErrLeadershipLost.
//
// If the leader is not a known peer, cannot be reached, or is not the leader any more, the
// error matches errdefs.ErrNotLeader: find the leader again and retry. A connection that broke
// while the call was in flight also yields such an error, and then the entry may have been
// committed; proposals that must not apply twice need to be idempotent. If leader is the local
// member's ID, data is proposed on the Local directly.
func (t *Transport) Forward(ctx context.Context, leader uint64, data []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if leader == t.cfg.ID {
		local := t.getLocal()
		if local == nil {
			return fmt.Errorf("raft transport: forward to self: no running raft member: %w", errdefs.ErrNotLeader)
		}
		return outcome(local.Propose(ctx, data))
	}
	p := t.peer(leader)
	if p == nil {
		return fmt.Errorf("raft transport: forward: leader %d has no known address: %w", leader, errdefs.ErrNotLeader)
	}
	client, err := p.client()
	if err != nil {
		return fmt.Errorf("raft transport: forward to leader %d: transport not running: %w", leader, errdefs.ErrStopped)
	}
	resp, err := client.Propose(ctx, &api.ProposeRequest{From: t.cfg.ID, Data: data})
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		if status.Code(err) == codes.Unavailable {
			return fmt.Errorf("raft transport: forward: leader %d at %s is unreachable: %w: %w",
				leader, p.address(), errdefs.ErrNotLeader, err)
		}
		return fmt.Errorf("raft transport: forward to leader %d: %w", leader, errdefs.FromGRPC(err))
	}
	if err := t.waitApplied(ctx, resp.GetAppliedIndex()); err != nil {
		return err
	}
	return responseError(resp)
}

// waitApplied waits until the local member has applied index idx (bounded
// by ctx). Entries arrive within a heartbeat or two, so polling briefly is
// cheaper than plumbing a notification through raft's apply loop.
func (t *Transport) waitApplied(ctx context.Context, idx uint64) error {
	ai, ok := t.getLocal().(AppliedIndexer)
	if !ok || idx == 0 || ai.AppliedIndex() >= idx {
		return nil
	}
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for ai.AppliedIndex() < idx {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.ctx.Done():
			return ErrStopped
		case <-tick.C:
		}
	}
	return nil
}

// responseError decodes a ProposeResponse into an error.
func responseError(resp *api.ProposeResponse) error {
	code := codes.Code(resp.GetErrorCode())
	if code == codes.OK {
		return nil
	}
	msg := resp.GetErrorMessage()
	if strings.Contains(msg, raftstore.ErrEntryTooLarge.Error()) {
		// The leader's limit is lower than this member's (members should agree on it).
		return &remoteError{msg: msg, sentinels: []error{raftstore.ErrEntryTooLarge}}
	}
	if code == codes.Unknown && strings.Contains(msg, raftstore.ErrLeadershipLost.Error()) {
		e := &remoteError{msg: msg, sentinels: []error{raftstore.ErrLeadershipLost}}
		if strings.Contains(msg, errdefs.ErrNoQuorum.Error()) {
			e.sentinels = append(e.sentinels, errdefs.ErrNoQuorum)
		}
		return e
	}
	return errdefs.FromGRPC(status.Error(code, msg))
}

// remoteError is an error that came back from the leader: its message, matching the sentinels
// it named.
type remoteError struct {
	msg       string
	sentinels []error
}

func (e *remoteError) Error() string   { return e.msg }
func (e *remoteError) Unwrap() []error { return e.sentinels }
