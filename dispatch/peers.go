package dispatch

import (
	"slices"
	"strings"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/state"
)

// MaxGossipPeers is how many gossip addresses of other nodes a session
// message carries (and a manager joins when its member is alone): enough
// for a joining member to find the cluster with a few nodes down, few
// enough that the message stays small in a big cluster.
const MaxGossipPeers = 8

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
