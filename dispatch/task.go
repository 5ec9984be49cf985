package dispatch

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/runtime"
)

// taskRunner drives one task's controller through the task state machine
// and reports every transition. It owns the controller; it ends when the
// task is removed from the node's assignments or the agent stops.
type taskRunner struct {
	a  *Agent
	id string

	mu        sync.Mutex
	task      *api.Task       // latest from the manager
	reported  api.TaskState   // most advanced state known to be reported
	last      *api.TaskStatus // the status reported last by this runner
	health    api.HealthState // the task's health, carried by every report
	healthOut string          // the output of the probe that set health
	healthSeq uint64          // counts health changes (api.TaskStatus.health_seq)

	stopOnce   sync.Once
	stopReq    chan struct{} // closed when the task must stop (desired ≥ SHUTDOWN, or removed)
	removeOnce sync.Once
	removeReq  chan struct{} // closed when the task left the assignments

	detached bool // run left the task running for a later agent (LiveRestore); read by cleanup in run's goroutine
}

func newTaskRunner(a *Agent, t *api.Task) *taskRunner {
	r := &taskRunner{
		a:         a,
		id:        t.GetId(),
		task:      t,
		reported:  t.GetStatus().GetState(),
		healthSeq: t.GetStatus().GetHealthSeq(),
		stopReq:   make(chan struct{}),
		removeReq: make(chan struct{}),
	}
	if t.GetDesiredState() >= api.TaskState_TASK_STATE_SHUTDOWN {
		r.requestStop()
	}
	return r
}

func (r *taskRunner) requestStop() { r.stopOnce.Do(func() { close(r.stopReq) }) }

// update takes a newer version of the task from the manager.
func (r *taskRunner) update(t *api.Task) {
	r.mu.Lock()
	r.task = t
	r.mu.Unlock()
	if t.GetDesiredState() >= api.TaskState_TASK_STATE_SHUTDOWN {
		r.requestStop()
	}
}

// remove asks the runner to stop the task, remove it and end.
func (r *taskRunner) remove() {
	r.requestStop()
	r.removeOnce.Do(func() { close(r.removeReq) })
}

func (r *taskRunner) stopRequested() bool {
	select {
	case <-r.stopReq:
		return true
	default:
		return false
	}
}

func (r *taskRunner) agentStopping() bool {
	select {
	case <-r.a.stopping:
		return true
	default:
		return false
	}
}

// report records a transition and queues it for the manager. A state that
// is not past the last reported one is dropped: task state only moves
// forward.
func (r *taskRunner) report(state api.TaskState, msg, errStr string, exitCode int32) {
	r.reportWith(state, msg, errStr, exitCode, nil)
}

// reportWith is report with the task's endpoints (the RUNNING report).
func (r *taskRunner) reportWith(state api.TaskState, msg, errStr string, exitCode int32, eps []*api.TaskEndpoint) {
	r.mu.Lock()
	if state <= r.reported {
		r.mu.Unlock()
		return
	}
	st := &api.TaskStatus{
		State:        state,
		Timestamp:    r.a.cfg.Clock.Now().UnixNano(),
		Message:      msg,
		Err:          errStr,
		ExitCode:     exitCode,
		Endpoints:    eps,
		Health:       r.health,
		HealthOutput: r.healthOut,
		HealthSeq:    r.healthSeq,
	}
	r.reported = state
	r.last = st
	r.mu.Unlock()
	r.a.log.Debug("task state", "task", r.id, "state", state, "msg", msg, "err", errStr)
	r.a.reports.put(r.id, st)
}

// reportHealth records a health change of the running task and queues its
// RUNNING status again with the new health: not a transition, so the state
// stays and health_seq orders the reports. Once the task's final status is
// reported the change is only recorded.
func (r *taskRunner) reportHealth(h api.HealthState, output string) {
	r.mu.Lock()
	r.health, r.healthOut = h, output
	r.healthSeq++
	base := r.last
	if base == nil && r.task.GetStatus().GetState() == api.TaskState_TASK_STATE_RUNNING {
		base = r.task.GetStatus() // re-adopted: the manager's copy is the last report
	}
	if r.reported != api.TaskState_TASK_STATE_RUNNING || base == nil {
		r.mu.Unlock()
		return
	}
	st := proto.Clone(base).(*api.TaskStatus)
	st.Health, st.HealthOutput, st.HealthSeq = h, output, r.healthSeq
	r.last = st
	r.mu.Unlock()
	r.a.log.Debug("task health", "task", r.id, "health", h, "output", output)
	r.a.reports.put(r.id, st)
}

