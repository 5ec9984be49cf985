package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/state"
)

// ErrStarted is returned by Start on an Orchestrator that was started
// before: an Orchestrator runs once (one per leadership term).
var ErrStarted = errors.New("orchestrator: already started")

// Orchestrator runs the reconcilers of the Raft leader: replicated and
// global services, restarts, node-down and drain handling, rolling updates
// and the task history reaper. Everything it decides is derived from the
// store, so a new Orchestrator on a new leader carries on where the old one
// stopped.
type Orchestrator struct {
	store *state.Store
	cfg   Config

	mu      sync.Mutex
	started bool
	stopped bool
	cancel  context.CancelFunc
	done    chan struct{}
	ready   chan struct{}
}

// New returns an Orchestrator over store. It validates cfg and starts
// nothing.
func New(store *state.Store, cfg Config) (*Orchestrator, error) {
	if store == nil {
		return nil, fmt.Errorf("orchestrator: store must not be nil: %w", errdefs.ErrInvalidSpec)
	}
	cfg, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	return &Orchestrator{
		store: store,
		cfg:   cfg,
		done:  make(chan struct{}),
		ready: make(chan struct{}),
	}, nil
}

// Start starts the reconcilers and returns. They run until Stop; ctx only
// bounds the start itself. Start may be called once.
func (o *Orchestrator) Start(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.stopped {
		return fmt.Errorf("orchestrator: start after stop: %w", errdefs.ErrStopped)
	}
	if o.started {
		return ErrStarted
	}
	o.started = true
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	o.cancel = cancel
	l := &loop{
		o:            o,
		dirty:        map[string]struct{}{},
		nodesChanged: map[string]struct{}{},
		wakes:        map[string]time.Time{},
	}
	go l.run(runCtx)
	return nil
}

// Ready returns a channel closed once the first full reconcile pass after
// Start has finished.
func (o *Orchestrator) Ready() <-chan struct{} { return o.ready }

// Stop stops the reconcilers and waits, at most until ctx ends, for them to
// return. It is idempotent; a write in flight is abandoned (the store's
// state stays consistent, and the next leader finishes the work).
func (o *Orchestrator) Stop(ctx context.Context) error {
	o.mu.Lock()
	o.stopped = true
	started := o.started
	if o.cancel != nil {
		o.cancel()
	}
	o.mu.Unlock()
	if !started {
		return nil
	}
	select {
	case <-o.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// loop is the reconcilers' event loop. It runs on one goroutine and holds
// only caches of what the store says: which services need a look, and when
// delayed work (restart and update delays, retries) comes due.
type loop struct {
	o     *Orchestrator
	w     *state.Watcher
	timer Timer
	// timerAt is when timer fires; zero when there is none.
	timerAt time.Time

	dirty        map[string]struct{}  // services to reconcile
	dirtyAll     bool                 // reconcile every service
	nodesChanged map[string]struct{}  // nodes whose changes may matter
	wakes        map[string]time.Time // delayed reconciles by service
	nextSweep    time.Time
	resubscribe  time.Time // when to watch again after the store closed the watch
}

func (l *loop) run(ctx context.Context) {
	defer close(l.o.done)
	defer func() {
		if l.w != nil {
			l.w.Cancel()
		}
		if l.timer != nil {
			l.timer.Stop()
		}
	}()
	clock := l.o.cfg.Clock
	l.subscribe()
	l.nextSweep = clock.Now().Add(l.o.cfg.ReconcileInterval)
	l.process(ctx)
	close(l.o.ready)
	for {
		l.armTimer()
		var events <-chan state.Event
		if l.w != nil {
			events = l.w.C
		}
		var fire <-chan time.Time
		if l.timer != nil {
			fire = l.timer.C()
		}
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				l.watchEnded()
				break
			}
			l.handle(ev)
			l.drain()
		case <-fire:
			l.timer, l.timerAt = nil, time.Time{}
			l.due(clock.Now())
		}
		l.process(ctx)
	}
}

// subscribe views the whole state and watches every change after it.
func (l *loop) subscribe() {
	l.w = l.o.store.ViewAndWatch(func(state.ReadTx) {},
		state.KindIs(state.KindService, state.KindTask, state.KindNode, state.KindCluster))
	l.dirtyAll = true
}

// watchEnded handles a watch the store closed: after a snapshot restore or an
// overflow, watch again at once and look at everything; after the store was
// closed, try again at the next retry.
func (l *loop) watchEnded() {
	err := l.w.Err()
	l.w = nil
	if errors.Is(err, state.ErrStoreClosed) {
		l.o.cfg.Logger.Warn("orchestrator: store closed the watch; retrying", "err", err)
		l.resubscribe = l.o.cfg.Clock.Now().Add(l.o.cfg.RetryInterval)
		return
	}
	l.o.cfg.Logger.Info("orchestrator: watch ended; watching again", "err", err)
	l.subscribe()
}

// drain handles the events already queued, so a burst of changes costs one
// reconcile per service rather than one per event.
func (l *loop) drain() {
	for range 4096 {
		select {
		case ev, ok := <-l.w.C:
			if !ok {
				l.watchEnded()
				return
			}
			l.handle(ev)
		default:
			return
		}
	}
}

