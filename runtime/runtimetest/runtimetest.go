package runtimetest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strings"
	"sync"

	"github.com/shoalhq/shoal/runtime"
)

// Errors returned by the control methods of Runtime.
var (
	// ErrUnknownTask: no controller was ever made for the task ID.
	ErrUnknownTask = errors.New("runtimetest: unknown task")
	// ErrNotRunning: the task is not running (not started, exited or removed).
	ErrNotRunning = errors.New("runtimetest: task not running")
)

// Behavior scripts one task. The zero Behavior is a well-behaved task: it
// prepares and starts at once, runs until Shutdown, then exits with code 0.
// Behavior is looked up anew at every controller call (see
// Runtime.SetBehavior), so a test can change it while the task runs.
type Behavior struct {
	PrepareErr error // Prepare returns this error (each time) instead of succeeding
	StartErr   error // Start returns this error (each time) instead of starting
	// ExitCode makes the task exit with this code right after Start.
	ExitCode *int
	// HoldPrepare / HoldStart make Prepare / Start block until
	// Runtime.Release(taskID), Remove or ctx ends.
	HoldPrepare, HoldStart bool
	// HangOnShutdown makes the task ignore its stop signal: Shutdown blocks
	// until Runtime.Release(taskID) (then the task is killed as if its grace
	// period ran out), the task exits another way, or ctx ends.
	HangOnShutdown bool
	// ShutdownStatus is how the task exits when Shutdown stops it. nil means
	// ExitStatus{Code: 0, Message: "exit code 0 after stop signal <sig>"}.
	ShutdownStatus *runtime.ExitStatus
	// WaitErr is returned by Wait, with the exit status, once the task exits.
	WaitErr error
	// RemoveErr is returned by Remove (each time), which then does nothing.
	RemoveErr error
	// Stdout and Stderr are the task's output, as returned by Logs.
	Stdout, Stderr string
	// Exec answers Controller.Exec on a running task (health check
	// commands): its code and error are returned as they are. It runs in
	// the caller's goroutine and should honour ctx. nil answers every
	// command with exit code 0.
	Exec func(ctx context.Context, req runtime.ExecRequest) (int, error)
	// ImageHealthcheck is what Controller.ImageHealthcheck reports once the
	// task is prepared, as if its image declared this HEALTHCHECK.
	ImageHealthcheck *runtime.HealthConfig
}

// Code returns a pointer to n, for Behavior.ExitCode.
func Code(n int) *int { return &n }

// State is where a fake task is in its lifecycle.
type State int

// States of a fake task, in lifecycle order.
const (
	StateNew State = iota
	StatePrepared
	StateRunning
	StateExited
	StateRemoved
)