// rereport queues the last status again if the manager's copy (stored)
// lags behind it.
func (r *taskRunner) rereport(stored *api.TaskStatus) {
	r.mu.Lock()
	last := r.last
	r.mu.Unlock()
	if last != nil && statusNewer(last, stored) {
		r.a.reports.put(r.id, proto.Clone(last).(*api.TaskStatus))
	}
}

// step runs fn with a context that ends when the task must stop or the
// agent stops.
func (r *taskRunner) step(fn func(context.Context) error) error {
	ctx, cancel := context.WithCancel(r.a.taskCtx)
	defer cancel()
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-r.stopReq:
			cancel()
		case <-r.a.stopping:
			cancel()
		case <-done:
		}
	}()
	return fn(ctx)
}

// run is the task's state machine.
func (r *taskRunner) run() {
	r.mu.Lock()
	t := r.task
	r.mu.Unlock()
	var ctl runtime.Controller
	defer func() { r.cleanup(ctl) }()

	if st := t.GetStatus().GetState(); st > api.TaskState_TASK_STATE_ASSIGNED {
		// The manager says this node already ran the task, but this agent does
		// not know it: the agent (or its host) restarted. A runtime that keeps
		// tasks across restarts may still have it; otherwise it is lost.
		if c, ok := r.restore(t); ok {
			ctl = c
			r.running(ctl, "re-adopted after a restart of the worker", true)
			return
		}
		if r.stopRequested() {
			r.report(api.TaskState_TASK_STATE_SHUTDOWN, "task shut down (lost by a restart of the worker)", "", 0)
		} else {
			r.report(api.TaskState_TASK_STATE_FAILED, "task lost", "the worker's agent restarted and no longer runs this task", 0)
		}
		r.waitEnd()
		return
	}
	if r.stopRequested() {
		r.report(api.TaskState_TASK_STATE_SHUTDOWN, "shut down before it started", "", 0)
		r.waitEnd()
		return
	}
	r.report(api.TaskState_TASK_STATE_ACCEPTED, "accepted", "", 0)
	rt, err := RuntimeTask(t, r.a.cfg.Description)
	if err != nil {
		r.report(api.TaskState_TASK_STATE_REJECTED, "rejected: its spec does not expand for this node", err.Error(), 0)
		r.waitEnd()
		return
	}
	c, err := r.a.cfg.Runtime.Controller(rt)
	if err != nil {
		r.report(api.TaskState_TASK_STATE_REJECTED, "rejected by the runtime", err.Error(), 0)
		r.waitEnd()
		return
	}
	ctl = c

	r.report(api.TaskState_TASK_STATE_PREPARING, "preparing", "", 0)
	if err := r.step(ctl.Prepare); err != nil {
		r.failed("prepare", err)
		r.waitEnd()
		return
	}
	r.report(api.TaskState_TASK_STATE_READY, "prepared", "", 0)
	if r.stopRequested() {
		r.report(api.TaskState_TASK_STATE_SHUTDOWN, "shut down before it started", "", 0)
		r.waitEnd()
		return
	}
	r.report(api.TaskState_TASK_STATE_STARTING, "starting", "", 0)
	if err := r.step(ctl.Start); err != nil {
		r.failed("start", err)
		r.waitEnd()
		return
	}
	r.running(ctl, "started", false)
}

