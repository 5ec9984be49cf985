package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/shoalhq/shoal/internal/api"
)

// peer is one remote member: a queue drained by one sender goroutine over a long-lived
// Messages stream, and at most one snapshot sender at a time.
type peer struct {
	t      *Transport
	id     uint64
	queue  chan *pb.Message
	ctx    context.Context // canceled by close
	cancel context.CancelFunc

	snapBusy atomic.Bool

	mu     sync.Mutex
	addr   string
	conn   *grpc.ClientConn // nil until connect
	closed bool
}

func newPeer(t *Transport, id uint64, addr string) *peer {
	ctx, cancel := context.WithCancel(t.ctx)
	return &peer{
		t:      t,
		id:     id,
		addr:   addr,
		queue:  make(chan *pb.Message, t.cfg.QueueSize),
		ctx:    ctx,
		cancel: cancel,
	}
}

func (p *peer) address() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.addr
}

// connect creates the peer's client connection. grpc.NewClient does not dial: the connection
// is made by the first stream.
func (p *peer) connect() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.conn != nil {
		return nil
	}
	conn, err := p.newConn(p.addr)
	if err != nil {
		return err
	}
	p.conn = conn
	return nil
}

func (p *peer) newConn(addr string) (*grpc.ClientConn, error) {
	// passthrough: the address goes to the dialer as it is (no DNS resolution), so in-memory
	// dialers can use any name.
	conn, err := grpc.NewClient("passthrough:///"+addr, p.t.cfg.dialOptions()...)
	if err != nil {
		return nil, fmt.Errorf("raft transport: peer %d at %q: %w", p.id, addr, err)
	}
	return conn, nil
}

// setAddr changes the address; a live connection is replaced, which ends streams on the old one.
func (p *peer) setAddr(addr string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || addr == p.addr {
		return nil
	}
	if p.conn != nil {
		conn, err := p.newConn(addr)
		if err != nil {
			return err
		}
		old := p.conn
		p.conn = conn
		_ = old.Close()
	}
	p.addr = addr
	return nil
}

func (p *peer) client() (api.RaftClient, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.conn == nil {
		return nil, ErrStopped
	}
	return api.NewRaftClient(p.conn), nil
}

// close stops the peer's goroutines (they exit on their own) and closes its connection.
func (p *peer) close() {
	p.cancel()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	if p.conn != nil {
		_ = p.conn.Close()
		p.conn = nil
	}
}

