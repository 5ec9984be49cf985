package orchestrator

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/shoalhq/shoal/internal/api"
)

// plan is the set of writes that brings one service's tasks to the desired
// state, computed from one consistent snapshot of the store. Every decision
// is a function of that snapshot and the clock, so a new leader computes
// the same plan from the same state: nothing is remembered between passes.
type plan struct {
	// ops are the task writes in the order they were decided, so a stop and
	// the create that replaces it sit next to each other (and in the same
	// transaction unless the plan is split exactly between them).
	ops []taskOp
	// service is the service with a new UpdateStatus, or nil.
	service *api.Service
	// wake is when the service must be looked at again even without events
	// (a restart or update delay ends); zero for never.
	wake time.Time
}

// opKind is what a taskOp does.
type opKind int

const (
	opCreate opKind = iota + 1
	// opUpdate writes a modified copy of a task as read; its Meta.Version is
	// the version read, so a concurrent change makes the write fail with
	// ErrConflict and the plan is computed again.
	opUpdate
	// opDelete deletes a task as read, only if it is still at that version.
	opDelete
)

type taskOp struct {
	kind opKind
	task *api.Task
}

func (p *plan) add(k opKind, t *api.Task) { p.ops = append(p.ops, taskOp{k, t}) }

func (p *plan) count(k opKind) int {
	n := 0
	for _, op := range p.ops {
		if op.kind == k {
			n++
		}
	}
	return n
}

func (p *plan) empty() bool { return len(p.ops) == 0 && p.service == nil }

func (p *plan) wakeAt(t time.Time) {
	if p.wake.IsZero() || t.Before(p.wake) {
		p.wake = t
	}
}

// slotKey identifies a slot: the replica number of a replicated service, or
// the node of a global service.
type slotKey struct {
	slot uint64
	node string
}

func (k slotKey) compare(o slotKey) int {
	if c := cmp.Compare(k.slot, o.slot); c != 0 {
		return c
	}
	return cmp.Compare(k.node, o.node)
}

// slotTasks are the tasks of one slot, sorted by role.
type slotTasks struct {
	// occupants hold the slot (desired state RUNNING or lower); normally one.
	occupants []*api.Task
	// stopping are tasks told to stop that have not stopped yet, on nodes
	// that are still there: a stop-first replacement waits for them.
	stopping []*api.Task
	// history are stopped tasks kept for inspection.
	history []*api.Task
	// removing are tasks with desired state REMOVE.
	removing []*api.Task
}

// planner computes the plan of one service.
type planner struct {
	cfg     Config
	now     time.Time
	svc     *api.Service // nil when the service was deleted
	nodes   map[string]*api.Node
	history int64 // dead tasks to keep per slot
	p       plan

	// Update bookkeeping, filled while walking the slots.
	outdated   []slotRef // slots whose occupant runs an old spec version
	inProgress int       // slots being replaced or whose new task is still starting
}

type slotRef struct {
	key slotKey
	occ *api.Task
}

// nodeLost reports whether the node a task is on is gone or DOWN: nothing
// will report on the task any more.
func (pl *planner) nodeLost(id string) bool {
	if id == "" {
		return false
	}
	n, ok := pl.nodes[id]
	return !ok || n.GetStatus().GetState() == api.NodeState_NODE_STATE_DOWN
}

// nodeUnavailable reports whether a replicated task on node id must move:
// the node is gone, DOWN or drained.
func (pl *planner) nodeUnavailable(id string) bool {
	if id == "" {
		return false
	}
	if pl.nodeLost(id) {
		return true
	}
	return pl.nodes[id].GetSpec().GetAvailability() == api.NodeAvailability_NODE_AVAILABILITY_DRAIN
}

// effectivelyDead reports whether a task will never run again: it is dead,
// or it was told to stop and its node is lost.
func (pl *planner) effectivelyDead(t *api.Task) bool {
	return isDead(t) || (!isOccupant(t) && pl.nodeLost(t.GetNodeId()))
}

// reapable reports whether a task with desired state REMOVE can be deleted.
func (pl *planner) reapable(t *api.Task) bool {
	return isDead(t) || neverAssigned(t) || pl.nodeLost(t.GetNodeId())
}