// running follows a started task (started by run, or re-adopted from the
// runtime) until it ends or must stop, and reports how it ended.
func (r *taskRunner) running(ctl runtime.Controller, msg string, adopted bool) {
	reps := runtimeEndpoints(ctl)
	r.mu.Lock()
	hcSpec := r.task.GetSpec().GetHealthCheck()
	r.mu.Unlock()
	hc := resolveHealthCheck(hcSpec, ctl, reps)
	var unhealthy chan healthEvent
	stopHealth := func() {}
	initial := api.HealthState_HEALTH_STATE_STARTING
	if hc != nil {
		r.mu.Lock()
		if st := r.task.GetStatus(); adopted && st.GetState() == api.TaskState_TASK_STATE_RUNNING &&
			st.GetHealth() == api.HealthState_HEALTH_STATE_HEALTHY {
			// Healthy when the previous agent left it: it stays in the mesh
			// through the restart, and probes go on from there.
			initial, r.healthOut = api.HealthState_HEALTH_STATE_HEALTHY, st.GetHealthOutput()
		}
		r.health = initial
		r.mu.Unlock()
	}
	r.reportWith(api.TaskState_TASK_STATE_RUNNING, msg, "", 0, taskEndpoints(reps))
	if hc == nil {
		r.publish(reps)
	} else {
		// The task enters the mesh once healthy; an unhealthy one is
		// stopped below.
		unhealthy = make(chan healthEvent, 1)
		hctx, hcancel := context.WithCancel(r.a.taskCtx)
		hdone := make(chan struct{})
		go func() {
			defer close(hdone)
			runHealthCheck(hctx, r.a.cfg.Clock, hc, initial, func(ev healthEvent) { r.onHealth(ev, reps, unhealthy) })
		}()
		stopHealth = func() { hcancel(); <-hdone }
	}
	defer stopHealth()

	wctx, wcancel := context.WithCancel(r.a.taskCtx)
	defer wcancel()
	waitCh := make(chan waitResult, 1)
	go func() {
		st, err := ctl.Wait(wctx)
		waitCh <- waitResult{st, err}
	}()
	var res waitResult
	stopped := false
	var sick *healthEvent // the event that made the task unhealthy
	why := "shut down"    // the prefix of the SHUTDOWN status message
	select {
	case res = <-waitCh:
	case ev := <-unhealthy:
		// Unhealthy: out of the mesh, then stopped; it failed.
		sick = &ev
		stopHealth()
		if exit, exited := r.drain(waitCh); exited {
			res = exit
			break
		}
		if err := ctl.Shutdown(r.a.taskCtx); err != nil {
			r.a.log.Warn("task shutdown failed", "task", r.id, "err", err)
		}
		res = <-waitCh
	case <-r.stopReq:
		stopHealth() // before the drain: a check must not publish the task again
		stopped = true
		if exit, exited := r.drain(waitCh); exited {
			res = exit // it ended by itself while it drained
			break
		}
		if err := ctl.Shutdown(r.a.taskCtx); err != nil {
			r.a.log.Warn("task shutdown failed", "task", r.id, "err", err)
		}
		res = <-waitCh
	case <-r.a.stopping:
		// The agent is stopping: shut the task down here rather than in
		// cleanup, so that its final status is reported before the agent
		// flushes its reports and leaves. Its endpoints are withdrawn, but
		// the node is going away: there is no drain delay. With LiveRestore
		// a task that can be detached is left running instead.
		stopHealth()
		r.a.endpoints.remove(r.id)
		if d, ok := ctl.(runtime.Detacher); ok && r.a.liveRestore() {
			wcancel()
			<-waitCh
			if err := d.Detach(); err != nil {
				r.a.log.Warn("detaching a task failed", "task", r.id, "err", err)
			}
			r.detached = true
			return
		}
		stopped = true
		why = "shut down: the worker is stopping"
		if err := ctl.Shutdown(r.a.taskCtx); err != nil {
			r.a.log.Warn("task shutdown failed", "task", r.id, "err", err)
			wcancel() // the task may never exit: stop waiting for it
		}
		res = <-waitCh
	}
	// A task that ended by itself is withdrawn at once.
	stopHealth()
	r.a.endpoints.remove(r.id)
	switch {
	case res.err != nil && r.a.taskCtx.Err() != nil:
		// Stop's context ended while the task was shutting down: there is
		// no final status to report, and no time left to report it.
		return
	case sick != nil:
		msg := fmt.Sprintf("task unhealthy: %d consecutive health checks failed", sick.failures)
		errStr := sick.output
		if errStr == "" {
			errStr = "health check failed"
		}
		code := int32(0)
		if res.err == nil {
			msg += "; stopped: " + res.st.String()
			code = int32(res.st.Code)
		}
		r.report(api.TaskState_TASK_STATE_FAILED, msg, errStr, code)
	case stopped && res.err == nil:
		r.report(api.TaskState_TASK_STATE_SHUTDOWN, why+": "+res.st.String(), "", int32(res.st.Code))
	case stopped:
		r.report(api.TaskState_TASK_STATE_SHUTDOWN, why, res.err.Error(), 0)
	case res.err != nil:
		r.report(api.TaskState_TASK_STATE_FAILED, "waiting for the task failed", res.err.Error(), 0)
	case res.st.Success():
		r.report(api.TaskState_TASK_STATE_COMPLETE, "finished: "+res.st.String(), "", 0)
	default:
		errStr := fmt.Sprintf("exit code %d", res.st.Code)
		if res.st.Signal != "" {
			errStr = "killed by " + res.st.Signal
		}
		r.report(api.TaskState_TASK_STATE_FAILED, "task failed: "+res.st.String(), errStr, int32(res.st.Code))
	}
	r.waitEnd()
}