// run is the peer's sender: it batches whatever is queued and writes it to the Messages
// stream, opening the stream when needed. After a failure it reports the peer unreachable and
// waits (backoff, doubling) before trying again; messages are not retried.
func (p *peer) run() {
	t := p.t
	var (
		stream  grpc.ClientStreamingClient[api.RaftMessageBatch, api.RaftAck]
		cancel  context.CancelFunc = func() {}
		backoff                    = t.cfg.MinBackoff
		healthy                    = true
		batch                      = make([][]byte, 0, t.cfg.BatchSize)
	)
	defer func() { cancel() }()
	var pending *pb.Message // taken from the queue but not yet in a batch (batch was full)
	for {
		if pending == nil {
			select {
			case <-p.ctx.Done():
				return
			case pending = <-p.queue:
			}
		}
		batch = batch[:0]
		size := 0
		for pending != nil {
			b, err := proto.Marshal(pending)
			if err != nil {
				t.logger.Error("cannot encode raft message; dropped", "to", p.id, "type", pending.GetType().String(), "err", err)
				t.stats.dropped.Add(1)
			} else if len(b) > maxBatchPayload {
				// It could never be delivered, and sending it would only break the stream (and
				// the messages batched with it) over and over.
				t.logger.Error("raft message larger than the transport's message limit; dropped (is raftstore's MaxEntryBytes above transport.MaxMessageBytes?)",
					"to", p.id, "type", pending.GetType().String(), "bytes", len(b), "limit", MaxMessageBytes)
				t.stats.dropped.Add(1)
			} else if len(batch) > 0 && size+len(b) > t.cfg.MaxBatchBytes {
				break // pending starts the next batch
			} else {
				batch = append(batch, b)
				size += len(b)
			}
			pending = nil
			if len(batch) == t.cfg.BatchSize {
				break
			}
			select {
			case pending = <-p.queue:
			default:
			}
		}
		if len(batch) == 0 {
			continue
		}
		err := p.ctx.Err()
		if err == nil && stream == nil {
			stream, cancel, err = p.openMessages()
		}
		if err == nil {
			if err = stream.Send(&api.RaftMessageBatch{From: t.cfg.ID, Messages: batch}); errors.Is(err, io.EOF) {
				// The stream ended; the reason is in its status.
				if _, rerr := stream.CloseAndRecv(); rerr != nil {
					err = rerr
				}
			}
		}
		if err == nil {
			t.stats.sent.Add(uint64(len(batch)))
			t.stats.batches.Add(1)
			if !healthy {
				t.logger.Info("raft peer reachable again", "peer", p.id, "addr", p.address())
				healthy = true
			}
			backoff = t.cfg.MinBackoff
			continue
		}
		// Failure: the batch is lost.
		cancel()
		stream = nil
		t.stats.dropped.Add(uint64(len(batch)))
		if p.ctx.Err() != nil {
			return
		}
		t.stats.streamFailures.Add(1)
		if healthy {
			t.logger.Warn("raft peer unreachable", "peer", p.id, "addr", p.address(), "err", err)
			healthy = false
		} else {
			t.logger.Debug("raft peer still unreachable", "peer", p.id, "err", err, "retry_in", backoff)
		}
		t.reportUnreachable(p.id)
		timer := t.cfg.Clock.NewTimer(backoff)
		select {
		case <-p.ctx.Done():
			timer.Stop()
			return
		case <-timer.C():
		}
		backoff = min(2*backoff, t.cfg.MaxBackoff)
	}
}

// maxBatchPayload is the largest encoded raft message that fits a RaftMessageBatch within
// MaxMessageBytes, with room for the batch's own framing (sender ID and length prefixes).
const maxBatchPayload = MaxMessageBytes - 64

// openMessages opens a Messages stream; cancel ends it. On error cancel is a no-op.
func (p *peer) openMessages() (grpc.ClientStreamingClient[api.RaftMessageBatch, api.RaftAck], context.CancelFunc, error) {
	client, err := p.client()
	if err != nil {
		return nil, func() {}, err
	}
	ctx, cancel := context.WithCancel(p.ctx)
	stream, err := client.Messages(ctx)
	if err != nil {
		cancel()
		return nil, func() {}, err
	}
	return stream, cancel, nil
}

// sendSnapshot starts a goroutine that streams the MsgSnap m, unless one is already in flight
// to this peer (then m fails at once; raft sends another later). The outcome is reported with
// ReportSnapshot. It always reports true: the message was handled.
func (p *peer) sendSnapshot(m *pb.Message) bool {
	t := p.t
	if !p.snapBusy.CompareAndSwap(false, true) {
		t.logger.Debug("snapshot already in flight to peer; refusing another", "peer", p.id)
		t.reportSnapshot(p.id, false)
		return true
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		p.snapBusy.Store(false)
		t.reportSnapshot(p.id, false)
		return true
	}
	t.wg.Go(func() {
		defer p.snapBusy.Store(false)
		size := len(m.GetSnapshot().GetData())
		err := p.streamSnapshot(m)
		if err != nil {
			t.logger.Warn("sending snapshot failed", "peer", p.id, "index", m.GetSnapshot().GetMetadata().GetIndex(),
				"bytes", size, "err", err)
			t.reportSnapshot(p.id, false)
			t.reportUnreachable(p.id)
			return
		}
		t.logger.Info("snapshot sent", "peer", p.id, "index", m.GetSnapshot().GetMetadata().GetIndex(), "bytes", size)
		t.reportSnapshot(p.id, true)
	})
	return true
}

