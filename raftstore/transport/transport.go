package transport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/clock"
	"github.com/shoalhq/shoal/raftstore"
)

var (
	// ErrStopped is returned by calls on a Transport that was stopped.
	ErrStopped = errors.New("raft transport: stopped")
	// ErrUnknownPeer is returned by UpdatePeer and RemovePeer for an ID that is not a peer.
	ErrUnknownPeer = errors.New("raft transport: unknown peer")
)

// Local is the local raft member, the receiving end of the transport. raftstore.Node
// satisfies it. Its methods are called from several goroutines at once, and the report
// methods also from the raft loop itself (through Send), so none may wait for that loop.
type Local interface {
	// Step hands a message received from a peer to raft. It is called from the gRPC handler
	// of each incoming stream (one Messages stream per sending peer, one Snapshot stream per
	// snapshot), concurrently across streams and in order within one. It may block (the
	// back-pressure flows to the sending peer) until ctx ends.
	Step(ctx context.Context, m *pb.Message) error
	// ReportUnreachable says that a message to member id could not be delivered. It is called
	// from Send (on the raft loop, for a message that could not be queued) and from the
	// transport's sender goroutines. It must not block.
	ReportUnreachable(id uint64)
	// ReportSnapshot says whether a MsgSnap reached member id. It is called from Send (on the
	// raft loop, for a snapshot refused at once) and from the snapshot sender goroutines,
	// once per MsgSnap. It must not block.
	ReportSnapshot(id uint64, ok bool)
	// Propose proposes data on this member and returns its Apply result. It is called for
	// proposals forwarded by other members, from the gRPC handler of each one, concurrently,
	// and by Forward for the local member; it blocks until the entry is applied or ctx ends.
	Propose(ctx context.Context, data []byte) (any, error)
}

var (
	_ raftstore.Transport = (*Transport)(nil)
	_ raftstore.Forwarder = (*Transport)(nil)
	_ api.RaftServer      = (*server)(nil)
)

// Transport carries raft messages between members over gRPC. It is the client side (Send,
// Forward) and, through Register, the server side. Create it with New, register it on a gRPC
// server, Start it, then hand it to raftstore as Config.Transport and call SetLocal with the
// node. All methods are safe for concurrent use.
type Transport struct {
	cfg    Config
	logger *slog.Logger
	local  atomic.Pointer[localRef]
	stats  counters

	mu      sync.Mutex
	started bool
	stopped bool
	peers   map[uint64]*peer
	timers  map[*time.Timer]struct{}
	ctx     context.Context // canceled by Stop
	cancel  context.CancelFunc
	wg      sync.WaitGroup // peer goroutines, snapshot senders
}

// localRef boxes a Local so it can sit in an atomic.Pointer.
type localRef struct{ l Local }

// New validates cfg and returns a Transport. It starts nothing and opens no connection.
func New(cfg Config) (*Transport, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.DialOptions = append([]grpc.DialOption(nil), cfg.DialOptions...)
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Transport{
		cfg:    cfg,
		logger: logger.With("component", "raft-transport", "raft_id", cfg.ID),
		peers:  make(map[uint64]*peer),
		timers: make(map[*time.Timer]struct{}),
		ctx:    ctx,
		cancel: cancel,
	}, nil
}

// Start starts a sender for every peer added so far (peers added later start at once). It
// may be called once; ctx is only checked.
func (t *Transport) Start(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return ErrStopped
	}
	if t.started {
		return errors.New("raft transport: Start called twice")
	}
	t.started = true
	for _, p := range t.peers {
		if err := t.startPeerLocked(p); err != nil {
			return err
		}
	}
	return nil
}

