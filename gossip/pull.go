package gossip

import (
	"time"
)

// pullWorkers bounds concurrent pulls per node.
const pullWorkers = 4

// maxPullAttempts bounds retries of a failing pull; anti-entropy repairs
// whatever is left.
const maxPullAttempts = 5

type pullReq struct {
	node     string
	via      string // a member that reported holding a newer set; "" means node itself
	due      time.Time
	force    bool
	attempts int
}

// schedulePull arranges to pull node's set from it after delay, unless an
// earlier pull is already due.
func (n *Node) schedulePull(node string, delay time.Duration, force bool) {
	n.schedulePullVia(node, "", delay, force)
}

// schedulePullVia is schedulePull from member via, which reported holding a
// newer set, rather than from node itself.
func (n *Node) schedulePullVia(node, via string, delay time.Duration, force bool) {
	due := n.clock.Now().Add(delay)
	n.pullMu.Lock()
	defer n.pullMu.Unlock()
	if old, ok := n.pullDue[node]; ok {
		if old.due.Before(due) {
			due = old.due
		}
		force = force || old.force
		if old.via != "" || via == "" {
			via = old.via
		}
	}
	n.pullDue[node] = pullReq{node: node, via: via, due: due, force: force}
}

func (n *Node) cancelPull(node string) {
	n.pullMu.Lock()
	defer n.pullMu.Unlock()
	delete(n.pullDue, node)
}

// pullLoop hands due pulls to the workers, checking every quarter of
// PullDelay (at most every 50 ms).
func (n *Node) pullLoop() {
	defer n.wg.Done()
	every := min(n.cfg.PullDelay/4, 50*time.Millisecond)
	tick := n.clock.NewTimer(every)
	defer tick.Stop()
	for {
		select {
		case <-n.done:
			return
		case now := <-tick.C():
			tick.Reset(every)
			n.pullMu.Lock()
			for id, r := range n.pullDue {
				if r.due.After(now) {
					continue
				}
				select {
				case n.pullCh <- r:
					delete(n.pullDue, id)
				default: // workers busy: stays due
				}
			}
			n.pullMu.Unlock()
		}
	}
}

func (n *Node) pullWorker() {
	defer n.wg.Done()
	for {
		select {
		case <-n.done:
			return
		case r := <-n.pullCh:
			if !r.force && !n.tbl.behind(r.node) {
				continue
			}
			n.mu.Lock()
			addr, ok := n.addrs[r.node]
			if viaAddr, live := n.addrs[r.via]; ok && live {
				addr = viaAddr // spread pulls of a fresh change over its holders
			}
			n.mu.Unlock()
			if !ok {
				continue // not a live member (yet): its join event schedules a pull
			}
			n.stats.pulls.Add(1)
			err := n.syncWith(addr, map[string]uint64{r.node: n.tbl.versionOf(r.node)})
			if err != nil {
				n.stats.pullErrs.Add(1)
				r.attempts++
				n.log.Debug("gossip: pull failed", "member", r.node, "attempt", r.attempts, "err", err)
				if r.attempts < maxPullAttempts {
					r.via = "" // retry from the author
					n.pullMu.Lock()
					if _, ok := n.pullDue[r.node]; !ok {
						r.due = n.clock.Now().Add(n.cfg.PullDelay << r.attempts)
						n.pullDue[r.node] = r
					}
					n.pullMu.Unlock()
				}
			}
		}
	}
}
