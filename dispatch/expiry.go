package dispatch

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/state"
)

func (d *Dispatcher) wakeExpiry() {
	select {
	case d.kick <- struct{}{}:
	default:
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