// stop tells a task to stop (desired SHUTDOWN). A task that was never
// assigned has nothing to stop it, so it is marked SHUTDOWN at once.
func (pl *planner) stop(t *api.Task, why string) *api.Task {
	c := proto.Clone(t).(*api.Task)
	c.DesiredState = stateShutdown
	if neverAssigned(c) {
		c.Status = &api.TaskStatus{State: stateShutdown, Message: why, Timestamp: pl.now.UnixNano()}
	}
	pl.p.add(opUpdate, c)
	return c
}

// remove sets a task's desired state to REMOVE, or deletes it when it can go
// at once (dead, never assigned, or on a lost node).
func (pl *planner) remove(t *api.Task) {
	if pl.reapable(t) {
		pl.p.add(opDelete, t)
		return
	}
	if t.GetDesiredState() == stateRemove {
		return
	}
	c := proto.Clone(t).(*api.Task)
	c.DesiredState = stateRemove
	pl.p.add(opUpdate, c)
}

func (pl *planner) create(slot uint64, node string) {
	pl.p.add(opCreate, newTask(pl.svc, slot, node, pl.now))
}

// group sorts a service's tasks into slots.
func (pl *planner) group(tasks []*api.Task, global bool) map[slotKey]*slotTasks {
	slots := map[slotKey]*slotTasks{}
	for _, t := range tasks {
		k := slotKey{slot: t.GetSlot()}
		if global {
			k = slotKey{node: t.GetNodeId()}
		}
		s := slots[k]
		if s == nil {
			s = &slotTasks{}
			slots[k] = s
		}
		switch {
		case isOccupant(t):
			s.occupants = append(s.occupants, t)
		case t.GetDesiredState() >= stateRemove:
			s.removing = append(s.removing, t)
		case pl.effectivelyDead(t):
			s.history = append(s.history, t)
		default:
			s.stopping = append(s.stopping, t)
		}
	}
	return slots
}

func sortedKeys(slots map[slotKey]*slotTasks) []slotKey {
	keys := make([]slotKey, 0, len(slots))
	for k := range slots {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, slotKey.compare)
	return keys
}

// keepHistory is how many dead tasks a slot keeps: the cluster's limit, but
// at least the restart policy's max attempts, because the attempts are
// counted from the dead tasks themselves.
func (pl *planner) keepHistory() int {
	keep := max(pl.history, 0)
	if ma := pl.restartPolicy().GetMaxAttempts(); ma > 0 && int64(ma) > keep {
		keep = int64(ma)
	}
	return int(keep)
}

// tidy handles what every kept slot needs regardless of mode: tasks marked
// REMOVE are deleted once they are gone, tasks told to stop before they were
// ever assigned are marked stopped, and history beyond the limit is
// deleted, oldest first.
func (pl *planner) tidy(s *slotTasks) {
	for _, t := range s.removing {
		if pl.reapable(t) {
			pl.p.add(opDelete, t)
		}
	}
	stopping := s.stopping[:0:0]
	for _, t := range s.stopping {
		if neverAssigned(t) {
			pl.stop(t, "stopped before it was scheduled")
			continue
		}
		stopping = append(stopping, t)
	}
	s.stopping = stopping
	slices.SortFunc(s.history, newerFirst)
	if keep := pl.keepHistory(); len(s.history) > keep {
		for _, t := range s.history[keep:] {
			pl.p.add(opDelete, t)
		}
		s.history = s.history[:keep]
	}
}

// drop removes every task of a slot that is no longer wanted: the slot was
// scaled away, the service deleted, or the node is gone.
func (pl *planner) drop(s *slotTasks) {
	for _, group := range [][]*api.Task{s.occupants, s.stopping, s.history, s.removing} {
		for _, t := range group {
			pl.remove(t)
		}
	}
}

// startFirst reports whether the service's updates start a slot's new
// task before they stop its old one.
func (pl *planner) startFirst() bool {
	return pl.svc.GetSpec().GetUpdate().GetOrder() == api.UpdateOrder_UPDATE_ORDER_START_FIRST
}

