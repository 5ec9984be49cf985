package gossip

import (
	"github.com/hashicorp/serf/serf"
)

// eventLoop applies serf's membership and user events in order.
func (n *Node) eventLoop() {
	defer n.wg.Done()
	for {
		select {
		case <-n.done:
			return
		case e := <-n.eventCh:
			n.handleEvent(e)
		}
	}
}

func (n *Node) handleEvent(e serf.Event) {
	if n.cfg.dropEvent != nil && n.cfg.dropEvent(e) {
		return
	}
	switch ev := e.(type) {
	case *serf.Query:
		if ev.Name == haveQueryName {
			n.handleHaveQuery(ev)
		}
	case serf.MemberEvent:
		defer n.membersChanged()
		for _, m := range ev.Members {
			if m.Name == n.cfg.NodeID {
				continue
			}
			switch ev.Type {
			case serf.EventMemberJoin:
				n.mu.Lock()
				n.addrs[m.Name] = memberAddr(m)
				n.mu.Unlock()
				n.tbl.revive(m.Name)
				n.schedulePull(m.Name, n.cfg.PullDelay, true)
			case serf.EventMemberLeave, serf.EventMemberFailed:
				n.mu.Lock()
				delete(n.addrs, m.Name)
				n.mu.Unlock()
				n.cancelPull(m.Name)
				n.stats.drops.Add(1)
				if n.tbl.drop(m.Name) {
					n.log.Info("gossip: member gone, endpoints dropped", "member", m.Name, "event", ev.Type.String())
					n.notify()
				}
			case serf.EventMemberReap:
				n.tbl.revive(m.Name) // clears the reaped member's tombstone
			}
		}
	case serf.UserEvent:
		if ev.Name != eventName {
			return
		}
		dl, err := decodeDelta(ev.Payload)
		if err != nil {
			n.log.Warn("gossip: bad delta", "err", err)
			return
		}
		if dl.Kind == kindAnnounce {
			n.stats.announces.Add(1)
		} else {
			n.stats.deltas.Add(1)
		}
		changed, now, later := n.tbl.applyDelta(dl)
		if changed {
			n.notify()
		}
		n.kickConfirm()
		switch {
		case now:
			n.schedulePull(dl.Node, 0, false)
		case later:
			n.schedulePull(dl.Node, n.cfg.PullDelay, false)
		}
	}
}