// onHealth takes an event of the task's health check (from the checker's
// goroutine): a change of health is reported; a healthy task publishes its
// endpoints (eps, from the runtime); an unhealthy one is handed to running
// on unhealthy, which stops it.
func (r *taskRunner) onHealth(ev healthEvent, eps []runtime.Endpoint, unhealthy chan<- healthEvent) {
	if !ev.changed {
		return
	}
	r.mu.Lock()
	same := r.health == ev.health
	r.mu.Unlock()
	switch ev.health {
	case api.HealthState_HEALTH_STATE_HEALTHY:
		r.publish(eps)
	case api.HealthState_HEALTH_STATE_UNHEALTHY:
		r.a.log.Info("task unhealthy", "task", r.id, "failures", ev.failures, "output", ev.output)
		unhealthy <- ev // buffered: the check's last event
	}
	if !same {
		r.reportHealth(ev.health, ev.output)
	}
}

// restore asks a Restorer runtime for the task's controller, kept from an
// earlier run of the agent.
func (r *taskRunner) restore(t *api.Task) (runtime.Controller, bool) {
	rs, ok := r.a.cfg.Runtime.(runtime.Restorer)
	if !ok {
		return nil, false
	}
	rt, err := RuntimeTask(t, r.a.cfg.Description)
	if err != nil {
		return nil, false
	}
	var ctl runtime.Controller
	err = r.step(func(ctx context.Context) error {
		c, found, err := rs.Restore(ctx, rt)
		if found {
			ctl = c
		}
		return err
	})
	if err != nil {
		r.a.log.Warn("restoring a task kept by the runtime failed", "task", r.id, "err", err)
		return nil, false
	}
	if ctl != nil {
		r.a.log.Info("re-adopted a task kept by the runtime", "task", r.id)
	}
	return ctl, ctl != nil
}

// waitResult is how a task's Wait returned.
type waitResult struct {
	st  runtime.ExitStatus
	err error
}

// publish records the endpoints the task, just started, publishes in the
// routing mesh (eps is what the runtime said about its ports) unless it is
// not wanted running any more.
func (r *taskRunner) publish(eps []runtime.Endpoint) {
	r.mu.Lock()
	t := r.task
	r.mu.Unlock()
	if r.stopRequested() || t.GetDesiredState() != api.TaskState_TASK_STATE_RUNNING {
		return
	}
	if pub := publishedEndpoints(t, eps); len(pub) > 0 {
		r.a.endpoints.set(r.id, pub)
	}
}

