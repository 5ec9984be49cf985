package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/runtime"
)

// Agent is the worker side of the manager<->worker protocol. It keeps a
// session with a dispatcher (reconnecting with back-off, rotating through
// the managers), runs the tasks assigned to its node through the Runtime,
// and reports their status. Tasks keep running while no manager is
// reachable; when a session opens again the agent reconciles its tasks with
// the complete assignment set and sends the status changes it queued.
type Agent struct {
	cfg AgentConfig
	log *slog.Logger

	mu       sync.Mutex
	phase    phase
	cancel   context.CancelFunc // ends the session loop
	learned  []string           // managers sent by the last dispatcher
	err      error
	live     *liveSession  // the open session, nil while there is none
	leaving  chan struct{} // closed when Stop begins: no new session opens
	stopping chan struct{} // closed once Stop has sent Leave: tasks shut down
	done     chan struct{} // closed when Stop has finished
	loopDone chan struct{} // closed when the session loop returned
	ready    chan struct{} // closed at the first complete assignment set
	ready1   sync.Once
	// discard1 runs, at the first complete assignment set, the discarding
	// of the tasks a Restorer runtime kept from an earlier run that the set
	// no longer has.
	discard1 sync.Once

	connected atomic.Bool
	// leaveForGood is set by Leave: Stop then shuts the tasks down and
	// leaves the cluster even with LiveRestore.
	leaveForGood atomic.Bool

	taskCtx    context.Context // bounds controller calls; cancelled when Stop's ctx ends
	taskCancel context.CancelFunc
	tasksMu    sync.Mutex
	tasks      map[string]*taskRunner
	taskWG     sync.WaitGroup

	reports   *reportQueue
	endpoints *endpointSet
}

// liveSession is the session the agent has open, for Stop to leave through
// and flush its final reports over.
type liveSession struct {
	ctx    context.Context // ends with the session
	client api.DispatcherClient
	id     string
}

// NewAgent validates cfg and returns an agent; it starts nothing.
func NewAgent(cfg AgentConfig) (*Agent, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("dispatch: %w", err)
	}
	a := &Agent{
		cfg:      cfg,
		log:      cfg.Logger.With("component", "agent", "node", cfg.NodeID),
		leaving:  make(chan struct{}),
		stopping: make(chan struct{}),
		done:     make(chan struct{}),
		loopDone: make(chan struct{}),
		ready:    make(chan struct{}),
		tasks:    map[string]*taskRunner{},
		reports:  newReportQueue(),
	}
	a.endpoints = newEndpointSet(cfg.OnEndpoints)
	a.taskCtx, a.taskCancel = context.WithCancel(context.Background())
	return a, nil
}

// Start starts the session loop. ctx only bounds Start itself. Start may be
// called once.
func (a *Agent) Start(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	switch a.phase {
	case phaseRunning:
		return errors.New("dispatch: agent already started")
	case phaseStopped:
		return fmt.Errorf("dispatch: agent: %w", errdefs.ErrStopped)
	}
	a.phase = phaseRunning
	loopCtx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	go a.endpoints.run()
	go func() {
		defer close(a.loopDone)
		a.loop(loopCtx)
	}()
	return nil
}

// Endpoints returns the endpoints this node publishes in the routing mesh
// now, sorted as OnEndpoints receives them. Safe for concurrent use.
func (a *Agent) Endpoints() []PublishedEndpoint { return a.endpoints.current() }

// Ready returns a channel closed once the agent has received its first
// complete assignment set.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// Connected reports whether the agent has a session whose complete
// assignment set it has applied.
func (a *Agent) Connected() bool { return a.connected.Load() }

// Err returns why the agent stopped: nil while it runs, ErrStopped (from
// internal/errdefs) after Stop.
func (a *Agent) Err() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.err
}