// pickOccupant keeps one occupant of a slot and stops any others (a slot
// never runs two tasks). It prefers a live task, then the most advanced,
// then the newest.
//
// With start-first updates a slot runs two tasks while it is updated: the
// old one (an outdated spec version) keeps serving until the new one
// (the current version) is RUNNING, then it is stopped. The new one is the
// occupant the rest of the plan follows (restarted if it dies, counted in
// progress while it starts); the old one is left alone meanwhile.
func (pl *planner) pickOccupant(s *slotTasks) *api.Task {
	if len(s.occupants) == 0 {
		return nil
	}
	if pl.startFirst() {
		var cur, old []*api.Task
		for _, t := range s.occupants {
			if t.GetSpecVersion() == pl.svc.GetSpecVersion() {
				cur = append(cur, t)
			} else {
				old = append(old, t)
			}
		}
		if len(cur) > 0 && len(old) > 0 {
			keep := pl.bestOccupant(cur)
			for _, t := range cur {
				if t != keep {
					pl.stop(t, "duplicate task for its slot")
				}
			}
			prev := pl.bestOccupant(old)
			for _, t := range old {
				if t != prev {
					pl.stop(t, "duplicate task for its slot")
				}
			}
			switch {
			case isDead(prev):
				pl.stop(prev, "ended during a start-first update")
			case keep.GetStatus().GetState() == stateRunning:
				pl.stop(prev, "replaced by a service update (start-first)")
			}
			return keep
		}
	}
	occ := pl.bestOccupant(s.occupants)
	for _, t := range s.occupants {
		if t != occ {
			pl.stop(t, "duplicate task for its slot")
		}
	}
	return occ
}

// bestOccupant is the task of occupants to keep: a live task, then the most
// advanced, then the newest.
func (pl *planner) bestOccupant(occupants []*api.Task) *api.Task {
	return slices.MinFunc(occupants, func(a, b *api.Task) int {
		if da, db := isDead(a), isDead(b); da != db {
			if da {
				return 1
			}
			return -1
		}
		if c := cmp.Compare(b.GetStatus().GetState(), a.GetStatus().GetState()); c != 0 {
			return c
		}
		return newerFirst(a, b)
	})
}

func (pl *planner) restartPolicy() *api.RestartPolicy {
	return pl.svc.GetSpec().GetTask().GetRestart()
}

// restart decides what to do with a dead occupant: replace it now, later
// (wake), or never. history are the slot's dead tasks. It reports whether it
// replaced the task now.
func (pl *planner) restart(key slotKey, occ *api.Task, history []*api.Task) bool {
	pol := pl.restartPolicy()
	switch pol.GetCondition() {
	case api.RestartCondition_RESTART_CONDITION_NONE:
		return false
	case api.RestartCondition_RESTART_CONDITION_ON_FAILURE:
		if !failed(occ) {
			return false
		}
	}
	if ma := pol.GetMaxAttempts(); ma > 0 {
		// Runs of this spec version that ended on their own within the
		// window; each but the current one was followed by a restart.
		var since int64
		if w := pol.GetWindow(); w > 0 {
			since = pl.now.UnixNano() - w
		}
		runs := uint64(1)
		for _, t := range history {
			if t.GetSpecVersion() == occ.GetSpecVersion() && endedOnItsOwn(t) && statusTime(t) >= since {
				runs++
			}
		}
		if runs > ma {
			return false
		}
	}
	delay := time.Duration(pol.GetDelay())
	if delay <= 0 {
		delay = pl.cfg.DefaultRestartDelay
	}
	if at := time.Unix(0, statusTime(occ)).Add(delay); pl.now.Before(at) {
		pl.p.wakeAt(at)
		return false
	}
	pl.stop(occ, "restarted")
	pl.create(key.slot, key.node)
	return true
}