// drain prepares a running task that must stop: if it published endpoints,
// it withdraws them, waits until the host has been told (OnEndpoints), then
// lets the task run on for DrainDelay so that the routing mesh stops sending
// it connections and those in flight finish. The wait ends early when the
// agent stops; if the task exits by itself meanwhile, drain returns its
// result and true.
func (r *taskRunner) drain(waitCh <-chan waitResult) (waitResult, bool) {
	v := r.a.endpoints.remove(r.id)
	if v == 0 {
		return waitResult{}, false // nothing published: stop at once
	}
	for {
		ok, advanced := r.a.endpoints.deliveredYet(v)
		if ok {
			break
		}
		select {
		case <-advanced:
		case <-r.a.stopping:
			return waitResult{}, false
		case res := <-waitCh:
			return res, true
		}
	}
	return r.drainWait(waitCh)
}

// drainWait lets the task run on, its endpoints withdrawn, for DrainDelay
// and, with ConfirmWithdrawal, until every node confirmed the withdrawal,
// at most DrainTimeout.
func (r *taskRunner) drainWait(waitCh <-chan waitResult) (waitResult, bool) {
	cfg := &r.a.cfg
	d := cfg.DrainDelay
	var confirmed chan error // nil once the answer is in
	if cfg.ConfirmWithdrawal != nil {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		ch := make(chan error, 1)
		go func() { ch <- cfg.ConfirmWithdrawal(ctx) }()
		confirmed = ch
	} else if d <= 0 {
		return waitResult{}, false
	}
	r.a.log.Debug("draining task before it stops", "task", r.id, "delay", d, "confirm", confirmed != nil)
	start := cfg.Clock.Now()
	minT := cfg.Clock.NewTimer(d)
	defer minT.Stop()
	var maxC <-chan time.Time
	if confirmed != nil {
		maxT := cfg.Clock.NewTimer(max(cfg.DrainTimeout, d))
		defer maxT.Stop()
		maxC = maxT.C()
	}
	delayed := d <= 0
	for !delayed || confirmed != nil {
		select {
		case <-minT.C():
			delayed = true
		case err := <-confirmed:
			if err != nil {
				r.a.log.Debug("withdrawal not confirmed; draining for the delay only", "task", r.id, "err", err)
			}
			confirmed = nil
		case <-maxC:
			r.a.log.Warn("stopping a task whose withdrawal from the mesh was not confirmed in time",
				"task", r.id, "waited", cfg.Clock.Now().Sub(start))
			return waitResult{}, false
		case <-r.a.stopping:
			return waitResult{}, false
		case res := <-waitCh:
			return res, true
		}
	}
	return waitResult{}, false
}

// failed reports the failure of a Prepare or Start.
func (r *taskRunner) failed(what string, err error) {
	switch {
	case r.agentStopping():
		// Not the task's fault; the agent is going away, and so is the task.
		r.report(api.TaskState_TASK_STATE_SHUTDOWN, "shut down before it started: the worker is stopping", "", 0)
	case r.stopRequested() || errors.Is(err, runtime.ErrShutdown):
		r.report(api.TaskState_TASK_STATE_SHUTDOWN, "shut down before it started", "", 0)
	case errors.Is(err, runtime.ErrInvalidTask):
		r.report(api.TaskState_TASK_STATE_REJECTED, what+" rejected the task", err.Error(), 0)
	default:
		r.report(api.TaskState_TASK_STATE_FAILED, what+" failed", err.Error(), 0)
	}
}

// waitEnd waits, once the task ended, for it to leave the assignments or
// for the agent to stop.
func (r *taskRunner) waitEnd() {
	select {
	case <-r.removeReq:
	case <-r.a.stopping:
	}
}

// cleanup stops the task if it still runs and releases it in the runtime.
func (r *taskRunner) cleanup(ctl runtime.Controller) {
	if ctl == nil || r.detached {
		return
	}
	ctx := r.a.taskCtx
	if err := ctl.Shutdown(ctx); err != nil {
		r.a.log.Warn("task shutdown failed", "task", r.id, "err", err)
	}
	if err := ctl.Remove(ctx); err != nil {
		r.a.log.Warn("task remove failed", "task", r.id, "err", err)
	}
}