// Stop leaves the cluster gracefully and stops the agent, bounded by ctx.
//
// If a session is open, Stop first tells the dispatcher with Leave (bounded
// also by AgentConfig.RPCTimeout), which marks the node DOWN at once so the
// manager replaces its tasks and places nothing more on it. Then it shuts
// down and removes every task (when ctx ends, controller calls still in
// flight are cancelled and Stop returns ctx.Err()). If the session is still
// open, it then sends the tasks' final statuses (SHUTDOWN, or COMPLETE and
// FAILED for tasks that ended meanwhile) and waits until the dispatcher
// acknowledged them; it gives up quietly, with a log line, when ctx ends or
// the session breaks. Last it closes the session. Without an open session
// Stop does not wait for one: the tasks are shut down and the manager
// learns of it from the missed heartbeats.
//
// Stop is idempotent; later calls wait for the first to finish.
func (a *Agent) Stop(ctx context.Context) error {
	a.mu.Lock()
	switch a.phase {
	case phaseNew:
		a.phase = phaseStopped
		a.err = errdefs.ErrStopped
		close(a.leaving)
		close(a.stopping)
		a.taskCancel()
		close(a.done)
		a.mu.Unlock()
		return nil
	case phaseStopped:
		a.mu.Unlock()
		select {
		case <-a.done:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	a.phase = phaseStopped
	close(a.leaving) // under mu: no session registers as live after this
	ls := a.live
	a.mu.Unlock()

	if ls != nil && !a.liveRestore() {
		a.leave(ctx, ls)
	}
	a.tasksMu.Lock()
	close(a.stopping) // under tasksMu: no runner starts after this
	a.tasksMu.Unlock()

	tasksDone := make(chan struct{})
	go func() { a.taskWG.Wait(); close(tasksDone) }()
	var err error
	select {
	case <-tasksDone:
	case <-ctx.Done():
		err = ctx.Err()
		a.taskCancel()
		<-tasksDone
	}
	a.taskCancel()
	// Every task has withdrawn its endpoints: the host hears of the last set,
	// and the notifier ends (it can only be held by an OnEndpoints call).
	close(a.endpoints.quit)
	select {
	case <-a.endpoints.done:
	case <-ctx.Done():
		if err == nil {
			err = ctx.Err()
		}
	}
	if ls != nil && err == nil {
		a.flush(ctx, ls)
	}
	a.cancel()
	<-a.loopDone
	a.connected.Store(false)
	a.mu.Lock()
	a.err = errdefs.ErrStopped
	a.mu.Unlock()
	close(a.done)
	return err
}

// Leave is Stop for a node that leaves the cluster for good: even with
// LiveRestore the tasks are shut down and the dispatcher told.
func (a *Agent) Leave(ctx context.Context) error {
	a.leaveForGood.Store(true)
	return a.Stop(ctx)
}

// liveRestore reports whether Stop leaves the tasks running.
func (a *Agent) liveRestore() bool { return a.cfg.LiveRestore && !a.leaveForGood.Load() }

// leave tells the dispatcher of ls that the node is stopping. A failure is
// logged, not returned: the node is then marked DOWN when its heartbeats
// stop, as if it had crashed.
func (a *Agent) leave(ctx context.Context, ls *liveSession) {
	lctx, cancel := withTimeout(ctx, a.cfg.Clock, a.cfg.RPCTimeout)
	defer cancel()
	stop := context.AfterFunc(ls.ctx, cancel) // the session broke: give up
	defer stop()
	if _, err := ls.client.Leave(lctx, &api.LeaveRequest{NodeId: a.cfg.NodeID, SessionId: ls.id}); err != nil {
		a.log.Warn("leave failed; the manager will notice the missed heartbeats", "session", ls.id, "err", err)
		return
	}
	a.log.Info("left the cluster; node marked down", "session", ls.id)
}

// flush waits until the dispatcher acknowledged every queued status report
// (the session's sendReports goroutine sends them), or ctx ends, or the
// session breaks, or RPCTimeout passes: a dispatcher that cannot write the
// reports (a manager without quorum) must not hold the node's Stop.
func (a *Agent) flush(ctx context.Context, ls *liveSession) {
	fctx, cancel := withTimeout(ctx, a.cfg.Clock, a.cfg.RPCTimeout)
	defer cancel()
	if left := a.reports.waitEmpty(fctx, ls.ctx); left > 0 {
		a.log.Warn("stopping without reporting every final task status", "unsent", left,
			"ctx_err", context.Cause(fctx), "session_err", context.Cause(ls.ctx))
		return
	}
	a.log.Debug("final task statuses reported", "session", ls.id)
}

// setLive records ls as the open session, unless Stop has begun; it
// returns the func that clears it.
func (a *Agent) setLive(ls *liveSession) (unset func(), ok bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	select {
	case <-a.leaving:
		return nil, false
	default:
	}
	a.live = ls
	return func() {
		a.mu.Lock()
		if a.live == ls {
			a.live = nil
		}
		a.mu.Unlock()
	}, true
}

// managers returns the addresses to try: the list the last dispatcher sent
// (leader first, so a worker follows the leader as managers fail over), then
// the configured ones, without duplicates.
func (a *Agent) managers() []string {
	a.mu.Lock()
	out := slices.Clone(a.learned)
	a.mu.Unlock()
	for _, m := range a.cfg.Managers() {
		if !slices.Contains(out, m) {
			out = append(out, m)
		}
	}
	return out
}

func (a *Agent) setLearned(m []string) {
	if len(m) == 0 {
		return
	}
	a.mu.Lock()
	a.learned = slices.Clone(m)
	a.mu.Unlock()
}

// sleep waits d on the agent's clock, or until ctx ends.
func (a *Agent) sleep(ctx context.Context, d time.Duration) bool {
	t := a.cfg.Clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C():
		return true
	}
}

// loop keeps a session open until ctx ends. Once Stop has begun it opens no
// new session: a node that is leaving must not be marked READY again.
func (a *Agent) loop(ctx context.Context) {
	attempt, idx := 0, 0
	for ctx.Err() == nil {
		select {
		case <-a.leaving:
			<-ctx.Done()
			return
		default:
		}
		addrs := a.managers()
		if len(addrs) == 0 {
			a.log.Warn("no manager address to connect to")
			attempt++
			if !a.sleep(ctx, backoff(attempt, a.cfg.BackoffMin, a.cfg.BackoffMax)) {
				return
			}
			continue
		}
		addr := addrs[idx%len(addrs)]
		established, err := a.session(ctx, addr)
		if ctx.Err() != nil {
			return
		}
		if established {
			attempt = 0
		} else {
			attempt++
		}
		idx++ // the next attempt goes to the next manager
		delay := backoff(attempt, a.cfg.BackoffMin, a.cfg.BackoffMax)
		a.log.Info("session with manager ended; reconnecting", "manager", addr, "err", err, "retry_in", delay)
		if !a.sleep(ctx, delay) {
			return
		}
	}
}

var (
	errSessionTimeout = errors.New("timed out opening the session")
	errLeaving        = errors.New("the agent is stopping")
)

// session runs one session with the dispatcher at addr until it fails or
// ctx ends. established reports whether the session was opened.
func (a *Agent) session(ctx context.Context, addr string) (established bool, err error) {
	creds := a.cfg.TransportCredentials
	if creds == nil { // validation allows it only with Insecure
		creds = insecure.NewCredentials()
	}
	opts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithContextDialer(a.cfg.Dial),
	}, a.cfg.DialOptions...)
	cc, err := grpc.NewClient("passthrough:///"+addr, opts...)
	if err != nil {
		return false, fmt.Errorf("dial %s: %w", addr, err)
	}
	defer cc.Close()
	client := api.NewDispatcherClient(cc)

	sctx, cancel := context.WithCancelCause(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel(nil)
		wg.Wait()
	}()

	opened := make(chan struct{})
	wg.Go(func() {
		t := a.cfg.Clock.NewTimer(a.cfg.RPCTimeout)
		defer t.Stop()
		select {
		case <-t.C():
			cancel(errSessionTimeout)
		case <-opened:
		case <-sctx.Done():
		}
	})
	stream, err := client.Session(sctx, &api.SessionRequest{NodeId: a.cfg.NodeID, Description: a.cfg.Description, Addr: a.cfg.Addr})
	if err != nil {
		return false, sessionErr(sctx, err)
	}
	first, err := stream.Recv()
	if err != nil {
		return false, sessionErr(sctx, err)
	}
	close(opened)
	sessionID := first.GetSessionId()
	period := time.Duration(first.GetHeartbeatPeriod())
	if period <= 0 {
		period = 5 * time.Second
	}
	a.setLearned(first.GetManagers())
	if a.cfg.OnSession != nil {
		a.cfg.OnSession(first)
	}
	clearLive, ok := a.setLive(&liveSession{ctx: sctx, client: client, id: sessionID})
	if !ok {
		return true, errLeaving
	}
	defer clearLive()
	a.log.Info("session opened", "manager", addr, "session", sessionID, "heartbeat_period", period)

	wg.Go(func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				cancel(fmt.Errorf("session stream: %w", err))
				return
			}
			a.setLearned(m.GetManagers())
			if a.cfg.OnSession != nil {
				a.cfg.OnSession(m)
			}
		}
	})
	wg.Go(func() {
		if err := a.heartbeats(sctx, client, sessionID, period); err != nil {
			cancel(err)
		}
	})
	wg.Go(func() {
		if err := a.assignments(sctx, client, sessionID); err != nil {
			cancel(err)
		}
	})
	wg.Go(func() {
		if err := a.sendReports(sctx, client, sessionID); err != nil {
			cancel(err)
		}
	})
	<-sctx.Done()
	a.connected.Store(false)
	return true, context.Cause(sctx)
}