func (s State) String() string {
	switch s {
	case StateNew:
		return "new"
	case StatePrepared:
		return "prepared"
	case StateRunning:
		return "running"
	case StateExited:
		return "exited"
	case StateRemoved:
		return "removed"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// EventKind says what happened to a task.
type EventKind int

// Event kinds.
const (
	EventPrepared EventKind = iota + 1
	EventStarted
	EventShutdown // Shutdown was called on a started task
	EventExited
	EventRemoved
)

func (k EventKind) String() string {
	switch k {
	case EventPrepared:
		return "prepared"
	case EventStarted:
		return "started"
	case EventShutdown:
		return "shutdown"
	case EventExited:
		return "exited"
	case EventRemoved:
		return "removed"
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// Event reports a task's transition to the hook set with OnEvent.
type Event struct {
	Kind   EventKind
	Task   runtime.Task
	Status runtime.ExitStatus // for EventExited
}

// Runtime is a fake runtime.Runtime: tasks "run" without any process, fully
// under the test's control. All methods are safe for concurrent use. It
// keeps a record of every task it has seen (removed ones too), so memory
// grows with the number of tasks; tens of thousands are fine.
type Runtime struct {
	mu      sync.Mutex
	behave  func(runtime.Task) Behavior
	perTask map[string]Behavior
	tasks   map[string]*Controller // latest controller per task ID
	hook    func(Event)
	changed chan struct{} // closed and replaced on every change
	// nextPort is the next fake host port handed to a task's port without
	// a HostPort.
	nextPort uint16
}

// FirstFakePort is the first fake host port a Runtime hands out for a
// Spec.Ports entry without HostPort; later ones count up from it.
const FirstFakePort = 40000

var _ runtime.Runtime = (*Runtime)(nil)

// New returns an empty fake runtime whose tasks use the zero Behavior.
func New() *Runtime {
	return &Runtime{
		perTask:  make(map[string]Behavior),
		tasks:    make(map[string]*Controller),
		changed:  make(chan struct{}),
		nextPort: FirstFakePort,
	}
}

// SetBehavior sets the function that scripts tasks without a behavior of
// their own (SetTaskBehavior). nil restores the zero Behavior. f is called
// without any lock held, at every controller call, so it must be cheap and
// may be called concurrently.
func (r *Runtime) SetBehavior(f func(runtime.Task) Behavior) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.behave = f
}

// SetTaskBehavior scripts one task by ID; it takes precedence over
// SetBehavior. It may be called before the task's controller exists.
func (r *Runtime) SetTaskBehavior(taskID string, b Behavior) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.perTask[taskID] = b
}

// OnEvent sets a hook called after each task transition, synchronously in
// the goroutine that caused it and with no lock held (it may call the
// Runtime). Events of one task arrive in order; events of different tasks
// may interleave. nil removes the hook.
func (r *Runtime) OnEvent(f func(Event)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.hook = f
}

func (r *Runtime) behavior(t runtime.Task) Behavior {
	r.mu.Lock()
	b, ok := r.perTask[t.ID]
	f := r.behave
	r.mu.Unlock()
	if ok || f == nil {
		return b
	}
	return f(t)
}

// Controller validates t (errors wrap runtime.ErrInvalidTask) and returns
// its controller: the existing one unless it was removed. It does no work.
func (r *Runtime) Controller(t runtime.Task) (runtime.Controller, error) {
	if err := t.Validate(); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if c, ok := r.tasks[t.ID]; ok && c.state != StateRemoved {
		return c, nil
	}
	c := &Controller{
		rt:       r,
		task:     t,
		exited:   make(chan struct{}),
		removed:  make(chan struct{}),
		released: make(chan struct{}),
	}
	r.tasks[t.ID] = c
	r.notifyLocked()
	return c, nil
}

func (r *Runtime) lookup(taskID string) (*Controller, error) {
	c, ok := r.tasks[taskID]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrUnknownTask, taskID)
	}
	return c, nil
}

// Exit makes the running task exit by itself with code.
func (r *Runtime) Exit(taskID string, code int) error {
	return r.ExitWith(taskID, runtime.ExitStatus{Code: code, Message: fmt.Sprintf("exit code %d", code)})
}

// ExitWith makes the running task exit with status, e.g. killed by a
// signal: ExitStatus{Code: -1, Signal: "SIGSEGV"}.
func (r *Runtime) ExitWith(taskID string, status runtime.ExitStatus) error {
	r.mu.Lock()
	c, err := r.lookup(taskID)
	if err != nil {
		r.mu.Unlock()
		return err
	}
	if c.state != StateRunning {
		r.mu.Unlock()
		return fmt.Errorf("%w: %s is %s", ErrNotRunning, taskID, c.state)
	}
	ev := c.exitLocked(status)
	r.mu.Unlock()
	r.emit(ev)
	return nil
}

// Release lets the task past its holds (Behavior.HoldPrepare, HoldStart,
// HangOnShutdown), for good: later calls don't block either.
func (r *Runtime) Release(taskID string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, err := r.lookup(taskID)
	if err != nil {
		return err
	}
	if !c.isReleased {
		c.isReleased = true
		close(c.released)
		r.notifyLocked()
	}
	return nil
}

