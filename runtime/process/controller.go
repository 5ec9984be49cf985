package process

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/shoalhq/shoal/runtime"
)

// Controller runs one task as a process group. All methods are safe for
// concurrent use and idempotent; see runtime.Controller for the contract.
type Controller struct {
	rt      *Runtime
	task    runtime.Task
	log     *slog.Logger
	dir     string // Dir/<taskID>
	work    string // Dir/<taskID>/work, always runtime-owned
	cwd     string // Spec.Dir or work
	stopSig syscall.Signal
	grace   time.Duration

	exited  chan struct{} // closed by the reaper once status is set
	removed chan struct{} // closed when Remove is first called

	mu               sync.Mutex
	prepared         bool
	program          string
	env              []string
	stdout, stderr   *os.File
	started          bool
	shutdownReq      bool // Shutdown called before Start: never start
	cmd              *exec.Cmd
	pgid             int
	groupGone        bool // the leader exited: never signal pgid again
	stopSent         bool
	graceTimer       *time.Timer
	killedAfterGrace bool
	killedByRemove   bool
	status           runtime.ExitStatus
	waitErr          error
	isRemoved        bool
	cleaned          bool
	endpoints        []runtime.Endpoint // set by Start
}

var (
	_ runtime.Controller       = (*Controller)(nil)
	_ runtime.LogStreamer      = (*Controller)(nil)
	_ runtime.EndpointReporter = (*Controller)(nil)
)

func newController(r *Runtime, t runtime.Task) *Controller {
	dir := filepath.Join(r.dir, t.ID)
	work := filepath.Join(dir, "work")
	cwd := t.Spec.Dir
	if cwd == "" {
		cwd = work
	}
	// Validate has accepted the stop signal already.
	stopSig, _ := runtime.ParseSignal(t.Spec.EffectiveStopSignal())
	return &Controller{
		rt:      r,
		task:    t,
		log:     r.log.With("task.id", t.ID, "service.name", t.ServiceName),
		dir:     dir,
		work:    work,
		cwd:     cwd,
		stopSig: stopSig,
		grace:   t.Spec.EffectiveStopGracePeriod(),
		exited:  make(chan struct{}),
		removed: make(chan struct{}),
	}
}

// Task returns the task this controller runs.
func (c *Controller) Task() runtime.Task { return c.task }

// WorkDir returns the runtime-owned work directory of the task (its HOME,
// and its working directory unless Spec.Dir is set).
func (c *Controller) WorkDir() string { return c.work }

// Pid returns the PID of the task's main process (also its process group
// ID), or 0 before Start.
func (c *Controller) Pid() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pgid
}

// Prepare creates Dir/<taskID>/work and the log files, checks Spec.Dir and
// resolves the program in the task's PATH. A program that cannot be found
// gives an error wrapping exec.ErrNotFound.
func (c *Controller) Prepare(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.isRemoved:
		return fmt.Errorf("process: prepare task %s: %w", c.task.ID, runtime.ErrAlreadyRemoved)
	case c.prepared:
		return nil
	}
	if err := c.prepareLocked(); err != nil {
		return fmt.Errorf("process: prepare task %s: %w", c.task.ID, err)
	}
	c.prepared = true
	c.log.Debug("task prepared", "program", c.program, "dir", c.cwd)
	return nil
}

func (c *Controller) prepareLocked() error {
	if err := os.MkdirAll(c.work, 0o750); err != nil {
		return err
	}
	if c.task.Spec.Dir != "" {
		fi, err := os.Stat(c.task.Spec.Dir)
		if err != nil {
			return fmt.Errorf("Spec.Dir: %w", err)
		}
		if !fi.IsDir() {
			return fmt.Errorf("Spec.Dir: %s is not a directory", c.task.Spec.Dir)
		}
	}
	env := taskEnv(c.rt.hostEnv, c.task, c.work)
	path, _ := lookupEnv(env, "PATH")
	program, err := resolveProgram(c.task.Spec.Command[0], path, c.cwd)
	if err != nil {
		return err
	}
	const flags = os.O_WRONLY | os.O_CREATE | os.O_APPEND
	stdout, err := os.OpenFile(c.rt.LogPath(c.task.ID, runtime.StreamStdout), flags, 0o640)
	if err != nil {
		return err
	}
	stderr, err := os.OpenFile(c.rt.LogPath(c.task.ID, runtime.StreamStderr), flags, 0o640)
	if err != nil {
		_ = stdout.Close()
		return err
	}
	c.program, c.env, c.stdout, c.stderr = program, env, stdout, stderr
	return nil
}

