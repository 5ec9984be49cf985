package schedule

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/clock"
	"github.com/shoalhq/shoal/internal/state"
	"github.com/shoalhq/shoal/scheduler"
)

// Config configures a Driver.
type Config struct {
	// Logger receives the driver's logs. Default: discard, because a library
	// must not write to the host's logs unless asked.
	Logger *slog.Logger
	// Clock stamps assignments and times the retries (RetryInterval).
	// Default (nil) clock.Real(); tests drive a fake one.
	Clock clock.Clock
	// BatchSize caps the tasks of one store transaction. Default 1000: one
	// log entry stays well under a megabyte.
	BatchSize int
	// RetryInterval is how often, while tasks are pending, they are tried
	// again without a change in the nodes: a safety net for tasks that fit
	// nowhere (a change retries them at once) and the retry of commits that
	// failed. Default 1s: a failed commit (no quorum, a lost leadership)
	// costs at most a second of scheduling, and a pass over nothing new
	// writes nothing.
	RetryInterval time.Duration
}

// Driver runs scheduling passes against a store. Start it once; Stop is
// idempotent, may be called without Start, and must not run concurrently
// with Start. The pass loop runs on the one goroutine Start starts and Stop
// ends.
type Driver struct {
	cfg   Config
	store *state.Store
	// sched and the fields below it are the pass loop's alone: Start sets
	// them up before the loop starts, then only the loop uses them.
	sched *scheduler.Scheduler

	pending map[string]*api.Task              // PENDING tasks by ID (shared event objects: read-only)
	msgs    map[string]string                 // the status message each pending task has in the store
	dirty   bool                              // something to place since the last pass (new pending tasks, a failed commit)
	lastGen uint64                            // scheduler generation after the last pass
	cons    map[string][]scheduler.Constraint // parsed placement constraints by their text
	prefs   map[string][]scheduler.Preference // parsed placement preferences by their text

	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

// New returns a driver for store. It starts nothing.
func New(store *state.Store, cfg Config) (*Driver, error) {
	if store == nil {
		return nil, errors.New("schedule: store is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 1000
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = time.Second
	}
	return &Driver{cfg: cfg, store: store, sched: scheduler.New(), pending: map[string]*api.Task{}, msgs: map[string]string{},
		cons: map[string][]scheduler.Constraint{}, prefs: map[string][]scheduler.Preference{}, done: make(chan struct{})}, nil
}

// Start begins watching the store and scheduling.
func (d *Driver) Start(ctx context.Context) error {
	var nodes []*api.Node
	var tasks []*api.Task
	var err error
	w := d.store.ViewAndWatch(func(tx state.ReadTx) {
		if nodes, err = tx.FindNodes(state.All()); err != nil {
			return
		}
		tasks, err = tx.FindTasks(state.All())
	}, state.KindIs(state.KindNode, state.KindTask))
	if err != nil {
		w.Cancel()
		return err
	}
	for _, n := range nodes {
		d.upsertNode(n)
	}
	for _, t := range tasks {
		d.trackTask(t)
	}
	rctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	go d.run(rctx, w)
	return nil
}

// Stop ends the driver and waits for it, bounded by ctx.
func (d *Driver) Stop(ctx context.Context) error {
	d.once.Do(func() {
		if d.cancel == nil {
			close(d.done)
			return
		}
		d.cancel()
	})
	select {
	case <-d.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (d *Driver) run(ctx context.Context, w *state.Watcher) {
	defer close(d.done)
	defer w.Cancel()
	retry := d.cfg.Clock.NewTimer(d.cfg.RetryInterval)
	defer retry.Stop()
	d.pass(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-w.C:
			if !ok {
				// The watch ended (store restored or closed): rebuild from a
				// fresh snapshot.
				if ctx.Err() != nil {
					return
				}
				d.cfg.Logger.Warn("schedule: watch ended; rebuilding", "err", w.Err())
				d.sched = scheduler.New()
				d.pending = map[string]*api.Task{}
				d.msgs = map[string]string{}
				d.lastGen = 0
				var nodes []*api.Node
				var tasks []*api.Task
				w = d.store.ViewAndWatch(func(tx state.ReadTx) {
					nodes, _ = tx.FindNodes(state.All())
					tasks, _ = tx.FindTasks(state.All())
				}, state.KindIs(state.KindNode, state.KindTask))
				for _, n := range nodes {
					d.upsertNode(n)
				}
				for _, t := range tasks {
					d.trackTask(t)
				}
				d.dirty = true
			} else {
				d.handle(e)
				// Take the rest of the transaction (its events are already
				// queued) and whatever else is queued, so a transaction that
				// created many tasks is placed in one pass.
				last := e.Last
			drain:
				for {
					if !last {
						e, ok := <-w.C
						if !ok {
							break drain
						}
						d.handle(e)
						last = e.Last
						continue
					}
					select {
					case e, ok := <-w.C:
						if !ok {
							break drain
						}
						d.handle(e)
						last = e.Last
					default:
						break drain
					}
				}
			}
			d.pass(ctx)
		case <-retry.C():
			if len(d.pending) > 0 {
				d.dirty = true
				d.pass(ctx)
			}
			retry.Reset(d.cfg.RetryInterval)
		}
	}
}

func (d *Driver) handle(e state.Event) {
	switch o := e.Object.(type) {
	case *api.Node:
		if e.Action == state.ActionDelete {
			d.sched.RemoveNode(o.Id)
			return
		}
		d.upsertNode(o)
	case *api.Task:
		if e.Action == state.ActionDelete {
			d.sched.RemoveTask(o.Id)
			delete(d.pending, o.Id)
			delete(d.msgs, o.Id)
			return
		}
		d.trackTask(o)
	}
}

// SchedulerNode converts a stored node to the scheduler's description of it.
// It is the one conversion every component that filters nodes uses.
func SchedulerNode(n *api.Node) scheduler.Node {
	role := scheduler.RoleWorker
	if n.GetRole() == api.NodeRole_NODE_ROLE_MANAGER {
		role = scheduler.RoleManager
	}
	desc := n.GetDescription()
	return scheduler.Node{
		ID:           n.GetId(),
		Hostname:     desc.GetHostname(),
		Role:         role,
		Labels:       n.GetSpec().GetLabels(),
		OS:           desc.GetPlatform().GetOs(),
		Arch:         desc.GetPlatform().GetArch(),
		State:        scheduler.NodeState(n.GetStatus().GetState()),
		Availability: scheduler.Availability(n.GetSpec().GetAvailability()),
		Resources:    scheduler.Resources{NanoCPUs: desc.GetResources().GetNanoCpus(), MemoryBytes: desc.GetResources().GetMemoryBytes()},
	}
}

func (d *Driver) upsertNode(n *api.Node) {
	if err := d.sched.UpsertNode(SchedulerNode(n)); err != nil {
		d.cfg.Logger.Warn("schedule: node not usable", "node", n.Id, "err", err)
	}
}

func occupies(t *api.Task) bool {
	s := t.GetStatus().GetState()
	return t.NodeId != "" && s >= api.TaskState_TASK_STATE_ASSIGNED && s < api.TaskState_TASK_STATE_COMPLETE
}

func isPending(t *api.Task) bool {
	return t.GetStatus().GetState() == api.TaskState_TASK_STATE_PENDING && t.DesiredState <= api.TaskState_TASK_STATE_RUNNING
}

func (d *Driver) trackTask(t *api.Task) {
	if occupies(t) {
		// A task on a node counts for spread, reservations and host ports only.
		res := t.GetSpec().GetResources().GetReservations()
		st := scheduler.Task{ID: t.Id, ServiceID: t.ServiceId, SpecVersion: t.SpecVersion,
			Reservations: scheduler.Resources{NanoCPUs: res.GetNanoCpus(), MemoryBytes: res.GetMemoryBytes()},
			HostPorts:    hostPorts(t.GetSpec())}
		if err := d.sched.AddTask(st, t.NodeId); err != nil {
			d.cfg.Logger.Warn("schedule: task not recorded", "task", t.Id, "err", err)
		}
	} else {
		d.sched.RemoveTask(t.Id)
	}
	if isPending(t) {
		if _, ok := d.pending[t.Id]; !ok {
			d.dirty = true
		}
		d.pending[t.Id] = t
		d.msgs[t.Id] = t.GetStatus().GetMessage()
	} else {
		delete(d.pending, t.Id)
		delete(d.msgs, t.Id)
	}
}

// toSched converts a task; a task pinned to a node (global services) gets a
// node.id constraint, so it goes through the same filters and explanations.
func (d *Driver) toSched(t *api.Task) (scheduler.Task, error) {
	spec := t.GetSpec()
	raw := spec.GetPlacement().GetConstraints()
	var cons []scheduler.Constraint
	var err error
	if len(raw) > 0 {
		key := raw[0]
		if len(raw) > 1 {
			key = strings.Join(raw, "\x00")
		}
		var ok bool
		if cons, ok = d.cons[key]; !ok {
			cons, err = scheduler.ParseConstraints(raw)
			if err == nil {
				d.cons[key] = cons
			}
		}
	}
	if t.NodeId != "" && !occupies(t) {
		cons = append(append([]scheduler.Constraint(nil), cons...), scheduler.Constraint{Key: "node.id", Op: scheduler.OpEq, Value: t.NodeId})
	}
	var prefs []scheduler.Preference
	if raw := spec.GetPlacement().GetPreferences(); len(raw) > 0 && err == nil {
		key := strings.Join(raw, "\x00")
		var ok bool
		if prefs, ok = d.prefs[key]; !ok {
			prefs, err = scheduler.ParsePreferences(raw)
			if err == nil {
				d.prefs[key] = prefs
			}
		}
	}
	res := spec.GetResources().GetReservations()
	return scheduler.Task{
		ID:                 t.Id,
		ServiceID:          t.ServiceId,
		SpecVersion:        t.SpecVersion,
		Constraints:        cons,
		Preferences:        prefs,
		Reservations:       scheduler.Resources{NanoCPUs: res.GetNanoCpus(), MemoryBytes: res.GetMemoryBytes()},
		MaxReplicasPerNode: spec.GetPlacement().GetMaxReplicasPerNode(),
		HostPorts:          hostPorts(spec),
	}, err
}

// hostPorts returns the host-mode published ports of a task spec: the ports
// its task binds on its node.
func hostPorts(spec *api.TaskSpec) []scheduler.HostPort {
	var out []scheduler.HostPort
	for _, p := range spec.GetPorts() {
		if p.GetMode() != api.PublishMode_PUBLISH_MODE_HOST || p.GetPublishedPort() == 0 {
			continue
		}
		proto := scheduler.ProtocolTCP
		if p.GetProtocol() == api.PortProtocol_PORT_PROTOCOL_UDP {
			proto = scheduler.ProtocolUDP
		}
		out = append(out, scheduler.HostPort{Port: uint16(p.GetPublishedPort()), Protocol: proto})
	}
	return out
}

// pass places the pending tasks if anything changed since the last pass.
func (d *Driver) pass(ctx context.Context) {
	if len(d.pending) == 0 || (!d.dirty && d.sched.Generation() == d.lastGen) {
		return
	}
	d.dirty = false
	batch := make([]scheduler.Task, 0, len(d.pending))
	reasons := map[string]string{}
	for _, t := range d.pending {
		st, err := d.toSched(t)
		if err != nil {
			reasons[t.Id] = fmt.Sprintf("invalid placement constraints: %v", err)
			continue
		}
		batch = append(batch, st)
	}
	decisions := d.sched.Schedule(batch)
	for _, dec := range decisions {
		if !dec.Placed() {
			reasons[dec.TaskID] = dec.Reason
		}
	}
	d.commit(ctx, decisions, reasons)
	d.lastGen = d.sched.Generation()
}

type outcome struct {
	taskID, nodeID, reason string
}

func (d *Driver) commit(ctx context.Context, decisions []scheduler.Decision, reasons map[string]string) {
	var work []outcome
	for _, dec := range decisions {
		if dec.Placed() {
			work = append(work, outcome{taskID: dec.TaskID, nodeID: dec.NodeID})
		}
	}
	for id, r := range reasons {
		if _, ok := d.pending[id]; ok && d.msgs[id] != r {
			work = append(work, outcome{taskID: id, reason: r})
		}
	}
	now := d.cfg.Clock.Now().UnixNano()
	for start := 0; start < len(work); start += d.cfg.BatchSize {
		chunk := work[start:min(start+d.cfg.BatchSize, len(work))]
		err := d.store.UpdateRetry(ctx, 5, func(tx state.WriteTx) error {
			for _, o := range chunk {
				err := tx.ModifyTask(o.taskID, func(t *api.Task) error {
					if !isPending(t) {
						return state.ErrSkip
					}
					if o.nodeID == "" {
						if t.Status.GetMessage() == o.reason {
							return state.ErrSkip
						}
						t.Status = &api.TaskStatus{State: api.TaskState_TASK_STATE_PENDING, Timestamp: t.Status.GetTimestamp(), Message: o.reason}
						return nil
					}
					if t.NodeId != "" && t.NodeId != o.nodeID {
						return state.ErrSkip
					}
					t.NodeId = o.nodeID
					t.Status = &api.TaskStatus{State: api.TaskState_TASK_STATE_ASSIGNED, Timestamp: now, Message: "scheduler assigned task to node"}
					return nil
				})
				if err != nil && !errors.Is(err, state.ErrNotFound) {
					return err
				}
			}
			return nil
		})
		if err != nil {
			// Forget the placements of this chunk: the tasks stay pending and
			// the next pass tries again.
			d.cfg.Logger.Warn("schedule: commit failed", "tasks", len(chunk), "err", err)
			for _, o := range chunk {
				if o.nodeID != "" {
					d.sched.RemoveTask(o.taskID)
				}
			}
			d.dirty = true
		} else {
			for _, o := range chunk {
				if o.nodeID != "" {
					// Schedule recorded the task on its node, so it is no
					// longer pending here; its watch event confirms it.
					delete(d.pending, o.taskID)
					delete(d.msgs, o.taskID)
				} else if _, ok := d.pending[o.taskID]; ok {
					d.msgs[o.taskID] = o.reason
				}
			}
		}
	}
}