func (l *loop) handle(ev state.Event) {
	switch ev.Kind {
	case state.KindService:
		l.dirty[ev.Object.GetId()] = struct{}{}
	case state.KindTask:
		if id := ev.Task().GetServiceId(); id != "" {
			l.dirty[id] = struct{}{}
		}
	case state.KindNode:
		if ev.Action != state.ActionUpdate || nodeChanged(ev.Old.(*api.Node), ev.Node()) {
			l.nodesChanged[ev.Object.GetId()] = struct{}{}
		}
	case state.KindCluster:
		old, _ := ev.Old.(*api.Cluster)
		if ev.Action != state.ActionUpdate ||
			old.GetSpec().GetTaskHistoryLimit() != ev.Cluster().GetSpec().GetTaskHistoryLimit() {
			l.dirtyAll = true
		}
	}
}

// nodeChanged reports whether a node update matters to the reconcilers (a
// heartbeat timestamp does not).
func nodeChanged(a, b *api.Node) bool {
	return a.GetStatus().GetState() != b.GetStatus().GetState() ||
		a.GetRole() != b.GetRole() ||
		!proto.Equal(a.GetSpec(), b.GetSpec()) ||
		!proto.Equal(a.GetDescription(), b.GetDescription())
}

// due marks the work whose time has come.
func (l *loop) due(now time.Time) {
	if !now.Before(l.nextSweep) {
		l.dirtyAll = true
		l.nextSweep = now.Add(l.o.cfg.ReconcileInterval)
	}
	for id, at := range l.wakes {
		if !now.Before(at) {
			l.dirty[id] = struct{}{}
			delete(l.wakes, id)
		}
	}
	if l.w == nil && !l.resubscribe.IsZero() && !now.Before(l.resubscribe) {
		l.resubscribe = time.Time{}
		l.subscribe()
	}
}

// armTimer makes the timer fire at the earliest due time.
func (l *loop) armTimer() {
	next := l.nextSweep
	for _, at := range l.wakes {
		if at.Before(next) {
			next = at
		}
	}
	if l.w == nil && !l.resubscribe.IsZero() && l.resubscribe.Before(next) {
		next = l.resubscribe
	}
	if l.timer != nil && l.timerAt.Equal(next) {
		return
	}
	if l.timer != nil {
		l.timer.Stop()
	}
	l.timer = l.o.cfg.Clock.NewTimer(next.Sub(l.o.cfg.Clock.Now()))
	l.timerAt = next
}

// process reconciles every service marked dirty.
func (l *loop) process(ctx context.Context) {
	if l.dirtyAll || len(l.nodesChanged) > 0 {
		// Shared read: markAll and markNodes only read IDs.
		l.o.store.ViewShared(func(tx state.ReadTx) {
			if l.dirtyAll {
				l.markAll(tx)
			} else {
				l.markNodes(tx)
			}
		})
		l.dirtyAll = false
		clear(l.nodesChanged)
	}
	if len(l.dirty) == 0 {
		return
	}
	ids := make([]string, 0, len(l.dirty))
	for id := range l.dirty {
		ids = append(ids, id)
	}
	clear(l.dirty)
	slices.Sort(ids)
	for i, id := range ids {
		if ctx.Err() != nil {
			for _, rest := range ids[i:] {
				l.dirty[rest] = struct{}{}
			}
			return
		}
		wake, err := l.o.reconcileService(ctx, id)
		if err != nil {
			if ctx.Err() == nil {
				l.o.cfg.Logger.Warn("orchestrator: reconcile failed; will retry", "service", id, "err", err)
			}
			wake = l.o.cfg.Clock.Now().Add(l.o.cfg.RetryInterval)
		}
		if wake.IsZero() {
			delete(l.wakes, id)
		} else {
			l.wakes[id] = wake
		}
	}
}

// markAll marks every service, and the services of tasks whose service is
// gone.
func (l *loop) markAll(tx state.ReadTx) {
	svcs, err := tx.FindServices(state.All())
	if err != nil {
		l.o.cfg.Logger.Error("orchestrator: reading services", "err", err)
	}
	for _, s := range svcs {
		l.dirty[s.GetId()] = struct{}{}
	}
	tasks, err := tx.FindTasks(state.All())
	if err != nil {
		l.o.cfg.Logger.Error("orchestrator: reading tasks", "err", err)
	}
	for _, t := range tasks {
		if id := t.GetServiceId(); id != "" {
			l.dirty[id] = struct{}{}
		}
	}
}

// markNodes marks the services a node change may affect: every global
// service, and the services with tasks on the changed nodes.
func (l *loop) markNodes(tx state.ReadTx) {
	svcs, err := tx.FindServices(state.All())
	if err != nil {
		l.o.cfg.Logger.Error("orchestrator: reading services", "err", err)
	}
	for _, s := range svcs {
		if s.GetSpec().GetGlobal() != nil {
			l.dirty[s.GetId()] = struct{}{}
		}
	}
	for id := range l.nodesChanged {
		tasks, err := tx.FindTasks(state.ByNodeID(id))
		if err != nil {
			l.o.cfg.Logger.Error("orchestrator: reading tasks", "node", id, "err", err)
			continue
		}
		for _, t := range tasks {
			if sid := t.GetServiceId(); sid != "" {
				l.dirty[sid] = struct{}{}
			}
		}
	}
}