func sessionErr(sctx context.Context, err error) error {
	if cause := context.Cause(sctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	return fmt.Errorf("open session: %w", err)
}

func (a *Agent) heartbeats(ctx context.Context, client api.DispatcherClient, sessionID string, period time.Duration) error {
	t := a.cfg.Clock.NewTimer(period)
	defer t.Stop()
	req := &api.HeartbeatRequest{NodeId: a.cfg.NodeID, SessionId: sessionID}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
		}
		// A heartbeat that takes longer than two periods is as good as lost;
		// the floor keeps tests with tiny periods from failing on a busy host.
		hctx, cancel := withTimeout(ctx, a.cfg.Clock, max(2*period, time.Second))
		resp, err := client.Heartbeat(hctx, req)
		cancel()
		if err != nil {
			return fmt.Errorf("heartbeat: %w", err)
		}
		if p := time.Duration(resp.GetPeriod()); p > 0 {
			period = p
		}
		t.Reset(period)
	}
}

func (a *Agent) assignments(ctx context.Context, client api.DispatcherClient, sessionID string) error {
	stream, err := client.Assignments(ctx, &api.AssignmentsRequest{NodeId: a.cfg.NodeID, SessionId: sessionID})
	if err != nil {
		return fmt.Errorf("assignments: %w", err)
	}
	for {
		m, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("assignments stream: %w", err)
		}
		switch m.GetType() {
		case api.AssignmentsMessage_TYPE_COMPLETE:
			a.reconcile(m.GetUpdate())
			a.discard1.Do(func() { a.discardLeftovers(m.GetUpdate()) })
			a.connected.Store(true)
			a.ready1.Do(func() { close(a.ready) })
		case api.AssignmentsMessage_TYPE_INCREMENTAL:
			for _, t := range m.GetUpdate() {
				a.assign(t)
			}
			for _, id := range m.GetRemove() {
				a.unassign(id)
			}
		}
	}
}