// fill handles a kept slot: create its task, restart it, move it off an
// unavailable node, or note it for the update. canCreate is false where new
// tasks must not start (a global service's paused or not-ready node).
func (pl *planner) fill(key slotKey, s *slotTasks, occ *api.Task, canCreate bool) {
	if occ == nil {
		if len(s.stopping) > 0 {
			pl.inProgress++ // stop-first: the old task must stop before the new one starts
			return
		}
		if canCreate {
			pl.create(key.slot, key.node)
		}
		return
	}
	current := occ.GetSpecVersion() == pl.svc.GetSpecVersion()
	if isDead(occ) {
		if !canCreate {
			return
		}
		if len(s.stopping) > 0 {
			pl.inProgress++
			return
		}
		if !pl.restart(key, occ, s.history) && !current {
			// Not restarted (policy says no, or not yet): an update still
			// replaces it.
			pl.outdated = append(pl.outdated, slotRef{key, occ})
		}
		return
	}
	if key.node == "" && pl.nodeUnavailable(occ.GetNodeId()) {
		pl.stop(occ, "node is down or drained")
		pl.create(key.slot, "")
		return
	}
	if !current {
		if canCreate {
			pl.outdated = append(pl.outdated, slotRef{key, occ})
		}
		return
	}
	if occ.GetStatus().GetState() < stateRunning {
		pl.inProgress++
	}
}

// planReplicated keeps slots 1..replicas filled and drops higher slots.
func (pl *planner) planReplicated(tasks []*api.Task, replicas uint64) {
	slots := pl.group(tasks, false)
	for _, k := range sortedKeys(slots) {
		s := slots[k]
		if k.slot == 0 || k.slot > replicas {
			pl.drop(s)
			continue
		}
		pl.tidy(s)
		pl.fill(k, s, pl.pickOccupant(s), true)
	}
	for i := uint64(1); i <= replicas; i++ {
		if _, ok := slots[slotKey{slot: i}]; !ok {
			pl.create(i, "")
		}
	}
}

// planGlobal keeps one task on every eligible node.
func (pl *planner) planGlobal(tasks []*api.Task) {
	slots := pl.group(tasks, true)
	match := newNodeMatcher(pl.svc.GetSpec().GetTask())
	ids := make([]string, 0, len(pl.nodes))
	for id := range pl.nodes {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		n := pl.nodes[id]
		k := slotKey{node: id}
		s := slots[k]
		if s == nil {
			s = &slotTasks{}
		}
		st := n.GetStatus().GetState()
		avail := n.GetSpec().GetAvailability()
		keep := st != api.NodeState_NODE_STATE_DOWN &&
			avail != api.NodeAvailability_NODE_AVAILABILITY_DRAIN && match.matches(n)
		eligible := keep && st == api.NodeState_NODE_STATE_READY && avail == api.NodeAvailability_NODE_AVAILABILITY_ACTIVE
		pl.tidy(s)
		if !keep {
			for _, t := range s.occupants {
				pl.stop(t, "node is down, drained or no longer matches the constraints")
			}
			continue
		}
		pl.fill(k, s, pl.pickOccupant(s), eligible)
	}
	for _, k := range sortedKeys(slots) {
		if _, ok := pl.nodes[k.node]; !ok {
			pl.drop(slots[k]) // the node was removed from the cluster
		}
	}
}

