package dispatch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/identity"
	"github.com/shoalhq/shoal/internal/state"
)

// storeRetries is how many times a dispatcher write is retried when another
// writer changed the same objects in the meantime.
const storeRetries = 10

// HeartbeatFailureMessage is the node status message written when a node is
// marked DOWN because it missed its heartbeat deadline.
const HeartbeatFailureMessage = "heartbeat failure"

// NodeLeftMessage is the node status message written when a node is marked
// DOWN because its agent said, with Leave, that it is stopping gracefully.
const NodeLeftMessage = "node stopped"

// Dispatcher is the manager side of the manager<->worker protocol. It
// implements api.DispatcherServer: the embedding node registers it on its
// gRPC server. Only the Raft leader runs a dispatcher; the node makes a new
// one each time it becomes leader and stops it when it loses leadership.
//
// Before Start and after Stop every RPC fails with codes.Unavailable.
type Dispatcher struct {
	api.UnimplementedDispatcherServer

	store *state.Store
	cfg   DispatcherConfig
	log   *slog.Logger
	m     *dispatcherMetrics

	mu      sync.Mutex
	phase   phase
	ctx     context.Context
	cancel  context.CancelFunc
	nodes   map[string]*session // by node ID: the live session, or a reconnect grace entry
	kick    chan struct{}       // wakes the expiry loop when a deadline may be earlier
	stopped chan struct{}       // closed once every goroutine and RPC has returned

	// nodesGen counts changes to what gossip peer lists are made of (a
	// node added or removed, its gossip address or READY state changed);
	// nodeList is the store's node list as of nodeListGen, shared by every
	// session so that a periodic session check does not scan every node.
	nodesGen    atomic.Uint64
	nodeListMu  sync.Mutex
	nodeList    []*api.Node // stored objects: immutable, never modified
	nodeListGen uint64

	loops   sync.WaitGroup // the dispatcher's own goroutines
	rpcs    sync.WaitGroup // RPC handlers in flight
	batcher *statusBatcher
}

var _ api.DispatcherServer = (*Dispatcher)(nil)

type phase int

const (
	phaseNew phase = iota
	phaseRunning
	phaseStopped
)

// session is a node's session, or (id == "") the grace entry of a node that
// was READY when the dispatcher started and has not reconnected yet.
type session struct {
	nodeID   string
	id       string
	deadline time.Time // guarded by Dispatcher.mu
	left     bool      // the node left (Leave): no expiry processing; guarded by Dispatcher.mu
	done     chan struct{}
	roleKick chan struct{} // the node's role changed in the store: resend it now
	err      error         // why the session ended; set before done is closed
}

func (s *session) live() bool { return s.id != "" }

// end ends the session with err. Call with Dispatcher.mu held.
func (s *session) end(err error) {
	select {
	case <-s.done:
	default:
		s.err = err
		close(s.done)
	}
}

// NewDispatcher returns a dispatcher over store. It validates cfg and starts
// nothing.
func NewDispatcher(store *state.Store, cfg DispatcherConfig) (*Dispatcher, error) {
	if store == nil {
		return nil, errors.New("dispatch: NewDispatcher: store must not be nil")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("dispatch: %w", err)
	}
	return &Dispatcher{
		store:   store,
		cfg:     cfg,
		log:     cfg.Logger.With("component", "dispatcher"),
		m:       newDispatcherMetrics(cfg.Registerer),
		nodes:   map[string]*session{},
		kick:    make(chan struct{}, 1),
		stopped: make(chan struct{}),
	}, nil
}