// streamSnapshot sends m over a Snapshot stream: a first chunk with the message without its
// snapshot data and the data's size, then the data in ChunkSize pieces.
func (p *peer) streamSnapshot(m *pb.Message) error {
	t := p.t
	client, err := p.client()
	if err != nil {
		return err
	}
	ctx, cancel := p.snapshotContext()
	defer cancel()
	err = p.sendSnapshotStream(ctx, client, m)
	if err != nil && errors.Is(context.Cause(ctx), errSnapshotTimeout) {
		return fmt.Errorf("%w (SnapshotTimeout %s): %w", errSnapshotTimeout, t.cfg.SnapshotTimeout, err)
	}
	return err
}

// errSnapshotTimeout is the cause of a snapshot stream's end after Config.SnapshotTimeout.
var errSnapshotTimeout = errors.New("snapshot not sent in time")

// snapshotContext returns the context of one snapshot stream: canceled by the peer's close,
// by cancel, or by Config.Clock once SnapshotTimeout has passed (cause errSnapshotTimeout).
// The goroutine that watches the clock ends with cancel; the caller must call it.
func (p *peer) snapshotContext() (context.Context, context.CancelFunc) {
	ctx, cancelCause := context.WithCancelCause(p.ctx)
	timer := p.t.cfg.Clock.NewTimer(p.t.cfg.SnapshotTimeout)
	fired, done := timer.C(), make(chan struct{})
	p.t.wg.Go(func() {
		select {
		case <-fired:
			cancelCause(errSnapshotTimeout)
		case <-done:
		}
	})
	return ctx, func() {
		timer.Stop()
		close(done)
		cancelCause(context.Canceled)
	}
}

// sendSnapshotStream writes m to a new Snapshot stream on ctx.
func (p *peer) sendSnapshotStream(ctx context.Context, client api.RaftClient, m *pb.Message) error {
	t := p.t
	head, err := proto.Marshal(withoutSnapshotData(m))
	if err != nil {
		return fmt.Errorf("encoding snapshot message: %w", err)
	}
	data := m.GetSnapshot().GetData()
	stream, err := client.Snapshot(ctx)
	if err != nil {
		return err
	}
	send := func(c *api.SnapshotChunk) error {
		err := stream.Send(c)
		if errors.Is(err, io.EOF) {
			if _, rerr := stream.CloseAndRecv(); rerr != nil {
				return rerr
			}
		}
		return err
	}
	if err := send(&api.SnapshotChunk{From: t.cfg.ID, Message: head, TotalSize: uint64(len(data))}); err != nil {
		return err
	}
	for off := 0; off < len(data); off += t.cfg.ChunkSize {
		if err := send(&api.SnapshotChunk{Data: data[off:min(off+t.cfg.ChunkSize, len(data))]}); err != nil {
			return err
		}
	}
	_, err = stream.CloseAndRecv()
	return err
}

// withoutSnapshotData returns a shallow copy of m whose snapshot has no data. m is not modified.
// Fields are copied by reflection so that fields added to raftpb later are kept.
func withoutSnapshotData(m *pb.Message) *pb.Message {
	out := &pb.Message{}
	copyExcept(m.ProtoReflect(), out.ProtoReflect(), "snapshot")
	if s := m.GetSnapshot(); s != nil {
		snap := &pb.Snapshot{}
		copyExcept(s.ProtoReflect(), snap.ProtoReflect(), "data")
		out.Snapshot = snap
	}
	return out
}

func copyExcept(src, dst protoreflect.Message, field protoreflect.Name) {
	src.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Name() != field {
			dst.Set(fd, v)
		}
		return true
	})
	if u := src.GetUnknown(); len(u) > 0 {
		dst.SetUnknown(u)
	}
}