// Start starts the program in its own process group, with stdin from
// /dev/null and stdout/stderr appended to the log files, and returns once
// it runs. Exactly one goroutine per started process waits for it; it ends
// when the process exits.
func (c *Controller) Start(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.isRemoved:
		return fmt.Errorf("process: start task %s: %w", c.task.ID, runtime.ErrAlreadyRemoved)
	case c.started:
		return nil
	case c.shutdownReq:
		return fmt.Errorf("process: start task %s: %w", c.task.ID, runtime.ErrShutdown)
	case !c.prepared:
		return fmt.Errorf("process: start task %s: %w", c.task.ID, runtime.ErrNotPrepared)
	}
	eps, err := pickPorts(c.task.Spec.Ports)
	if err != nil {
		return fmt.Errorf("process: start task %s: %w", c.task.ID, err)
	}
	env := c.env
	if len(eps) > 0 {
		env = dedupEnv(append(append([]string(nil), c.env...), portEnv(eps)...))
	}
	cmd := &exec.Cmd{
		Path:        c.program,
		Args:        append(append([]string(nil), c.task.Spec.Command...), c.task.Spec.Args...),
		Env:         env,
		Dir:         c.cwd,
		Stdout:      c.stdout,
		Stderr:      c.stderr,
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("process: start task %s: %w", c.task.ID, err)
	}
	c.cmd, c.pgid, c.started, c.endpoints = cmd, cmd.Process.Pid, true, eps
	c.log.Info("task started", "pid", c.pgid, "program", c.program, "endpoints", len(eps))
	go c.reap()
	return nil
}

// Endpoints returns, once Start succeeded, the host port of every
// Spec.Ports entry with an unspecified address: the task listens on its
// node's addresses. Nil before Start.
func (c *Controller) Endpoints() []runtime.Endpoint {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]runtime.Endpoint(nil), c.endpoints...)
}

// reap is the one goroutine that waits for the started process.
func (c *Controller) reap() {
	peeked := awaitExit(c.pgid)
	if peeked {
		c.killGroupRemains()
	}
	err := c.cmd.Wait()
	if !peeked {
		c.killGroupRemains()
	}
	c.mu.Lock()
	c.status, c.waitErr = c.exitStatus(err)
	c.closeLogsLocked()
	status := c.status
	close(c.exited)
	c.mu.Unlock()
	c.log.Info("task exited", "code", status.Code, "signal", status.Signal, "message", status.Message)
}

// killGroupRemains kills whatever is left of the process group once its
// leader has exited: a task is its whole group, like a container whose init
// process exited.
func (c *Controller) killGroupRemains() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.signalGroupLocked(syscall.SIGKILL)
	c.groupGone = true
	if c.graceTimer != nil {
		c.graceTimer.Stop()
	}
}

// signalGroupLocked sends sig to the task's process group unless the
// group's leader already exited.
func (c *Controller) signalGroupLocked(sig syscall.Signal) {
	if c.groupGone || c.pgid <= 0 {
		return
	}
	if err := syscall.Kill(-c.pgid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		c.log.Warn("signal task process group", "signal", runtime.SignalName(sig), "error", err)
	}
}

func (c *Controller) exitStatus(err error) (runtime.ExitStatus, error) {
	state := c.cmd.ProcessState
	if state == nil {
		return runtime.ExitStatus{Code: -1, Message: "wait failed: " + err.Error()},
			fmt.Errorf("process: wait task %s: %w", c.task.ID, err)
	}
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		err = fmt.Errorf("process: wait task %s: %w", c.task.ID, err)
	} else {
		err = nil
	}
	ws, ok := state.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() {
		code := state.ExitCode()
		msg := fmt.Sprintf("exit code %d", code)
		if c.stopSent {
			msg += " after stop signal " + runtime.SignalName(c.stopSig)
		}
		return runtime.ExitStatus{Code: code, Message: msg}, err
	}
	sig := ws.Signal()
	name := runtime.SignalName(sig)
	if name == "" {
		name = fmt.Sprintf("signal %d", int(sig))
	}
	msg := "killed by " + name
	switch {
	case sig == syscall.SIGKILL && c.killedByRemove:
		msg += " on remove"
	case sig == syscall.SIGKILL && c.killedAfterGrace:
		msg += fmt.Sprintf(" after %s grace period", c.grace)
	case c.stopSent && sig == c.stopSig:
		msg += " (stop signal)"
	}
	return runtime.ExitStatus{Code: -1, Signal: name, Message: msg}, err
}

