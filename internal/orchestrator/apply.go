package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/state"
)

// maxPlanAttempts bounds how often one reconcile of a service recomputes its
// plan after a conflicting write before it gives up until the retry time.
const maxPlanAttempts = 8

// errRetry marks a reconcile that kept conflicting with other writers.
var errRetry = errors.New("orchestrator: writes kept conflicting with other writers")

// reconcileService brings one service's tasks to the desired state. It
// returns when the service must be looked at again without an event (zero
// for never).
func (o *Orchestrator) reconcileService(ctx context.Context, id string) (time.Time, error) {
	for range maxPlanAttempts {
		now := o.cfg.Clock.Now()
		var p plan
		// Shared read, no copies: planService never modifies what it reads
		// (a task it changes is cloned first, see planner.stop and remove),
		// and the plan's writes go through the store, which copies them.
		o.store.ViewShared(func(tx state.ReadTx) {
			p = o.planFromTx(tx, id, now)
		})
		if p.empty() {
			return p.wake, nil
		}
		err := o.apply(ctx, p)
		switch {
		case err == nil:
			o.logPlan(id, p)
			return p.wake, nil
		case errors.Is(err, state.ErrConflict), errors.Is(err, state.ErrNotFound):
			continue // someone else wrote first: read again and replan
		default:
			return time.Time{}, err
		}
	}
	return time.Time{}, errRetry
}

// planFromTx reads what planService needs. tx may be a shared view: nothing
// read here may be modified.
func (o *Orchestrator) planFromTx(tx state.ReadTx, id string, now time.Time) plan {
	svc := tx.GetService(id)
	tasks, err := tx.FindTasks(state.ByServiceID(id))
	if err != nil {
		o.cfg.Logger.Error("orchestrator: reading tasks", "service", id, "err", err)
		return plan{}
	}
	nodes, err := tx.FindNodes(state.All())
	if err != nil {
		o.cfg.Logger.Error("orchestrator: reading nodes", "err", err)
		return plan{}
	}
	var cluster *api.Cluster
	if cs, err := tx.FindClusters(state.All()); err == nil && len(cs) > 0 {
		cluster = cs[0]
	}
	return planService(o.cfg, now, svc, tasks, nodes, cluster)
}

func (o *Orchestrator) logPlan(id string, p plan) {
	o.cfg.Logger.Debug("orchestrator: reconciled service", "service", id,
		"created", p.count(opCreate), "updated", p.count(opUpdate), "deleted", p.count(opDelete),
		"update_status", p.service != nil)
}

// apply writes a plan in transactions of at most MaxBatch objects. Each
// write checks the version it was planned from; on a conflict the caller
// plans again from a fresh read, which is safe because plans are computed
// from the state alone (the part already written is simply not planned
// again).
func (o *Orchestrator) apply(ctx context.Context, p plan) error {
	ops := make([]func(state.WriteTx) error, 0, len(p.ops)+1)
	for _, op := range p.ops {
		t := op.task
		switch op.kind {
		case opCreate:
			ops = append(ops, func(tx state.WriteTx) error { return tx.CreateTask(t) })
		case opUpdate:
			ops = append(ops, func(tx state.WriteTx) error { return tx.UpdateTask(t) })
		case opDelete:
			ops = append(ops, func(tx state.WriteTx) error {
				cur := tx.GetTask(t.GetId())
				if cur == nil {
					return nil // already gone
				}
				if cur.GetMeta().GetVersion() != t.GetMeta().GetVersion() {
					return fmt.Errorf("task %s changed since it was read: %w", t.GetId(), state.ErrConflict)
				}
				return tx.DeleteTask(t.GetId())
			})
		}
	}
	if p.service != nil {
		ops = append(ops, func(tx state.WriteTx) error { return tx.UpdateService(p.service) })
	}
	for len(ops) > 0 {
		n := min(len(ops), o.cfg.MaxBatch)
		batch := ops[:n]
		ops = ops[n:]
		err := o.store.Update(ctx, func(tx state.WriteTx) error {
			for _, op := range batch {
				if err := op(tx); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}
