package controlapi

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/state"
)

// lookupNode finds a node by ID, then by hostname, then by unique ID prefix.
func lookupNode(tx state.ReadTx, ref string) *api.Node {
	if ref == "" {
		return nil
	}
	if n := tx.GetNode(ref); n != nil {
		return n
	}
	if byName, _ := tx.FindNodes(state.ByName(ref)); len(byName) == 1 {
		return byName[0]
	}
	if byPrefix, _ := tx.FindNodes(state.ByIDPrefix(ref)); len(byPrefix) == 1 {
		return byPrefix[0]
	}
	return nil
}

// GetNode returns a node by ID or hostname.
func (s *Server) GetNode(ctx context.Context, req *api.GetRequest) (*api.NodeResponse, error) {
	if err := s.readBarrier(ctx); err != nil {
		return nil, err
	}
	var n *api.Node
	s.read(func(tx state.ReadTx) { n = lookupNode(tx, req.GetId()) })
	if n == nil {
		return nil, notFound("node", req.GetId())
	}
	return &api.NodeResponse{Node: n}, nil
}

// ListNodes lists nodes, optionally by role.
func (s *Server) ListNodes(ctx context.Context, req *api.ListNodesRequest) (*api.ListNodesResponse, error) {
	if err := s.readBarrier(ctx); err != nil {
		return nil, err
	}
	by := state.All()
	if rs := req.GetRoles(); len(rs) > 0 {
		var bys []state.By
		for _, r := range rs {
			bys = append(bys, state.ByRole(r))
		}
		by = state.Or(bys...)
	}
	var out []*api.Node
	var err error
	s.read(func(tx state.ReadTx) { out, err = tx.FindNodes(by) })
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return &api.ListNodesResponse{Nodes: out}, nil
}

// UpdateNode replaces a node's spec (availability, labels, desired role). A
// role change runs on the leader (it is forwarded there): promoting a worker
// adds it to the Raft group as a learner and records it as a manager, which
// the node learns from its dispatcher session; demoting a manager removes it
// from the Raft group first, which is refused when the remaining managers
// could not reach a quorum (ErrNoQuorum) and always for the last manager.
func (s *Server) UpdateNode(ctx context.Context, req *api.UpdateNodeRequest) (*api.NodeResponse, error) {
	if err := ValidateNodeSpec(req.GetSpec()); err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	var cur *api.Node
	s.store.View(func(tx state.ReadTx) { cur = lookupNode(tx, req.GetId()) })
	if cur != nil && req.Spec.DesiredRole != cur.Role {
		return s.changeRole(ctx, req, cur)
	}
	var id string
	err := s.store.Update(ctx, func(tx state.WriteTx) error {
		cur := lookupNode(tx, req.GetId())
		if cur == nil {
			return fmt.Errorf("node %q: %w", req.GetId(), errdefs.ErrNotFound)
		}
		id = cur.Id
		if req.GetVersion() != 0 && cur.Meta.GetVersion() != req.GetVersion() {
			return fmt.Errorf("node %s: version %d is not the current %d: %w", cur.Id, req.GetVersion(), cur.Meta.GetVersion(), errdefs.ErrConflict)
		}
		if req.Spec.DesiredRole != cur.Role {
			return fmt.Errorf("node %s: its role changed concurrently: %w", cur.Id, errdefs.ErrConflict)
		}
		cur.Spec = req.Spec
		return tx.UpdateNode(cur)
	})
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return s.localNode(id)
}

// changeRole promotes a worker or demotes a manager (req asks for the role
// cur does not have). It runs on the leader.
func (s *Server) changeRole(ctx context.Context, req *api.UpdateNodeRequest, cur *api.Node) (*api.NodeResponse, error) {
	if req.GetVersion() != 0 && cur.Meta.GetVersion() != req.GetVersion() {
		return nil, errdefs.ToGRPC(fmt.Errorf("node %s: version %d is not the current %d: %w", cur.Id, req.GetVersion(), cur.Meta.GetVersion(), errdefs.ErrConflict))
	}
	m := s.opts.Members
	if m == nil {
		return nil, errdefs.ToGRPC(fmt.Errorf("NodeUpdate.Role: this server cannot change the Raft group: %w", errdefs.ErrInvalidSpec))
	}
	if !m.IsLeader() {
		return s.forwardUpdate(ctx, req)
	}
	var err error
	if req.Spec.DesiredRole == api.NodeRole_NODE_ROLE_MANAGER {
		err = s.promote(ctx, req, cur, m)
	} else {
		err = s.demote(ctx, req, cur, m)
	}
	if errors.Is(err, errdefs.ErrNotLeader) {
		// This leader demoted itself: it handed leadership over first.
		return s.forwardUpdate(ctx, req)
	}
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return s.localNode(cur.Id)
}