// Stop closes every peer connection, cancels snapshot sends in flight (reporting them as
// failed) and waits for the transport's goroutines to end, bounded by ctx. It is idempotent.
// It does not stop the gRPC server the transport is registered on; that is the caller's.
func (t *Transport) Stop(ctx context.Context) error {
	t.mu.Lock()
	if !t.stopped {
		t.stopped = true
		t.cancel()
		for tm := range t.timers {
			tm.Stop()
		}
		clear(t.timers)
		for _, p := range t.peers {
			p.close()
		}
	}
	t.mu.Unlock()
	done := make(chan struct{})
	go func() {
		t.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// SetLocal sets the local member: incoming messages go to its Step, delivery failures to its
// ReportUnreachable and ReportSnapshot, forwarded proposals to its Propose. Messages that
// arrive while no Local is set are dropped. l may be nil (to detach a stopped member) and may
// be replaced, e.g. by a restarted member.
func (t *Transport) SetLocal(l Local) {
	if l == nil {
		t.local.Store(nil)
		return
	}
	t.local.Store(&localRef{l: l})
}

func (t *Transport) getLocal() Local {
	if r := t.local.Load(); r != nil {
		return r.l
	}
	return nil
}

// AddPeer sets the address of member id, adding it if new (an existing peer is updated as by
// UpdatePeer, so AddPeer is idempotent). The connection is made lazily, when the first message
// is sent.
func (t *Transport) AddPeer(id uint64, addr string) error {
	if err := t.checkPeer(id, addr); err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return ErrStopped
	}
	if p, ok := t.peers[id]; ok {
		return p.setAddr(addr)
	}
	p := newPeer(t, id, addr)
	if t.started {
		if err := t.startPeerLocked(p); err != nil {
			return err
		}
	}
	t.peers[id] = p
	return nil
}

// UpdatePeer changes the address of member id. The stream to the old address is closed and
// the next messages go to the new one.
func (t *Transport) UpdatePeer(id uint64, addr string) error {
	if err := t.checkPeer(id, addr); err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return ErrStopped
	}
	p, ok := t.peers[id]
	if !ok {
		return fmt.Errorf("%w: UpdatePeer(%d)", ErrUnknownPeer, id)
	}
	return p.setAddr(addr)
}

// RemovePeer forgets member id: its queued messages are dropped, its connection closed and a
// snapshot in flight to it is canceled.
func (t *Transport) RemovePeer(id uint64) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return ErrStopped
	}
	p, ok := t.peers[id]
	if !ok {
		return fmt.Errorf("%w: RemovePeer(%d)", ErrUnknownPeer, id)
	}
	delete(t.peers, id)
	p.close()
	return nil
}

// Peers returns a copy of the peer table: raft ID to address.
func (t *Transport) Peers() map[uint64]string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[uint64]string, len(t.peers))
	for id, p := range t.peers {
		out[id] = p.address()
	}
	return out
}

func (t *Transport) checkPeer(id uint64, addr string) error {
	switch {
	case id == 0:
		return errors.New("raft transport: peer ID must be nonzero")
	case id == t.cfg.ID:
		return fmt.Errorf("raft transport: peer ID %d is the local member's ID", id)
	case addr == "":
		return fmt.Errorf("raft transport: peer %d: address must not be empty", id)
	}
	return nil
}

func (t *Transport) startPeerLocked(p *peer) error {
	if err := p.connect(); err != nil {
		return err
	}
	t.wg.Go(p.run)
	return nil
}

// Send queues msgs for their peers and returns at once. A message to an unknown peer, or to a
// peer whose queue is full, is dropped and reported with ReportUnreachable (and a MsgSnap also
// with ReportSnapshot(to, false)). Messages are never retried: raft retransmits. Send does not
// modify the messages.
func (t *Transport) Send(msgs []*pb.Message) {
	var unreachable map[uint64]bool
	for _, m := range msgs {
		to := m.GetTo()
		if f := t.cfg.Filter; f != nil {
			drop, delay := f(to, m)
			if drop {
				t.stats.filtered.Add(1)
				if m.GetType() == pb.MsgSnap {
					t.reportSnapshot(to, false)
				}
				continue
			}
			if delay > 0 {
				t.delay(m, delay)
				continue
			}
		}
		if !t.route(m) {
			if unreachable == nil {
				unreachable = make(map[uint64]bool)
			}
			unreachable[to] = true
		}
	}
	// One report per peer and call: a flood of drops must not become a flood of reports.
	for id := range unreachable {
		t.reportUnreachable(id)
	}
}

