package dispatch

import (
	"bytes"
	"context"
	"errors"
	"slices"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/state"
)

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