func (s *Server) promote(ctx context.Context, req *api.UpdateNodeRequest, cur *api.Node, m MemberAdmin) error {
	if st := cur.GetStatus(); st.GetState() != api.NodeState_NODE_STATE_READY || st.GetAddr() == "" {
		return fmt.Errorf("NodeUpdate.Role: node %s must be ready, with a known address, to be promoted (it is %s): %w", cur.Id,
			strings.ToLower(strings.TrimPrefix(st.GetState().String(), "NODE_STATE_")), errdefs.ErrInvalidSpec)
	}
	addr := cur.Status.Addr
	var raftID uint64
	var err error
	s.store.View(func(tx state.ReadTx) { _, raftID, err = raftPeersAndNewID(tx) })
	if err != nil {
		return err
	}
	if err := m.AddLearner(ctx, raftID, []byte(addr)); err != nil {
		return fmt.Errorf("promote node %s: add it to the Raft group: %w", cur.Id, err)
	}
	err = s.store.Update(ctx, func(tx state.WriteTx) error {
		n := tx.GetNode(cur.Id)
		if n == nil {
			return fmt.Errorf("node %s: %w", cur.Id, errdefs.ErrNotFound)
		}
		if n.Role != cur.Role || (req.GetVersion() != 0 && n.Meta.GetVersion() != req.GetVersion()) {
			return fmt.Errorf("node %s changed concurrently: %w", cur.Id, errdefs.ErrConflict)
		}
		n.Role = api.NodeRole_NODE_ROLE_MANAGER
		n.Spec = req.Spec
		n.ManagerStatus = &api.ManagerStatus{RaftId: raftID, Addr: addr}
		return tx.UpdateNode(n)
	})
	if err != nil {
		// Leave no Raft member behind for a node that is not recorded as a
		// manager.
		_ = m.RemoveMember(context.WithoutCancel(ctx), raftID)
		return fmt.Errorf("promote node %s: %w", cur.Id, err)
	}
	return nil
}

func (s *Server) demote(ctx context.Context, req *api.UpdateNodeRequest, cur *api.Node, m MemberAdmin) error {
	var managers int
	s.store.View(func(tx state.ReadTx) {
		ms, _ := tx.FindNodes(state.ByRole(api.NodeRole_NODE_ROLE_MANAGER))
		managers = len(ms)
	})
	if managers <= 1 {
		return fmt.Errorf("NodeUpdate.Role: node %s is the last manager; promote another node first: %w", cur.Id, errdefs.ErrInvalidSpec)
	}
	if id := cur.GetManagerStatus().GetRaftId(); id != 0 {
		if err := m.RemoveMember(ctx, id); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			return fmt.Errorf("demote manager %s: %w", cur.Id, err)
		}
	}
	err := s.store.Update(ctx, func(tx state.WriteTx) error {
		n := tx.GetNode(cur.Id)
		if n == nil {
			return fmt.Errorf("node %s: %w", cur.Id, errdefs.ErrNotFound)
		}
		n.Role = api.NodeRole_NODE_ROLE_WORKER
		n.Spec = req.Spec
		n.ManagerStatus = nil
		return tx.UpdateNode(n)
	})
	if err != nil {
		return fmt.Errorf("demote manager %s: %w", cur.Id, err)
	}
	return nil
}

func (s *Server) forwardUpdate(ctx context.Context, req *api.UpdateNodeRequest) (*api.NodeResponse, error) {
	if s.opts.Leader == nil {
		return nil, errdefs.ToGRPC(fmt.Errorf("changing a node's role needs the leader: %w", errdefs.ErrNotLeader))
	}
	c, release, err := s.opts.Leader(ctx)
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	defer release()
	return c.UpdateNode(ctx, req)
}

// RemoveNode deletes a node from the cluster. A node that is not DOWN is
// refused unless Force. A manager is first removed from the Raft group, on
// the leader; that is refused when the remaining managers could not reach a
// quorum, and always for the last manager.
func (s *Server) RemoveNode(ctx context.Context, req *api.RemoveRequest) (*api.RemoveResponse, error) {
	var cur *api.Node
	s.store.View(func(tx state.ReadTx) { cur = lookupNode(tx, req.GetId()) })
	if cur == nil {
		return nil, notFound("node", req.GetId())
	}
	if cur.GetStatus().GetState() != api.NodeState_NODE_STATE_DOWN && !req.GetForce() {
		return nil, errdefs.ToGRPC(fmt.Errorf("node %s is %s, not down: stop it first or use force: %w", cur.Id,
			strings.ToLower(strings.TrimPrefix(cur.GetStatus().GetState().String(), "NODE_STATE_")), errdefs.ErrInvalidSpec))
	}
	if cur.Role == api.NodeRole_NODE_ROLE_MANAGER {
		m := s.opts.Members
		if m == nil {
			return nil, errdefs.ToGRPC(fmt.Errorf("node %s is a manager and this server cannot change the Raft group: %w", cur.Id, errdefs.ErrInvalidSpec))
		}
		if !m.IsLeader() {
			return s.forwardRemove(ctx, req)
		}
		if err := m.RemoveMember(ctx, cur.GetManagerStatus().GetRaftId()); err != nil {
			if errors.Is(err, errdefs.ErrNotLeader) {
				// This manager removed itself: it handed leadership over first.
				return s.forwardRemove(ctx, req)
			}
			return nil, errdefs.ToGRPC(fmt.Errorf("remove manager %s: %w", cur.Id, err))
		}
	}
	err := s.store.Update(ctx, func(tx state.WriteTx) error {
		if tx.GetNode(cur.Id) == nil {
			return nil // removed concurrently
		}
		return tx.DeleteNode(cur.Id)
	})
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return &api.RemoveResponse{}, nil
}

func (s *Server) forwardRemove(ctx context.Context, req *api.RemoveRequest) (*api.RemoveResponse, error) {
	if s.opts.Leader == nil {
		return nil, errdefs.ToGRPC(fmt.Errorf("removing a manager needs the leader: %w", errdefs.ErrNotLeader))
	}
	c, release, err := s.opts.Leader(ctx)
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	defer release()
	return c.RemoveNode(ctx, req)
}