// route queues m for its peer and reports whether it was queued (or handed to a snapshot
// sender). It does not call ReportUnreachable; a MsgSnap failure is reported here.
func (t *Transport) route(m *pb.Message) bool {
	to := m.GetTo()
	t.mu.Lock()
	p := t.peers[to]
	running := t.started && !t.stopped
	t.mu.Unlock()
	if p == nil || !running {
		t.stats.dropped.Add(1)
		if m.GetType() == pb.MsgSnap {
			t.reportSnapshot(to, false)
		}
		return false
	}
	if m.GetType() == pb.MsgSnap {
		return p.sendSnapshot(m)
	}
	select {
	case p.queue <- m:
		return true
	default:
		t.stats.dropped.Add(1)
		return false
	}
}

// delay queues m after d without blocking.
func (t *Transport) delay(m *pb.Message, d time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return
	}
	t.stats.delayed.Add(1)
	var tm *time.Timer
	tm = time.AfterFunc(d, func() {
		t.mu.Lock()
		_, pending := t.timers[tm]
		delete(t.timers, tm)
		t.mu.Unlock()
		if pending && !t.route(m) {
			t.reportUnreachable(m.GetTo())
		}
	})
	t.timers[tm] = struct{}{}
}

func (t *Transport) reportUnreachable(id uint64) {
	if l := t.getLocal(); l != nil {
		l.ReportUnreachable(id)
	}
}

func (t *Transport) reportSnapshot(id uint64, ok bool) {
	if ok {
		t.stats.snapshotsSent.Add(1)
	} else {
		t.stats.snapshotsFailed.Add(1)
	}
	if l := t.getLocal(); l != nil {
		l.ReportSnapshot(id, ok)
	}
}

// Server returns the transport's Raft service, for a host that registers it
// itself (for example behind a proxy it can switch on and off while its gRPC
// server runs).
func (t *Transport) Server() api.RaftServer { return &server{t: t} }

// Register registers the transport's Raft service on s (the manager's gRPC server).
func (t *Transport) Register(s grpc.ServiceRegistrar) {
	api.RegisterRaftServer(s, &server{t: t})
}

// Stats are counters since New.
type Stats struct {
	// MessagesSent counts messages written to peer streams (not necessarily delivered).
	MessagesSent uint64
	// BatchesSent counts stream messages (batches) written.
	BatchesSent uint64
	// Dropped counts messages dropped by Send or a failed stream: unknown peer, full queue,
	// stream error.
	Dropped uint64
	// Filtered counts messages dropped by Config.Filter; Delayed those it held back.
	Filtered, Delayed uint64
	// StreamFailures counts message streams that failed (each is followed by a backoff).
	StreamFailures uint64
	// SnapshotsSent and SnapshotsFailed count outgoing snapshots by outcome.
	SnapshotsSent, SnapshotsFailed uint64
	// MessagesReceived counts messages handed to Local.Step; SnapshotsReceived the snapshots.
	MessagesReceived, SnapshotsReceived uint64
}

type counters struct {
	sent, batches, dropped, filtered, delayed, streamFailures   atomic.Uint64
	snapshotsSent, snapshotsFailed, received, snapshotsReceived atomic.Uint64
}

// Stats returns the transport's counters.
func (t *Transport) Stats() Stats {
	c := &t.stats
	return Stats{
		MessagesSent: c.sent.Load(), BatchesSent: c.batches.Load(), Dropped: c.dropped.Load(),
		Filtered: c.filtered.Load(), Delayed: c.delayed.Load(), StreamFailures: c.streamFailures.Load(),
		SnapshotsSent: c.snapshotsSent.Load(), SnapshotsFailed: c.snapshotsFailed.Load(),
		MessagesReceived: c.received.Load(), SnapshotsReceived: c.snapshotsReceived.Load(),
	}
}

// peer returns the peer with that ID, or nil.
func (t *Transport) peer(id uint64) *peer {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.peers[id]
}