func (c *Controller) closeLogsLocked() {
	for _, f := range []**os.File{&c.stdout, &c.stderr} {
		if *f != nil {
			if err := (*f).Close(); err != nil {
				c.log.Warn("close task log", "error", err)
			}
			*f = nil
		}
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// Wait blocks until the task exits or ctx is done. Every call gets the same
// ExitStatus. Before Start it returns runtime.ErrNotStarted
// (runtime.ErrAlreadyRemoved if the task was removed without starting).
func (c *Controller) Wait(ctx context.Context) (runtime.ExitStatus, error) {
	c.mu.Lock()
	started, removed := c.started, c.isRemoved
	c.mu.Unlock()
	if !started {
		if removed {
			return runtime.ExitStatus{}, fmt.Errorf("process: wait task %s: %w", c.task.ID, runtime.ErrAlreadyRemoved)
		}
		return runtime.ExitStatus{}, fmt.Errorf("process: wait task %s: %w", c.task.ID, runtime.ErrNotStarted)
	}
	select {
	case <-c.exited:
	case <-ctx.Done():
		return runtime.ExitStatus{}, ctx.Err()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.status, c.waitErr
}

// Shutdown sends Spec.StopSignal to the task's process group (once, however
// often Shutdown is called), kills the group with SIGKILL after
// Spec.StopGracePeriod unless it exited, and returns when the task has
// exited or ctx ends; the SIGKILL happens even if ctx ended first. Before
// Start it marks the task so Start refuses to run it.
func (c *Controller) Shutdown(ctx context.Context) error {
	c.mu.Lock()
	if !c.started {
		c.shutdownReq = true
		c.mu.Unlock()
		return nil
	}
	if !c.stopSent && !c.groupGone && !c.killedByRemove {
		c.stopSent = true
		c.log.Info("stopping task", "signal", runtime.SignalName(c.stopSig), "grace", c.grace)
		c.signalGroupLocked(c.stopSig)
		c.graceTimer = time.AfterFunc(c.grace, c.killAfterGrace)
	}
	c.mu.Unlock()
	select {
	case <-c.exited:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *Controller) killAfterGrace() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.groupGone {
		return
	}
	c.log.Warn("task did not stop within grace period, killing it", "grace", c.grace)
	c.killedAfterGrace = true
	c.signalGroupLocked(syscall.SIGKILL)
}

// Remove kills the process group with SIGKILL if it still runs, waits for
// it, closes the log files, deletes the work directory and, unless
// Config.KeepLogs, the whole task directory. A Spec.Dir is never deleted.
func (c *Controller) Remove(ctx context.Context) error {
	c.mu.Lock()
	if c.cleaned {
		c.mu.Unlock()
		return nil
	}
	if !c.isRemoved {
		c.isRemoved = true
		close(c.removed)
	}
	started := c.started
	if started && !c.groupGone && !c.killedByRemove {
		c.killedByRemove = true
		c.signalGroupLocked(syscall.SIGKILL)
	}
	c.mu.Unlock()

	if started {
		select {
		case <-c.exited:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	c.mu.Lock()
	c.closeLogsLocked() // the reaper closed them if the task ran
	c.mu.Unlock()

	target := c.work
	if !c.rt.keepLogs {
		target = c.dir
	}
	if err := removeAll(target); err != nil {
		return fmt.Errorf("process: remove task %s: %w", c.task.ID, err)
	}
	c.mu.Lock()
	c.cleaned = true
	c.mu.Unlock()
	c.rt.forget(c)
	c.log.Debug("task removed", "kept_logs", c.rt.keepLogs)
	return nil
}

// removeAll is os.RemoveAll that also copes with directories a task made
// read-only, by making them writable and retrying once.
func removeAll(path string) error {
	err := os.RemoveAll(path)
	if err == nil {
		return nil
	}
	_ = filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			_ = os.Chmod(p, 0o700)
		}
		return nil
	})
	return os.RemoveAll(path)
}