// sendReports sends queued status changes, in batches, until ctx ends or an
// RPC fails. A report leaves the queue only once the dispatcher
// acknowledged it (the dispatcher answers after the store write).
func (a *Agent) sendReports(ctx context.Context, client api.DispatcherClient, sessionID string) error {
	t := a.cfg.Clock.NewTimer(a.cfg.StatusBatchInterval)
	defer t.Stop()
	a.reports.wake() // send what queued while disconnected
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-a.reports.kick:
		}
		if !t.Stop() {
			select {
			case <-t.C():
			default:
			}
		}
		t.Reset(a.cfg.StatusBatchInterval)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
		}
		updates, seqs := a.reports.snapshot()
		if len(updates) == 0 {
			continue
		}
		rctx, cancel := withTimeout(ctx, a.cfg.Clock, a.cfg.RPCTimeout)
		_, err := client.UpdateTaskStatus(rctx, &api.UpdateTaskStatusRequest{NodeId: a.cfg.NodeID, SessionId: sessionID, Updates: updates})
		cancel()
		if err != nil {
			a.reports.wake()
			return fmt.Errorf("update task status: %w", err)
		}
		a.reports.ack(seqs)
	}
}

// reconcile applies a complete assignment set: tasks not in it are stopped
// and removed, tasks in it are started or updated.
func (a *Agent) reconcile(set []*api.Task) {
	in := make(map[string]bool, len(set))
	for _, t := range set {
		in[t.GetId()] = true
	}
	a.tasksMu.Lock()
	var gone []string
	for id := range a.tasks {
		if !in[id] {
			gone = append(gone, id)
		}
	}
	a.tasksMu.Unlock()
	for _, id := range gone {
		a.unassign(id)
	}
	for _, t := range set {
		a.assign(t)
		// The store may lag behind what this agent reported (reports lost
		// with the previous leader): report again.
		a.tasksMu.Lock()
		r := a.tasks[t.GetId()]
		a.tasksMu.Unlock()
		if r != nil {
			r.rereport(t.GetStatus())
		}
	}
}