// Start starts the dispatcher: it accepts RPCs from then on, and gives every
// node that is READY in the store a grace period (HeartbeatPeriod ×
// GracePeriodMultiplier) to open a session here before marking it DOWN.
// ctx only bounds Start itself. Start may be called once.
func (d *Dispatcher) Start(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	switch d.phase {
	case phaseRunning:
		return errors.New("dispatch: dispatcher already started")
	case phaseStopped:
		return fmt.Errorf("dispatch: dispatcher: %w", errdefs.ErrStopped)
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	deadline := d.cfg.Clock.Now().Add(d.cfg.deadline())
	var ready []string
	d.store.View(func(tx state.ReadTx) {
		nodes, err := tx.FindNodes(state.All())
		if err != nil {
			return
		}
		for _, n := range nodes {
			if n.GetStatus().GetState() == api.NodeState_NODE_STATE_READY {
				ready = append(ready, n.GetId())
			}
		}
	})
	for _, id := range ready {
		d.nodes[id] = &session{nodeID: id, deadline: deadline, done: make(chan struct{})}
	}
	d.batcher = newStatusBatcher(d)
	d.phase = phaseRunning
	d.loops.Add(3)
	go func() { defer d.loops.Done(); d.expiryLoop(d.ctx) }()
	go func() { defer d.loops.Done(); d.roleLoop(d.ctx) }()
	go func() { defer d.loops.Done(); d.batcher.run(d.ctx) }()
	d.log.Info("dispatcher started", "heartbeat_period", d.cfg.HeartbeatPeriod, "nodes_in_grace", len(ready))
	return nil
}

// Stop ends every session and stream and waits, bounded by ctx, for the
// dispatcher's goroutines and in-flight RPCs to return. Queued status
// reports that were not written fail; agents send them again to the next
// leader. Stop is idempotent.
func (d *Dispatcher) Stop(ctx context.Context) error {
	d.mu.Lock()
	switch d.phase {
	case phaseNew:
		d.phase = phaseStopped
		close(d.stopped)
		d.mu.Unlock()
		return nil
	case phaseRunning:
		d.phase = phaseStopped
		d.cancel()
		for id, s := range d.nodes {
			s.end(status.Error(codes.Unavailable, "dispatcher stopped"))
			delete(d.nodes, id)
		}
		go func() {
			d.loops.Wait()
			d.rpcs.Wait()
			close(d.stopped)
		}()
	}
	d.mu.Unlock()
	select {
	case <-d.stopped:
		d.m.sessions.Set(0)
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// enter admits an RPC: it returns the dispatcher's context and the func the
// handler must call when it returns.
func (d *Dispatcher) enter() (context.Context, func(), error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.phase != phaseRunning {
		return nil, nil, status.Error(codes.Unavailable, "dispatcher is not running on this manager")
	}
	d.rpcs.Add(1)
	return d.ctx, d.rpcs.Done, nil
}

// lookup returns the live session of nodeID with ID sessionID.
func (d *Dispatcher) lookup(nodeID, sessionID string) (*session, error) {
	if nodeID == "" {
		return nil, status.Error(codes.InvalidArgument, "node_id: must not be empty")
	}
	if sessionID == "" {
		return nil, status.Error(codes.InvalidArgument, "session_id: must not be empty")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.nodes[nodeID]
	if s == nil || !s.live() || s.id != sessionID {
		return nil, status.Errorf(codes.NotFound, "node %s has no session %s: open a new session", nodeID, sessionID)
	}
	select {
	case <-s.done:
		return nil, status.Errorf(codes.NotFound, "session %s of node %s has ended: open a new session", sessionID, nodeID)
	default:
	}
	return s, nil
}

// isLive reports whether nodeID has a live session.
func (d *Dispatcher) isLive(nodeID string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.nodes[nodeID]
	return s != nil && s.live()
}

func (d *Dispatcher) wakeExpiry() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

func rpcContextError(ctx, dctx context.Context) error {
	if dctx.Err() != nil {
		return status.Error(codes.Unavailable, "dispatcher stopped")
	}
	return status.FromContextError(ctx.Err()).Err()
}

// Session opens a session for a node that exists in the store, marks the
// node READY and streams session messages until the session ends: it is
// replaced by a newer session of the same node, the node misses its
// heartbeat deadline, or the dispatcher stops.
func (d *Dispatcher) Session(req *api.SessionRequest, stream grpc.ServerStreamingServer[api.SessionMessage]) error {
	dctx, exit, err := d.enter()
	if err != nil {
		return err
	}
	defer exit()
	nodeID := req.GetNodeId()
	if nodeID == "" {
		return status.Error(codes.InvalidArgument, "node_id: must not be empty")
	}
	ctx := stream.Context()
	s := &session{nodeID: nodeID, id: identity.NewID(), done: make(chan struct{}), roleKick: make(chan struct{}, 1)}

	d.mu.Lock()
	s.deadline = d.cfg.Clock.Now().Add(d.cfg.deadline())
	if old := d.nodes[nodeID]; old != nil {
		old.end(status.Error(codes.Aborted, "session replaced by a newer session of the same node"))
	}
	d.nodes[nodeID] = s
	d.mu.Unlock()
	d.wakeExpiry()

	unregister := func() {
		d.mu.Lock()
		if d.nodes[nodeID] == s {
			delete(d.nodes, nodeID)
		}
		s.end(status.Error(codes.Canceled, "session closed"))
		d.mu.Unlock()
	}

	addr := req.GetAddr()
	if addr == "" {
		if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
			addr = p.Addr.String()
		}
	}
	if err := d.markReady(dctx, nodeID, addr, req.GetDescription()); err != nil {
		if errors.Is(err, errdefs.ErrNotFound) {
			unregister()
			return status.Errorf(codes.NotFound, "node %s is not a member of the cluster: %v", nodeID, err)
		}
		// The write may have committed all the same (a timeout, a lost
		// leadership): the deadline keeps running, so a node marked READY
		// that never comes back is marked DOWN, as after any lost session.
		if dctx.Err() != nil {
			return status.Error(codes.Unavailable, "dispatcher stopped")
		}
		return status.Errorf(codes.Unavailable, "recording node %s as ready: %v", nodeID, err)
	}
	d.m.sessions.Inc()
	defer d.m.sessions.Dec()
	d.log.Info("node session opened", "node", nodeID, "session", s.id, "addr", addr)

	view := d.sessionView(nodeID)
	if err := stream.Send(view.message(s.id, d.cfg.HeartbeatPeriod)); err != nil {
		// The node is READY now but never heard of its session (it went
		// away meanwhile): its deadline keeps running, as when a session
		// stream breaks later, so it is marked DOWN unless it comes back.
		return err
	}
	// The manager list, the node's role, the trusted roots, the gossip keys
	// and the gossip peers can change while the session lasts (a manager
	// joins or leaves, the node is promoted or demoted, a rotation, nodes
	// come and go); check them once per heartbeat period, and at once when
	// the store says the role, the roots or the keys changed, and send them
	// when they did.
	t := d.cfg.Clock.NewTimer(d.cfg.HeartbeatPeriod)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			d.log.Info("node session ended", "node", nodeID, "session", s.id, "reason", s.err)
			return s.err
		case <-dctx.Done():
			return status.Error(codes.Unavailable, "dispatcher stopped")
		case <-ctx.Done():
			// The agent went away. Its deadline keeps running: it is marked DOWN
			// unless it opens a new session in time. A node that left is DOWN
			// already: closing the stream ends its session.
			d.mu.Lock()
			left := s.left
			d.mu.Unlock()
			if left {
				unregister()
				d.log.Info("node session closed after leave", "node", nodeID, "session", s.id)
			}
			return status.FromContextError(ctx.Err()).Err()
		case <-s.roleKick:
			// The node was promoted or demoted, or the roots or gossip keys
			// were rotated: tell it now, not at the next check.
			if err := d.resendSession(stream, s, &view); err != nil {
				return err
			}
		case <-t.C():
			// The manager list changes without a store event (Raft membership).
			if err := d.resendSession(stream, s, &view); err != nil {
				return err
			}
			t.Reset(d.cfg.HeartbeatPeriod)
		}
	}
}

// resendSession sends the session message again if what it carries changed
// since it was last sent (last).
func (d *Dispatcher) resendSession(stream grpc.ServerStreamingServer[api.SessionMessage], s *session, last *sessionView) error {
	cur := d.sessionView(s.nodeID)
	if cur.equal(*last) {
		return nil
	}
	*last = cur
	return stream.Send(cur.message(s.id, d.cfg.HeartbeatPeriod))
}

// MaxGossipPeers is how many gossip addresses of other nodes a session
// message carries (and a manager joins when its member is alone): enough
// for a joining member to find the cluster with a few nodes down, few
// enough that the message stays small in a big cluster.
const MaxGossipPeers = 8

// sessionView is what a session message tells a node about the cluster.
type sessionView struct {
	managers    []string
	role        api.NodeRole
	raftID      uint64
	peers       []*api.RaftPeer
	roots       []byte
	gossipKeys  [][]byte
	gossipPeers []string
}

// equal reports whether a node told v needs to hear w. The Raft peers are
// left out as before: they follow the role and the manager list.
func (v sessionView) equal(w sessionView) bool {
	return slices.Equal(v.managers, w.managers) && v.role == w.role && v.raftID == w.raftID &&
		bytes.Equal(v.roots, w.roots) && slices.EqualFunc(v.gossipKeys, w.gossipKeys, bytes.Equal) &&
		slices.Equal(v.gossipPeers, w.gossipPeers)
}

func (v sessionView) message(sessionID string, period time.Duration) *api.SessionMessage {
	return &api.SessionMessage{SessionId: sessionID, HeartbeatPeriod: int64(period),
		Managers: slices.Clone(v.managers), Role: v.role, RaftId: v.raftID, Peers: v.peers, RootCaPem: v.roots,
		GossipKeys: v.gossipKeys, GossipPeers: slices.Clone(v.gossipPeers)}
}

// sessionView reads what nodeID's session message carries now.
func (d *Dispatcher) sessionView(nodeID string) sessionView {
	v := sessionView{managers: slices.Clone(d.cfg.Managers())}
	v.role, v.raftID, v.peers = d.roleOf(nodeID)
	// Shared: only read here, and the keys are copied out.
	d.store.ViewShared(func(tx state.ReadTx) {
		if cs, _ := tx.FindClusters(state.All()); len(cs) > 0 {
			v.roots = cs[0].GetRootCa().TrustBundle()
			for _, k := range cs[0].GetGossip().GetKeys() {
				v.gossipKeys = append(v.gossipKeys, bytes.Clone(k))
			}
		}
	})
	v.gossipPeers = GossipPeers(nodeID, d.nodesForPeers(), MaxGossipPeers)
	return v
}

// nodesForPeers returns every node, sorted by ID, as of the latest change
// that matters to gossip peer lists. The list is rebuilt only after such a
// change, not once per session check.
func (d *Dispatcher) nodesForPeers() []*api.Node {
	d.nodeListMu.Lock()
	defer d.nodeListMu.Unlock()
	gen := d.nodesGen.Load()
	if d.nodeList != nil && d.nodeListGen == gen {
		return d.nodeList
	}
	var nodes []*api.Node
	d.store.ViewShared(func(tx state.ReadTx) {
		nodes, _ = tx.FindNodes(state.All())
	})
	if !slices.IsSortedFunc(nodes, byNodeID) {
		slices.SortFunc(nodes, byNodeID)
	}
	if nodes == nil {
		nodes = []*api.Node{}
	}
	d.nodeList, d.nodeListGen = nodes, gen
	return nodes
}

// peersChanged reports whether a node event changes gossip peer lists.
func peersChanged(e state.Event) bool {
	if e.Kind != state.KindNode {
		return false
	}
	if e.Action != state.ActionUpdate {
		return true
	}
	old, _ := e.Old.(*api.Node)
	n := e.Node()
	ready := func(n *api.Node) bool { return n.GetStatus().GetState() == api.NodeState_NODE_STATE_READY }
	return old.GetDescription().GetGossipAddr() != n.GetDescription().GetGossipAddr() || ready(old) != ready(n)
}

// GossipPeers picks up to limit gossip addresses of nodes other than self
// for self to join: READY nodes first, then the others (a node that is DOWN
// now may be back by the time self tries it). Within each group nodes are
// taken in node-ID order starting after self, wrapping around, so that
// different nodes join different peers rather than all the same few. nodes
// must be sorted by ID, as the store lists them.
func GossipPeers(self string, nodes []*api.Node, limit int) []string {
	if limit <= 0 || len(nodes) == 0 {
		return nil
	}
	// Walk the ring of nodes in ID order starting after self, once for the
	// READY ones and, if they are too few, once more for the others; stop
	// as soon as limit addresses are found, so a big cluster costs a few
	// steps, not a scan.
	start, _ := slices.BinarySearchFunc(nodes, self, func(n *api.Node, id string) int { return strings.Compare(n.GetId(), id) })
	var out []string
	for _, wantReady := range []bool{true, false} {
		for i := range nodes {
			n := nodes[(start+i)%len(nodes)]
			addr := n.GetDescription().GetGossipAddr()
			if n.GetId() == self || addr == "" || (n.GetStatus().GetState() == api.NodeState_NODE_STATE_READY) != wantReady {
				continue
			}
			if !slices.Contains(out, addr) {
				out = append(out, addr)
				if len(out) == limit {
					return out
				}
			}
		}
	}
	return out
}

func byNodeID(a, b *api.Node) int { return strings.Compare(a.GetId(), b.GetId()) }

// roleLoop watches the store for role changes (promotion, demotion) and wakes
// the session of the node concerned, so it hears of the change at once rather
// than at its session's next periodic check. A change of the cluster's
// trusted roots or gossip keys (a rotation phase) wakes every session.
func (d *Dispatcher) roleLoop(ctx context.Context) {
	changed := func(e state.Event) bool {
		if peersChanged(e) {
			return true
		}
		if e.Action != state.ActionUpdate {
			return false
		}
		switch e.Kind {
		case state.KindNode:
			return roleChanged(e)
		case state.KindCluster:
			old, _ := e.Old.(*api.Cluster)
			return !bytes.Equal(old.GetRootCa().TrustBundle(), e.Cluster().GetRootCa().TrustBundle()) ||
				!slices.EqualFunc(old.GetGossip().GetKeys(), e.Cluster().GetGossip().GetKeys(), bytes.Equal)
		}
		return false
	}
	for {
		w := d.store.Watch(changed)
		// Whatever changed before the watch began is in the next list.
		d.nodesGen.Add(1)
		for open := true; open; {
			select {
			case <-ctx.Done():
				w.Cancel()
				return
			case ev, ok := <-w.C:
				if !ok {
					open = false
					break
				}
				if ev.Kind == state.KindCluster {
					// The trusted roots or the gossip keys changed (a
					// rotation): every node hears of it now.
					d.mu.Lock()
					for id := range d.nodes {
						d.kickRoleLocked(id)
					}
					d.mu.Unlock()
					continue
				}
				if peersChanged(ev) {
					d.nodesGen.Add(1)
				}
				if ev.Action == state.ActionDelete {
					// A removed node's session ends at once: its certificate
					// is refused from now on, and so is what it has open.
					id := ev.Object.GetId()
					d.mu.Lock()
					if s := d.nodes[id]; s != nil {
						s.end(status.Errorf(codes.PermissionDenied, "node %s was removed from the cluster", id))
						delete(d.nodes, id)
					}
					d.mu.Unlock()
					continue
				}
				if ev.Action == state.ActionUpdate && roleChanged(ev) {
					d.kickRole(ev.Object.GetId())
				}
			}
		}
		// The store was restored or this watch fell behind: a role change may
		// have been missed, so every session checks.
		d.log.Info("role watch restarted", "reason", w.Err())
		d.mu.Lock()
		for id := range d.nodes {
			d.kickRoleLocked(id)
		}
		d.mu.Unlock()
		if errors.Is(w.Err(), state.ErrStoreClosed) {
			return
		}
	}
}

// roleChanged reports whether a node update changed the node's role.
func roleChanged(e state.Event) bool {
	old, _ := e.Old.(*api.Node)
	return old.GetRole() != e.Node().GetRole()
}

func (d *Dispatcher) kickRole(nodeID string) {
	d.mu.Lock()
	d.kickRoleLocked(nodeID)
	d.mu.Unlock()
}

func (d *Dispatcher) kickRoleLocked(nodeID string) {
	if s := d.nodes[nodeID]; s != nil && s.roleKick != nil {
		select {
		case s.roleKick <- struct{}{}:
		default:
		}
	}
}

// roleOf returns the node's role as stored and, for a manager, its Raft ID
// and every manager's Raft ID and address (what a promoted node starts its
// Raft member with).
func (d *Dispatcher) roleOf(nodeID string) (api.NodeRole, uint64, []*api.RaftPeer) {
	var (
		role   api.NodeRole
		raftID uint64
		peers  []*api.RaftPeer
	)
	// Shared: only scalar fields are read; the peers are new messages.
	d.store.ViewShared(func(tx state.ReadTx) {
		n := tx.GetNode(nodeID)
		if n == nil {
			return
		}
		role = n.GetRole()
		if role != api.NodeRole_NODE_ROLE_MANAGER {
			return
		}
		raftID = n.GetManagerStatus().GetRaftId()
		managers, _ := tx.FindNodes(state.ByRole(api.NodeRole_NODE_ROLE_MANAGER))
		for _, m := range managers {
			if ms := m.GetManagerStatus(); ms.GetRaftId() != 0 && ms.GetAddr() != "" {
				peers = append(peers, &api.RaftPeer{RaftId: ms.RaftId, Addr: ms.Addr})
			}
		}
	})
	return role, raftID, peers
}

// markReady records in the store that the node has a session.
func (d *Dispatcher) markReady(ctx context.Context, nodeID, addr string, desc *api.NodeDescription) error {
	return d.store.UpdateRetry(ctx, storeRetries, func(tx state.WriteTx) error {
		n := tx.GetNode(nodeID)
		if n == nil {
			return fmt.Errorf("node %s: %w", nodeID, errdefs.ErrNotFound)
		}
		n.Status = &api.NodeStatus{
			State:     api.NodeState_NODE_STATE_READY,
			Addr:      addr,
			Timestamp: d.cfg.Clock.Now().UnixNano(),
		}
		if desc != nil {
			n.Description = desc
		}
		return tx.UpdateNode(n)
	})
}

// Heartbeat extends the node's deadline and says when the next heartbeat
// is due. An unknown or ended session gets codes.NotFound: the agent must
// open a new session.
func (d *Dispatcher) Heartbeat(ctx context.Context, req *api.HeartbeatRequest) (*api.HeartbeatResponse, error) {
	_, exit, err := d.enter()
	if err != nil {
		return nil, err
	}
	defer exit()
	if _, err := d.lookup(req.GetNodeId(), req.GetSessionId()); err != nil {
		return nil, err
	}
	d.mu.Lock()
	s := d.nodes[req.GetNodeId()]
	if s == nil || s.id != req.GetSessionId() {
		d.mu.Unlock()
		return nil, status.Errorf(codes.NotFound, "session %s of node %s has ended: open a new session", req.GetSessionId(), req.GetNodeId())
	}
	s.deadline = d.cfg.Clock.Now().Add(d.cfg.deadline())
	d.mu.Unlock()
	d.m.heartbeats.Inc()
	return &api.HeartbeatResponse{Period: int64(jitter(d.cfg.HeartbeatPeriod, d.cfg.HeartbeatJitter))}, nil
}

// Leave records that the node is stopping gracefully: it marks the node
// DOWN at once with NodeLeftMessage, so the orchestrator replaces its tasks
// and the scheduler places nothing more on it, without waiting for the
// heartbeat deadline. The session is exempt from heartbeat expiry from then
// on but stays valid for UpdateTaskStatus (and Assignments), so the agent
// can report the final status of the tasks it shuts down; it ends when the
// agent closes its Session stream. A new Session of the node marks it READY
// again. Leave is idempotent. An unknown or ended session gets the same
// codes as Heartbeat: codes.InvalidArgument for a missing ID, and
// codes.NotFound otherwise.
func (d *Dispatcher) Leave(ctx context.Context, req *api.LeaveRequest) (*api.LeaveResponse, error) {
	dctx, exit, err := d.enter()
	if err != nil {
		return nil, err
	}
	defer exit()
	nodeID, sessionID := req.GetNodeId(), req.GetSessionId()
	s, err := d.lookup(nodeID, sessionID)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	ended := d.nodes[nodeID] != s
	if !ended {
		select {
		case <-s.done:
			ended = true
		default:
			s.left = true
		}
	}
	d.mu.Unlock()
	if ended {
		return nil, status.Errorf(codes.NotFound, "session %s of node %s has ended: open a new session", sessionID, nodeID)
	}

	// The write is bounded by the caller and by the dispatcher's life.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(dctx, cancel)
	defer stop()
	marked := false
	err = d.store.UpdateRetry(wctx, storeRetries, func(tx state.WriteTx) error {
		marked = false
		if !d.current(s) {
			return nil // a newer session of the node marked it READY: it is back
		}
		n := tx.GetNode(nodeID)
		if n == nil {
			return fmt.Errorf("node %s: %w", nodeID, errdefs.ErrNotFound)
		}
		if n.GetStatus().GetState() == api.NodeState_NODE_STATE_DOWN && n.GetStatus().GetMessage() == NodeLeftMessage {
			return nil // a repeated Leave
		}
		n.Status = &api.NodeStatus{
			State:     api.NodeState_NODE_STATE_DOWN,
			Message:   NodeLeftMessage,
			Addr:      n.GetStatus().GetAddr(),
			Timestamp: d.cfg.Clock.Now().UnixNano(),
		}
		marked = true
		return tx.UpdateNode(n)
	})
	if err != nil {
		if errors.Is(err, errdefs.ErrNotFound) {
			return nil, status.Errorf(codes.NotFound, "node %s is not a member of the cluster: %v", nodeID, err)
		}
		if dctx.Err() != nil {
			return nil, status.Error(codes.Unavailable, "dispatcher stopped")
		}
		if ctx.Err() != nil {
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		return nil, status.Errorf(codes.Unavailable, "recording that node %s left: %v", nodeID, err)
	}
	if marked {
		d.m.nodesLeft.Inc()
		d.log.Info("node left; marked down", "node", nodeID, "session", sessionID, "reason", NodeLeftMessage)
	}
	return &api.LeaveResponse{}, nil
}

// current reports whether s is still its node's session and has not ended.
func (d *Dispatcher) current(s *session) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.nodes[s.nodeID] != s {
		return false
	}
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// expiryLoop marks nodes DOWN when their deadline passes.
//
// It also guards against the manager's own stalls. If the loop wakes much
// later than it asked to, this process did not run for a while (a long GC
// pause, a paused VM, an overloaded host), and heartbeats that arrived
// meanwhile may still be waiting to be handled: every deadline then moves
// forward by the lateness, so that a stalled manager does not mark every
// node DOWN and reschedule the whole cluster's tasks. The loop wakes at
// least once per heartbeat period so that it notices such a stall. The
// lateness is measured on the real monotonic clock, not cfg.Clock.
func (d *Dispatcher) expiryLoop(ctx context.Context) {
	t := d.cfg.Clock.NewTimer(d.cfg.deadline())
	defer t.Stop()
	tolerance := max(d.cfg.HeartbeatPeriod/4, 20*time.Millisecond)
	var (
		slept   time.Time     // real time the loop went to sleep
		planned time.Duration // how long it meant to sleep
	)
	for {
		if !slept.IsZero() {
			if late := d.cfg.sinceReal(slept) - planned; late > tolerance {
				d.extendDeadlines(late)
			}
		}
		now := d.cfg.Clock.Now()
		var expired []*session
		var next time.Time
		d.mu.Lock()
		for id, s := range d.nodes {
			if s.left {
				// DOWN already; the session lasts until the agent closes it
				// (or a new session replaces it, or the dispatcher stops).
				continue
			}
			if !s.deadline.After(now) {
				expired = append(expired, s)
				delete(d.nodes, id)
				s.end(status.Error(codes.DeadlineExceeded, "node missed its heartbeat deadline and was marked down"))
			} else if next.IsZero() || s.deadline.Before(next) {
				next = s.deadline
			}
		}
		d.mu.Unlock()
		if len(expired) > 0 {
			d.markDown(ctx, expired)
		}
		wait := d.cfg.HeartbeatPeriod
		if !next.IsZero() {
			wait = min(wait, next.Sub(now))
		}
		if !t.Stop() {
			select {
			case <-t.C():
			default:
			}
		}
		t.Reset(wait)
		slept, planned = time.Now(), wait
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		case <-d.kick:
			// Woken early: not a stall.
			slept = time.Time{}
		}
	}
}

// extendDeadlines moves every session's deadline forward by stall, the time
// the dispatcher did not run.
func (d *Dispatcher) extendDeadlines(stall time.Duration) {
	d.mu.Lock()
	for _, s := range d.nodes {
		s.deadline = s.deadline.Add(stall)
	}
	n := len(d.nodes)
	d.mu.Unlock()
	d.m.stalls.Inc()
	d.log.Warn("dispatcher did not run on time; heartbeat deadlines extended", "stall", stall.Round(time.Millisecond), "nodes", n)
}

// markDown writes DOWN for the expired nodes, in one transaction, skipping
// any that opened a new session meanwhile.
func (d *Dispatcher) markDown(ctx context.Context, expired []*session) {
	var marked []string
	err := d.store.UpdateRetry(ctx, storeRetries, func(tx state.WriteTx) error {
		marked = marked[:0]
		now := d.cfg.Clock.Now().UnixNano()
		for _, s := range expired {
			if d.isLive(s.nodeID) {
				continue
			}
			n := tx.GetNode(s.nodeID)
			if n == nil || n.GetStatus().GetState() == api.NodeState_NODE_STATE_DOWN {
				continue
			}
			n.Status = &api.NodeStatus{
				State:     api.NodeState_NODE_STATE_DOWN,
				Message:   HeartbeatFailureMessage,
				Addr:      n.GetStatus().GetAddr(),
				Timestamp: now,
			}
			if err := tx.UpdateNode(n); err != nil {
				return err
			}
			marked = append(marked, s.nodeID)
		}
		return nil
	})
	if err != nil {
		if ctx.Err() == nil {
			d.log.Error("marking nodes down failed", "nodes", len(expired), "err", err)
		}
		return
	}
	for _, id := range marked {
		d.m.nodesDown.Inc()
		d.log.Warn("node marked down", "node", id, "reason", HeartbeatFailureMessage)
	}
}

// assignable reports whether t belongs in nodeID's assignment set.
func assignable(t *api.Task, nodeID string) bool {
	if t == nil || t.GetNodeId() != nodeID {
		return false
	}
	st := t.GetStatus().GetState()
	if st < api.TaskState_TASK_STATE_ASSIGNED {
		return false
	}
	dead := st >= api.TaskState_TASK_STATE_COMPLETE
	return !(dead && t.GetDesiredState() >= api.TaskState_TASK_STATE_SHUTDOWN)
}

// Assignments streams the node's assignment set: a TYPE_COMPLETE message at
// once, then TYPE_INCREMENTAL messages as tasks are added, changed or
// removed. The stream ends with the session.
func (d *Dispatcher) Assignments(req *api.AssignmentsRequest, stream grpc.ServerStreamingServer[api.AssignmentsMessage]) error {
	dctx, exit, err := d.enter()
	if err != nil {
		return err
	}
	defer exit()
	s, err := d.lookup(req.GetNodeId(), req.GetSessionId())
	if err != nil {
		return err
	}
	for {
		err := d.streamAssignments(dctx, s, stream)
		if errors.Is(err, state.ErrWatchReset) || errors.Is(err, state.ErrWatchOverflow) {
			// The store was restored or we fell behind: start over with a
			// complete set, which the agent reconciles against.
			d.log.Info("assignments watch restarted", "node", s.nodeID, "reason", err)
			continue
		}
		if errors.Is(err, state.ErrStoreClosed) {
			return status.Error(codes.Unavailable, "store closed")
		}
		return err
	}
}

func (d *Dispatcher) streamAssignments(dctx context.Context, s *session, stream grpc.ServerStreamingServer[api.AssignmentsMessage]) error {
	ctx := stream.Context()
	nodeID := s.nodeID
	var initial []*api.Task
	filter := func(e state.Event) bool {
		t := e.Task()
		if t == nil {
			return false
		}
		if t.GetNodeId() == nodeID {
			return true
		}
		old, _ := e.Old.(*api.Task)
		return old != nil && old.GetNodeId() == nodeID
	}
	w := d.store.ViewAndWatch(func(tx state.ReadTx) {
		tasks, err := tx.FindTasks(state.ByNodeID(nodeID))
		if err != nil {
			return
		}
		for _, t := range tasks {
			if assignable(t, nodeID) {
				initial = append(initial, t)
			}
		}
	}, filter)
	defer w.Cancel()

	sent := make(map[string]*api.Task, len(initial))
	for _, t := range initial {
		sent[t.GetId()] = t
	}
	if err := stream.Send(&api.AssignmentsMessage{Type: api.AssignmentsMessage_TYPE_COMPLETE, Update: initial}); err != nil {
		return err
	}

	changes := map[string]*api.Task{} // nil value: remove
	apply := func(e state.Event) {
		t := e.Task()
		id := t.GetId()
		if e.Action == state.ActionDelete || !assignable(t, nodeID) {
			if _, ok := sent[id]; ok {
				delete(sent, id)
				changes[id] = nil
			}
			return
		}
		prev, ok := sent[id]
		if ok && prev.GetDesiredState() == t.GetDesiredState() && prev.GetSpecVersion() == t.GetSpecVersion() &&
			proto.Equal(prev.GetSpec(), t.GetSpec()) {
			return // only the status changed: the agent reported it itself
		}
		sent[id] = t
		changes[id] = t
	}
	for {
		select {
		case <-s.done:
			return s.err
		case <-dctx.Done():
			return status.Error(codes.Unavailable, "dispatcher stopped")
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case e, ok := <-w.C:
			if !ok {
				return w.Err()
			}
			apply(e)
			// Take every event already delivered, so one transaction (or a burst
			// of them) becomes one message.
			closed := false
		drain:
			for {
				select {
				case e, ok := <-w.C:
					if !ok {
						closed = true
						break drain
					}
					apply(e)
				default:
					break drain
				}
			}
			if len(changes) > 0 {
				msg := &api.AssignmentsMessage{Type: api.AssignmentsMessage_TYPE_INCREMENTAL}
				ids := make([]string, 0, len(changes))
				for id := range changes {
					ids = append(ids, id)
				}
				sort.Strings(ids)
				for _, id := range ids {
					if t := changes[id]; t != nil {
						msg.Update = append(msg.Update, t)
					} else {
						msg.Remove = append(msg.Remove, id)
					}
				}
				clear(changes)
				if err := stream.Send(msg); err != nil {
					return err
				}
			}
			if closed {
				return w.Err()
			}
		}
	}
}

// UpdateTaskStatus queues the reported statuses of the node's own tasks and
// returns once they are written to the store (in a batch with other
// reports). Reports for tasks that do not exist or are not assigned to the
// reporting node are dropped and logged: a worker may only report its own
// tasks. Reports that would move a task's state backward are ignored.
func (d *Dispatcher) UpdateTaskStatus(ctx context.Context, req *api.UpdateTaskStatusRequest) (*api.UpdateTaskStatusResponse, error) {
	dctx, exit, err := d.enter()
	if err != nil {
		return nil, err
	}
	defer exit()
	nodeID := req.GetNodeId()
	if _, err := d.lookup(nodeID, req.GetSessionId()); err != nil {
		return nil, err
	}
	now := d.cfg.Clock.Now().UnixNano()
	var accepted []queuedStatus
	d.store.View(func(tx state.ReadTx) {
		for _, u := range req.GetUpdates() {
			st := u.GetStatus()
			if u.GetTaskId() == "" || st == nil || st.GetState() < api.TaskState_TASK_STATE_ACCEPTED ||
				st.GetState() > api.TaskState_TASK_STATE_REJECTED {
				d.m.statusUpdates.WithLabelValues("invalid").Inc()
				d.log.Warn("dropping invalid task status report", "node", nodeID, "task", u.GetTaskId(), "state", st.GetState())
				continue
			}
			t := tx.GetTask(u.GetTaskId())
			if t == nil || t.GetNodeId() != nodeID {
				d.m.statusUpdates.WithLabelValues("foreign").Inc()
				d.log.Warn("dropping status report for a task not assigned to the reporting node",
					"node", nodeID, "task", u.GetTaskId())
				continue
			}
			st = proto.Clone(st).(*api.TaskStatus)
			if st.Timestamp == 0 {
				st.Timestamp = now
			}
			fillNodeAddr(st, tx.GetNode(nodeID).GetStatus().GetAddr())
			accepted = append(accepted, queuedStatus{taskID: u.GetTaskId(), nodeID: nodeID, status: st})
		}
	})
	if len(accepted) == 0 {
		return &api.UpdateTaskStatusResponse{}, nil
	}
	d.m.statusUpdates.WithLabelValues("queued").Add(float64(len(accepted)))
	res := d.batcher.add(accepted)
	select {
	case <-res.done:
		if res.err != nil {
			if dctx.Err() != nil {
				return nil, status.Error(codes.Unavailable, "dispatcher stopped before the status was written")
			}
			return nil, status.Errorf(codes.Unavailable, "writing task status: %v", res.err)
		}
		return &api.UpdateTaskStatusResponse{}, nil
	case <-dctx.Done():
		return nil, status.Error(codes.Unavailable, "dispatcher stopped before the status was written")
	case <-ctx.Done():
		return nil, rpcContextError(ctx, dctx)
	}
}
