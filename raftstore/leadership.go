package raftstore

// subscription is one LeadershipChanges subscriber: a one-slot channel holding the latest value.
type subscription struct {
	ch chan bool
}

// LeadershipChanges subscribes to this member's leadership: the channel receives true when this
// member becomes leader and false when it stops being leader. If it is leader when subscribing,
// true is delivered at once. The channel holds only the latest value: a slow reader misses
// intermediate flips (and may see the same value twice) but always sees the current state last,
// and the raft loop never waits for it. The channel is closed by cancel or when the node stops. cancel is idempotent.
func (n *Node) LeadershipChanges() (<-chan bool, func()) {
	s := &subscription{ch: make(chan bool, 1)}
	n.subMu.Lock()
	if n.subsClosed {
		n.subMu.Unlock()
		close(s.ch)
		return s.ch, func() {}
	}
	n.subs[s] = struct{}{}
	if n.isLeader.Load() {
		s.ch <- true
	}
	n.subMu.Unlock()
	cancel := func() {
		n.subMu.Lock()
		defer n.subMu.Unlock()
		if _, ok := n.subs[s]; ok {
			delete(n.subs, s)
			close(s.ch)
		}
	}
	return s.ch, cancel
}

// notifySubs replaces each subscriber's pending value with v, never blocking.
func (n *Node) notifySubs(v bool) {
	n.subMu.Lock()
	defer n.subMu.Unlock()
	for s := range n.subs {
		select {
		case <-s.ch: // drop the stale value
		default:
		}
		s.ch <- v // cannot block: we hold the only sender and just emptied the slot
	}
}

func (n *Node) closeSubs() {
	n.subMu.Lock()
	defer n.subMu.Unlock()
	if n.subsClosed {
		return
	}
	n.subsClosed = true
	for s := range n.subs {
		delete(n.subs, s)
		close(s.ch)
	}
}
