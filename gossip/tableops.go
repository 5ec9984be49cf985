package gossip

import (
	"slices"
	"sync"
)

// eventName is the serf user event that carries endpoint deltas.
const eventName = "shoal.ep"

// userEventLimit is serf's UserEventSizeLimit for this package's events:
// with serf's and memberlist's headers and AES-GCM overhead an event still
// fits one 1400-byte UDP packet.
const userEventLimit = 1024

// maxDeltaPayload is the budget for a delta message inside a user event,
// leaving room for serf's encoding of the event (LTime, name, flags).
const maxDeltaPayload = userEventLimit - 96

// SetLocal replaces the set of endpoints this node publishes (its own
// running, healthy tasks); the change spreads by gossip. Each endpoint's
// Node is set to this node's ID; invalid endpoints are logged and skipped.
// Safe for concurrent use, before or after Start.
func (n *Node) SetLocal(eps []Endpoint) {
	n.pubMu.Lock()
	defer n.pubMu.Unlock()
	next := make(map[epKey]Endpoint, len(eps))
	for _, ep := range eps {
		ep.Node = n.cfg.NodeID
		if err := ep.validate(); err != nil {
			n.log.Warn("gossip: SetLocal: endpoint skipped", "endpoint", ep.String(), "err", err)
			continue
		}
		next[ep.key()] = ep
	}
	cur, epoch, version := n.tbl.local()
	var adds []Endpoint
	var removes []epKey
	for k, ep := range next {
		if old, ok := cur[k]; !ok || old != ep {
			adds = append(adds, ep)
		}
	}
	for k := range cur {
		if _, ok := next[k]; !ok {
			removes = append(removes, k)
		}
	}
	if len(adds) == 0 && len(removes) == 0 {
		return
	}
	slices.SortFunc(adds, compareEndpoints)
	msgs := n.deltaMessages(epoch, version, adds, removes)
	final := version + uint64(len(msgs))
	if len(msgs) > n.cfg.MaxDeltaChunks {
		final = version + 1
		msgs = [][]byte{encodeDelta(&delta{Kind: kindAnnounce, Node: n.cfg.NodeID, Epoch: epoch, From: version, To: final})}
	}
	n.tbl.setLocal(next, final)
	n.notify()
	s := n.serfOrNil()
	if s == nil {
		return // peers pull the set when this node joins
	}
	for _, m := range msgs {
		if err := s.UserEvent(eventName, m, false); err != nil {
			n.log.Warn("gossip: delta not gossiped; peers will pull", "err", err)
		}
	}
}

// deltaMessages splits a change into delta messages that each fit one
// gossip packet; message i moves the version from version+i to version+i+1.
func (n *Node) deltaMessages(epoch, version uint64, adds []Endpoint, removes []epKey) [][]byte {
	budget := maxDeltaPayload - deltaHeaderSize(n.cfg.NodeID)
	var out [][]byte
	cur := &delta{Kind: kindDelta, Node: n.cfg.NodeID, Epoch: epoch}
	used := 0
	flush := func() {
		cur.From = version + uint64(len(out))
		cur.To = cur.From + 1
		out = append(out, encodeDelta(cur))
		cur = &delta{Kind: kindDelta, Node: n.cfg.NodeID, Epoch: epoch}
		used = 0
	}
	for _, k := range removes {
		sz := keySize(k)
		if used+sz > budget {
			flush()
		}
		cur.Removes = append(cur.Removes, k)
		used += sz
	}
	for _, ep := range adds {
		sz := endpointSize(ep)
		if used+sz > budget {
			flush()
		}
		cur.Adds = append(cur.Adds, ep)
		used += sz
	}
	if used > 0 {
		flush()
	}
	return out
}

// Table returns the current table of all endpoints known, this node's
// included, sorted by service, port, protocol, node and task. The slice is
// a copy the caller owns.
func (n *Node) Table() []Endpoint { return n.tbl.endpoints() }

// Watch returns a channel that receives a signal after each change to the
// table and a function that cancels the watch. Signals are coalesced (the
// channel holds at most one) and never block the gossip: read Table after
// each. The channel is closed by cancel.
func (n *Node) Watch() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	n.mu.Lock()
	id := n.nextW
	n.nextW++
	n.watchers[id] = ch
	n.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			n.mu.Lock()
			delete(n.watchers, id)
			n.mu.Unlock()
			close(ch)
		})
	}
}

func (n *Node) notify() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, ch := range n.watchers {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

func (n *Node) applyRecords(rs []*record) {
	changed := false
	for _, r := range rs {
		if n.tbl.applyRecord(r) {
			changed = true
		}
	}
	if changed {
		n.notify()
	}
	if len(rs) > 0 {
		n.kickConfirm()
	}
}