// discardLeftovers stops and removes, in the background, the tasks a
// Restorer runtime kept from an earlier run of the agent that the complete
// assignment set no longer runs here (absent, or already ended).
func (a *Agent) discardLeftovers(set []*api.Task) {
	rs, ok := a.cfg.Runtime.(runtime.Restorer)
	if !ok {
		return
	}
	keep := make(map[string]bool, len(set))
	for _, t := range set {
		if t.GetStatus().GetState() < api.TaskState_TASK_STATE_COMPLETE {
			keep[t.GetId()] = true
		}
	}
	a.tasksMu.Lock()
	defer a.tasksMu.Unlock()
	select {
	case <-a.stopping:
		return
	default:
	}
	a.taskWG.Add(1)
	go func() {
		defer a.taskWG.Done()
		ids, err := rs.Restorable(a.taskCtx)
		if err != nil {
			a.log.Warn("listing the tasks kept by the runtime failed", "err", err)
			return
		}
		for _, id := range ids {
			if keep[id] {
				continue
			}
			a.log.Info("discarding a task kept by the runtime that this node no longer runs", "task", id)
			if err := rs.Discard(a.taskCtx, id); err != nil {
				a.log.Warn("discarding a kept task failed", "task", id, "err", err)
			}
		}
	}()
}

// assign starts a runner for a new task, or passes the task's new desired
// state to its runner.
func (a *Agent) assign(t *api.Task) {
	a.tasksMu.Lock()
	defer a.tasksMu.Unlock()
	select {
	case <-a.stopping:
		return
	default:
	}
	if r := a.tasks[t.GetId()]; r != nil {
		r.update(t)
		return
	}
	if t.GetStatus().GetState() >= api.TaskState_TASK_STATE_COMPLETE {
		return // already ended; nothing to run
	}
	r := newTaskRunner(a, t)
	a.tasks[t.GetId()] = r
	a.taskWG.Add(1)
	go func() {
		defer a.taskWG.Done()
		r.run()
	}()
}

// unassign stops and removes a task that is no longer assigned.
func (a *Agent) unassign(id string) {
	a.tasksMu.Lock()
	r := a.tasks[id]
	delete(a.tasks, id)
	a.tasksMu.Unlock()
	if r != nil {
		r.remove()
	}
}

// reportQueue holds the latest unacknowledged status of each task.
type reportQueue struct {
	mu      sync.Mutex
	seq     uint64
	pending map[string]queuedReport
	kick    chan struct{}
	emptied chan struct{} // closed (and cleared) when an ack empties the queue; nil without waiters
}

type queuedReport struct {
	status *api.TaskStatus
	seq    uint64
}

func newReportQueue() *reportQueue {
	return &reportQueue{pending: map[string]queuedReport{}, kick: make(chan struct{}, 1)}
}

func (q *reportQueue) wake() {
	select {
	case q.kick <- struct{}{}:
	default:
	}
}

func (q *reportQueue) put(taskID string, st *api.TaskStatus) {
	q.mu.Lock()
	if prev, ok := q.pending[taskID]; ok && statusNewer(prev.status, st) {
		q.mu.Unlock()
		return
	}
	q.seq++
	q.pending[taskID] = queuedReport{status: st, seq: q.seq}
	q.mu.Unlock()
	q.wake()
}

func (q *reportQueue) snapshot() ([]*api.TaskStatusUpdate, map[string]uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	updates := make([]*api.TaskStatusUpdate, 0, len(q.pending))
	seqs := make(map[string]uint64, len(q.pending))
	for id, r := range q.pending {
		updates = append(updates, &api.TaskStatusUpdate{TaskId: id, Status: r.status})
		seqs[id] = r.seq
	}
	return updates, seqs
}

// ack drops the reports that were sent and not superseded since.
func (q *reportQueue) ack(seqs map[string]uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for id, seq := range seqs {
		if r, ok := q.pending[id]; ok && r.seq == seq {
			delete(q.pending, id)
		}
	}
	if len(q.pending) == 0 && q.emptied != nil {
		close(q.emptied)
		q.emptied = nil
	}
}

// waitEmpty waits until every queued report is acknowledged, or ctx or
// session ends; it returns how many reports are left unacknowledged.
func (q *reportQueue) waitEmpty(ctx, session context.Context) int {
	for {
		q.mu.Lock()
		n := len(q.pending)
		if n == 0 {
			q.mu.Unlock()
			return 0
		}
		if q.emptied == nil {
			q.emptied = make(chan struct{})
		}
		ch := q.emptied
		q.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return n
		case <-session.Done():
			return n
		}
	}
}