// Running returns the tasks currently running, sorted by ID.
func (r *Runtime) Running() []runtime.Task {
	return r.tasksIn(func(s State) bool { return s == StateRunning })
}

// Tasks returns every task the runtime has a record of, removed ones
// included, sorted by ID.
func (r *Runtime) Tasks() []runtime.Task {
	return r.tasksIn(func(State) bool { return true })
}

func (r *Runtime) tasksIn(keep func(State) bool) []runtime.Task {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []runtime.Task
	for _, c := range r.tasks {
		if keep(c.state) {
			out = append(out, c.task)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Started reports whether the task was ever started (it may have exited
// or been removed since).
func (r *Runtime) Started(taskID string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.tasks[taskID]
	return ok && c.wasStarted
}

// State returns the task's state, and false if the task is unknown.
func (r *Runtime) State(taskID string) (State, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.tasks[taskID]
	if !ok {
		return 0, false
	}
	return c.state, true
}

// ExitStatus returns the status of a task that exited, and false if it has
// not exited (or is unknown).
func (r *Runtime) ExitStatus(taskID string) (runtime.ExitStatus, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.tasks[taskID]
	if !ok || !c.hasExited {
		return runtime.ExitStatus{}, false
	}
	return c.status, true
}

// Calls returns the names of the controller methods called for the task,
// in call order ("Prepare", "Start", "Wait", "Shutdown", "Remove", "Logs").
// It covers the latest controller of that ID.
func (r *Runtime) Calls(taskID string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.tasks[taskID]
	if !ok {
		return nil
	}
	return append([]string(nil), c.calls...)
}

// CallCount returns how often method was called for the task.
func (r *Runtime) CallCount(taskID, method string) int {
	n := 0
	for _, m := range r.Calls(taskID) {
		if m == method {
			n++
		}
	}
	return n
}

// WaitFor blocks until cond returns true or ctx ends (then ctx.Err()).
// cond is evaluated with no lock held, again after every change in the
// runtime; it may call the Runtime's methods.
func (r *Runtime) WaitFor(ctx context.Context, cond func() bool) error {
	for {
		r.mu.Lock()
		ch := r.changed
		r.mu.Unlock()
		if cond() {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// WaitStarted blocks until the task has been started or ctx ends.
func (r *Runtime) WaitStarted(ctx context.Context, taskID string) error {
	return r.WaitFor(ctx, func() bool { return r.Started(taskID) })
}

func (r *Runtime) notifyLocked() {
	close(r.changed)
	r.changed = make(chan struct{})
}

func (r *Runtime) emit(evs ...Event) {
	r.mu.Lock()
	hook := r.hook
	r.mu.Unlock()
	if hook == nil {
		return
	}
	for _, ev := range evs {
		if ev.Kind != 0 {
			hook(ev)
		}
	}
}

// Controller is the fake controller of one task. All methods are safe for
// concurrent use and idempotent; see runtime.Controller.
type Controller struct {
	rt   *Runtime
	task runtime.Task

	exited   chan struct{} // closed when the task exits
	removed  chan struct{} // closed when the task is removed
	released chan struct{} // closed by Runtime.Release

	// guarded by rt.mu
	state       State
	wasStarted  bool
	hasExited   bool
	shutdownReq bool
	isReleased  bool
	status      runtime.ExitStatus
	waitErr     error
	calls       []string
	endpoints   []runtime.Endpoint
	detached    bool // let go by Detach, not yet restored
}

var (
	_ runtime.Controller         = (*Controller)(nil)
	_ runtime.LogStreamer        = (*Controller)(nil)
	_ runtime.EndpointReporter   = (*Controller)(nil)
	_ runtime.Execer             = (*Controller)(nil)
	_ runtime.ImageHealthchecker = (*Controller)(nil)
)

// Exec runs req as Behavior.Exec says (exit code 0 without one) while the
// task runs; it is recorded as an "Exec" call. It returns
// runtime.ErrNotStarted before Start and an error wrapping ErrNotRunning
// once the task exited or was removed.
func (c *Controller) Exec(ctx context.Context, req runtime.ExecRequest) (int, error) {
	b := c.call("Exec")
	if len(req.Command) == 0 {
		return 0, c.errorf("exec in", errors.New("ExecRequest.Command: must not be empty"))
	}
	c.rt.mu.Lock()
	started, state := c.wasStarted, c.state
	c.rt.mu.Unlock()
	switch {
	case !started:
		return 0, c.errorf("exec in", runtime.ErrNotStarted)
	case state != StateRunning:
		return 0, c.errorf("exec in", ErrNotRunning)
	case ctx.Err() != nil:
		return 0, ctx.Err()
	case b.Exec == nil:
		return 0, nil
	}
	return b.Exec(ctx, req)
}

// ImageHealthcheck returns a copy of Behavior.ImageHealthcheck once the
// task is prepared, nil before.
func (c *Controller) ImageHealthcheck() *runtime.HealthConfig {
	c.rt.mu.Lock()
	prepared := c.state >= StatePrepared
	c.rt.mu.Unlock()
	h := c.rt.behavior(c.task).ImageHealthcheck
	if !prepared || h == nil {
		return nil
	}
	out := *h
	out.Test = append([]string(nil), h.Test...)
	return &out
}

// Endpoints returns, once the task was started, one endpoint per
// Spec.Ports entry with an unspecified address (the node's, like the
// process runtime): HostPort when set, else a fake port counting up from
// FirstFakePort (no socket is bound). Nil before Start.
func (c *Controller) Endpoints() []runtime.Endpoint {
	c.rt.mu.Lock()
	defer c.rt.mu.Unlock()
	return append([]runtime.Endpoint(nil), c.endpoints...)
}

// fakeEndpointsLocked assigns the task's endpoints; rt.mu is held.
func (c *Controller) fakeEndpointsLocked() {
	for _, p := range c.task.Spec.Ports {
		port := p.HostPort
		if port == 0 {
			port = c.rt.nextPort
			c.rt.nextPort++
			if c.rt.nextPort == 0 {
				c.rt.nextPort = FirstFakePort
			}
		}
		c.endpoints = append(c.endpoints, runtime.Endpoint{Target: p.Target, Protocol: p.EffectiveProtocol(),
			Addr: netip.AddrPortFrom(netip.IPv4Unspecified(), port)})
	}
}

// call records method and returns the current behavior.
func (c *Controller) call(method string) Behavior {
	c.rt.mu.Lock()
	c.calls = append(c.calls, method)
	c.rt.notifyLocked()
	c.rt.mu.Unlock()
	return c.rt.behavior(c.task)
}

func (c *Controller) errorf(op string, err error) error {
	return fmt.Errorf("runtimetest: %s task %s: %w", op, c.task.ID, err)
}

// hold blocks until Release, Remove or ctx.
func (c *Controller) hold(ctx context.Context) error {
	select {
	case <-c.released:
		return nil
	case <-c.removed:
		return runtime.ErrAlreadyRemoved
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Prepare succeeds unless Behavior.PrepareErr; Behavior.HoldPrepare makes
// it block until Runtime.Release.
func (c *Controller) Prepare(ctx context.Context) error {
	b := c.call("Prepare")
	if err := ctx.Err(); err != nil {
		return err
	}
	if b.HoldPrepare {
		if err := c.hold(ctx); err != nil {
			return c.errorf("prepare", err)
		}
	}
	c.rt.mu.Lock()
	switch {
	case c.state == StateRemoved:
		c.rt.mu.Unlock()
		return c.errorf("prepare", runtime.ErrAlreadyRemoved)
	case c.state >= StatePrepared:
		c.rt.mu.Unlock()
		return nil
	case b.PrepareErr != nil:
		c.rt.mu.Unlock()
		return b.PrepareErr
	}
	c.state = StatePrepared
	c.rt.notifyLocked()
	c.rt.mu.Unlock()
	c.rt.emit(Event{Kind: EventPrepared, Task: c.task})
	return nil
}

// Start "starts" the task unless Behavior.StartErr; with Behavior.ExitCode
// the task exits at once. Behavior.HoldStart makes it block until
// Runtime.Release.
func (c *Controller) Start(ctx context.Context) error {
	b := c.call("Start")
	if err := ctx.Err(); err != nil {
		return err
	}
	if b.HoldStart {
		if err := c.hold(ctx); err != nil {
			return c.errorf("start", err)
		}
	}
	c.rt.mu.Lock()
	switch {
	case c.state == StateRemoved:
		c.rt.mu.Unlock()
		return c.errorf("start", runtime.ErrAlreadyRemoved)
	case c.wasStarted:
		c.rt.mu.Unlock()
		return nil
	case c.shutdownReq:
		c.rt.mu.Unlock()
		return c.errorf("start", runtime.ErrShutdown)
	case c.state < StatePrepared:
		c.rt.mu.Unlock()
		return c.errorf("start", runtime.ErrNotPrepared)
	case b.StartErr != nil:
		c.rt.mu.Unlock()
		return b.StartErr
	}
	c.state, c.wasStarted = StateRunning, true
	c.waitErr = b.WaitErr
	c.fakeEndpointsLocked()
	c.rt.notifyLocked()
	evs := []Event{{Kind: EventStarted, Task: c.task}}
	if b.ExitCode != nil {
		evs = append(evs, c.exitLocked(runtime.ExitStatus{Code: *b.ExitCode, Message: fmt.Sprintf("exit code %d", *b.ExitCode)}))
	}
	c.rt.mu.Unlock()
	c.rt.emit(evs...)
	return nil
}

// exitLocked ends the task with status unless it already exited, and
// returns the event to emit (zero if none).
func (c *Controller) exitLocked(status runtime.ExitStatus) Event {
	if c.hasExited || !c.wasStarted {
		return Event{}
	}
	c.hasExited, c.status = true, status
	if c.state == StateRunning {
		c.state = StateExited
	}
	close(c.exited)
	c.rt.notifyLocked()
	return Event{Kind: EventExited, Task: c.task, Status: status}
}

// Wait blocks until the task exits or ctx ends.
func (c *Controller) Wait(ctx context.Context) (runtime.ExitStatus, error) {
	c.call("Wait")
	c.rt.mu.Lock()
	started, state := c.wasStarted, c.state
	c.rt.mu.Unlock()
	if !started {
		if state == StateRemoved {
			return runtime.ExitStatus{}, c.errorf("wait", runtime.ErrAlreadyRemoved)
		}
		return runtime.ExitStatus{}, c.errorf("wait", runtime.ErrNotStarted)
	}
	select {
	case <-c.exited:
	case <-ctx.Done():
		return runtime.ExitStatus{}, ctx.Err()
	}
	c.rt.mu.Lock()
	defer c.rt.mu.Unlock()
	return c.status, c.waitErr
}

// Shutdown stops a running task: it exits with Behavior.ShutdownStatus at
// once, or, with Behavior.HangOnShutdown, when Runtime.Release is called.
// Before Start it makes Start refuse; after exit it is a no-op.
func (c *Controller) Shutdown(ctx context.Context) error {
	b := c.call("Shutdown")
	c.rt.mu.Lock()
	if !c.wasStarted {
		c.shutdownReq = true
		c.rt.mu.Unlock()
		return nil
	}
	if c.hasExited {
		c.rt.mu.Unlock()
		return nil
	}
	sig := c.task.Spec.EffectiveStopSignal()
	evs := []Event{{Kind: EventShutdown, Task: c.task}}
	if !b.HangOnShutdown || c.isReleased {
		status := runtime.ExitStatus{Code: 0, Message: "exit code 0 after stop signal " + sig}
		if b.HangOnShutdown {
			status = graceKill(c.task)
		} else if b.ShutdownStatus != nil {
			status = *b.ShutdownStatus
		}
		evs = append(evs, c.exitLocked(status))
		c.rt.mu.Unlock()
		c.rt.emit(evs...)
		return nil
	}
	c.rt.mu.Unlock()
	c.rt.emit(evs...)
	select {
	case <-c.exited:
		return nil
	case <-c.released:
		c.rt.mu.Lock()
		ev := c.exitLocked(graceKill(c.task))
		c.rt.mu.Unlock()
		c.rt.emit(ev)
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func graceKill(t runtime.Task) runtime.ExitStatus {
	return runtime.ExitStatus{Code: -1, Signal: "SIGKILL",
		Message: fmt.Sprintf("killed by SIGKILL after %s grace period", t.Spec.EffectiveStopGracePeriod())}
}

// Remove kills the task if it runs (ExitStatus SIGKILL "on remove") and
// marks it removed; Behavior.RemoveErr makes it fail instead.
func (c *Controller) Remove(ctx context.Context) error {
	b := c.call("Remove")
	if err := ctx.Err(); err != nil {
		return err
	}
	c.rt.mu.Lock()
	if c.state == StateRemoved {
		c.rt.mu.Unlock()
		return nil
	}
	if b.RemoveErr != nil {
		c.rt.mu.Unlock()
		return b.RemoveErr
	}
	ev := c.exitLocked(runtime.ExitStatus{Code: -1, Signal: "SIGKILL", Message: "killed by SIGKILL on remove"})
	c.state = StateRemoved
	close(c.removed)
	c.rt.notifyLocked()
	c.rt.mu.Unlock()
	c.rt.emit(ev, Event{Kind: EventRemoved, Task: c.task})
	return nil
}

// Logs returns Behavior.Stdout, Behavior.Stderr, or for Stream "" both
// (stdout first). With Follow the reader then blocks until the task exits
// or is removed (io.EOF), ctx ends (ctx.Err()) or it is closed.
func (c *Controller) Logs(ctx context.Context, opts runtime.LogOptions) (io.ReadCloser, error) {
	b := c.call("Logs")
	if err := opts.Validate(); err != nil {
		return nil, c.errorf("logs", err)
	}
	c.rt.mu.Lock()
	state := c.state
	c.rt.mu.Unlock()
	switch {
	case state == StateRemoved:
		return nil, c.errorf("logs", runtime.ErrAlreadyRemoved)
	case state < StatePrepared:
		return nil, c.errorf("logs", runtime.ErrNotPrepared)
	}
	var text string
	switch opts.Stream {
	case runtime.StreamStdout:
		text = b.Stdout
	case runtime.StreamStderr:
		text = b.Stderr
	default:
		text = b.Stdout + b.Stderr
	}
	return &logReader{ctx: ctx, r: strings.NewReader(text), follow: opts.Follow,
		exited: c.exited, removed: c.removed, closed: make(chan struct{})}, nil
}

type logReader struct {
	ctx             context.Context
	r               *strings.Reader
	follow          bool
	exited, removed <-chan struct{}
	once            sync.Once
	closed          chan struct{}
}

func (l *logReader) Read(p []byte) (int, error) {
	select {
	case <-l.closed:
		return 0, errors.New("runtimetest: read from closed log reader")
	default:
	}
	n, err := l.r.Read(p)
	if n > 0 || !l.follow {
		return n, err
	}
	select {
	case <-l.exited:
	case <-l.removed:
	case <-l.closed:
		return 0, errors.New("runtimetest: read from closed log reader")
	case <-l.ctx.Done():
		return 0, l.ctx.Err()
	}
	return 0, io.EOF
}

func (l *logReader) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}
