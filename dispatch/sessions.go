package dispatch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/identity"
	"github.com/shoalhq/shoal/internal/state"
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