// planUpdate replaces outdated tasks, stop-first or start-first (the
// service's UpdateConfig.Order), at most Parallelism slots at a time,
// waiting Delay after each new task reaches RUNNING, and keeps the
// service's UpdateStatus.
func (pl *planner) planUpdate(tasks []*api.Task) {
	svc := pl.svc
	us := svc.GetUpdateStatus()
	updating := us.GetState() == api.UpdateState_UPDATE_STATE_UPDATING
	paused := us.GetState() == api.UpdateState_UPDATE_STATE_PAUSED
	// Tasks created in this pass are starting too.
	pl.inProgress += pl.p.count(opCreate)
	if len(pl.outdated) > 0 && !paused {
		cfg := svc.GetSpec().GetUpdate()
		par := int(min(max(cfg.GetParallelism(), 1), 1<<20))
		avail := par - pl.inProgress
		if d := cfg.GetDelay(); d > 0 && avail > 0 {
			var last int64
			for _, t := range tasks {
				if isOccupant(t) && t.GetSpecVersion() == svc.GetSpecVersion() && t.GetStatus().GetState() == stateRunning {
					last = max(last, statusTime(t))
				}
			}
			if at := time.Unix(0, last+d); last > 0 && pl.now.Before(at) {
				pl.p.wakeAt(at)
				avail = 0
			}
		}
		slices.SortFunc(pl.outdated, func(a, b slotRef) int { return a.key.compare(b.key) })
		for _, r := range pl.outdated[:min(max(avail, 0), len(pl.outdated))] {
			if pl.startFirst() && !isDead(r.occ) {
				// The new task starts next to the old one, which serves
				// until the new one runs (pickOccupant stops it then).
				pl.create(r.key.slot, r.key.node)
				continue
			}
			c := pl.stop(r.occ, "replaced by a service update")
			if isDead(c) {
				pl.create(r.key.slot, r.key.node) // nothing to wait for
			}
		}
	}

	next := proto.Clone(us).(*api.UpdateStatus)
	if next == nil {
		next = &api.UpdateStatus{}
	}
	switch {
	case len(pl.outdated) > 0 && !updating && !paused:
		next = &api.UpdateStatus{State: api.UpdateState_UPDATE_STATE_UPDATING, StartedAt: pl.now.UnixNano()}
		next.Message = pl.updateMessage(tasks, next.StartedAt, false)
	case updating && len(pl.outdated) == 0 && pl.inProgress == 0:
		next.State = api.UpdateState_UPDATE_STATE_COMPLETED
		next.CompletedAt = pl.now.UnixNano()
		next.Message = pl.updateMessage(tasks, next.StartedAt, true)
	case updating:
		next.Message = pl.updateMessage(tasks, next.StartedAt, false)
	default:
		return
	}
	if !proto.Equal(next, us) {
		c := proto.Clone(svc).(*api.Service)
		c.UpdateStatus = next
		pl.p.service = c
	}
}

// updateMessage describes the update, including tasks of the new version
// that failed since it started (the update goes on regardless).
func (pl *planner) updateMessage(tasks []*api.Task, since int64, done bool) string {
	msg := fmt.Sprintf("updating tasks to spec version %d", pl.svc.GetSpecVersion())
	if done {
		msg = fmt.Sprintf("update to spec version %d completed", pl.svc.GetSpecVersion())
	}
	var bad []*api.Task
	for _, t := range tasks {
		if t.GetSpecVersion() == pl.svc.GetSpecVersion() && failed(t) &&
			t.GetStatus().GetState() != stateShutdown && statusTime(t) >= since {
			bad = append(bad, t)
		}
	}
	if len(bad) == 0 {
		return msg
	}
	last := slices.MinFunc(bad, newerFirst)
	why := last.GetStatus().GetErr()
	if why == "" {
		why = last.GetStatus().GetMessage()
	}
	if why == "" {
		why = last.GetStatus().GetState().String()
	}
	return fmt.Sprintf("%s; %d task(s) failed during the update, last: task %s: %s", msg, len(bad), last.GetId(), why)
}

// planService computes the plan for one service from a snapshot. svc is nil
// when the service was deleted: then every task goes.
//
// svc, tasks, nodes and cluster are the store's shared objects (read with
// ViewShared): planService and everything it calls must never modify them,
// nor their nested messages. A task or service the plan changes is a clone
// (stop, remove, planUpdate); a task it deletes is referenced as read.
func planService(cfg Config, now time.Time, svc *api.Service, tasks []*api.Task, nodes []*api.Node, cluster *api.Cluster) plan {
	pl := &planner{cfg: cfg, now: now, svc: svc, nodes: make(map[string]*api.Node, len(nodes))}
	for _, n := range nodes {
		pl.nodes[n.GetId()] = n
	}
	pl.history = cfg.DefaultTaskHistoryLimit
	if l := cluster.GetSpec().GetTaskHistoryLimit(); l != 0 {
		pl.history = l
	}
	if svc == nil {
		for _, t := range tasks {
			pl.remove(t)
		}
		return pl.p
	}
	switch m := svc.GetSpec().GetMode().(type) {
	case *api.ServiceSpec_Replicated:
		pl.planReplicated(tasks, m.Replicated.GetReplicas())
	case *api.ServiceSpec_Global:
		pl.planGlobal(tasks)
	default:
		return pl.p // no mode: nothing to keep true (the control API rejects such specs)
	}
	pl.planUpdate(tasks)
	return pl.p
}
