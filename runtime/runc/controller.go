package runc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/shoalhq/shoal/runtime"
	"github.com/shoalhq/shoal/runtime/image"
	"github.com/shoalhq/shoal/runtime/internal/logread"
	"github.com/shoalhq/shoal/runtime/runc/shim"
)

// Controller drives one container. Its methods are safe for concurrent use
// and idempotent; see runtime.Controller for the contract.
type Controller struct {
	rt      *Runtime
	task    runtime.Task
	log     *slog.Logger
	dir     string // Dir/containers/<taskID>
	stopSig syscall.Signal
	grace   time.Duration

	exited   chan struct{} // closed by the waiter once status is set
	removed  chan struct{} // closed when Remove is first called
	detached chan struct{} // closed by Detach: the waiter lets go

	prepareMu sync.Mutex // serialises Prepare (a pull may take long; mu stays free)

	mu               sync.Mutex
	prepared         bool
	prep             preparedRecord
	started          bool
	shutdownReq      bool // Shutdown called before Start: never start
	endpoints        []runtime.Endpoint
	pidfd            *os.File // the shim's pidfd while the waiter runs
	killedAfterGrace bool
	status           runtime.ExitStatus
	isRemoved        bool
	cleaned          bool
	isDetached       bool
	waiterDone       chan struct{} // closed when the waiter goroutine ends; nil before Start
	spawn            *spawned      // the shim Prepare started, until Start lets it go or Remove dismisses it
}

var (
	_ runtime.Controller       = (*Controller)(nil)
	_ runtime.LogStreamer      = (*Controller)(nil)
	_ runtime.EndpointReporter = (*Controller)(nil)
	_ runtime.Execer           = (*Controller)(nil)
	_ runtime.Detacher         = (*Controller)(nil)
)

// preparedRecord is what Prepare found, kept in the container's directory
// so a restored controller knows it too.
type preparedRecord struct {
	ImageDigest string            `json:"image_digest"`
	Rootfs      string            `json:"rootfs"`
	UID         uint32            `json:"uid"`
	GID         uint32            `json:"gid"`
	Addr        string            `json:"addr,omitempty"` // the container's address, "" with host networking
	StopSignal  string            `json:"stop_signal"`
	Image       image.ImageConfig `json:"image"`
}

// Files of a container directory that the runtime itself writes (the
// shim package names the others).
const (
	fileTask     = "task.json"     // the runtime.Task, without credentials
	filePrepared = "prepared.json" // what Prepare found
)

func newController(r *Runtime, t runtime.Task) *Controller {
	return &Controller{
		rt:       r,
		task:     t,
		log:      r.log.With("task.id", t.ID, "service.name", t.ServiceName),
		dir:      r.containerDir(t.ID),
		grace:    t.Spec.EffectiveStopGracePeriod(),
		exited:   make(chan struct{}),
		removed:  make(chan struct{}),
		detached: make(chan struct{}),
	}
}

// Task returns the task this controller runs.
func (c *Controller) Task() runtime.Task { return c.task }

// Dir returns the container's directory (bundle, logs, the shim's records).
func (c *Controller) Dir() string { return c.dir }

// Pid returns the PID of the container's init process on the node, or 0
// before Start.
func (c *Controller) Pid() int {
	pid, _ := c.rt.ContainerPid(c.task.ID)
	return pid
}

// Start starts the container's shim, which runs the container under runc
// and stays its parent, and returns once runc started it.
func (c *Controller) Start(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	switch {
	case c.isRemoved:
		c.mu.Unlock()
		return fmt.Errorf("runc: start task %s: %w", c.task.ID, runtime.ErrAlreadyRemoved)
	case c.started:
		c.mu.Unlock()
		return nil
	case c.shutdownReq:
		c.mu.Unlock()
		return fmt.Errorf("runc: start task %s: %w", c.task.ID, runtime.ErrShutdown)
	case !c.prepared:
		c.mu.Unlock()
		return fmt.Errorf("runc: start task %s: %w", c.task.ID, runtime.ErrNotPrepared)
	}
	// Held across the start: Shutdown waits for it, so a container is never
	// left running by a Shutdown that raced its start.
	defer c.mu.Unlock()
	sp := c.spawn
	c.spawn = nil
	if sp == nil {
		// Prepared by an earlier Start that failed, or restored: a new shim.
		var err error
		if sp, err = c.spawnShim(); err != nil {
			return fmt.Errorf("runc: start task %s: %w", c.task.ID, err)
		}
	}
	pidfd, err := c.startShim(ctx, sp)
	if err != nil {
		return fmt.Errorf("runc: start task %s: %w", c.task.ID, err)
	}
	c.started = true
	c.endpoints = c.endpointsFor(c.prep.Addr)
	c.startWaiter(pidfd)
	c.log.Debug("container started", "pid", c.Pid())
	return nil
}

// Wait blocks until the container exits and returns its ExitStatus.
func (c *Controller) Wait(ctx context.Context) (runtime.ExitStatus, error) {
	c.mu.Lock()
	started := c.started
	c.mu.Unlock()
	if !started {
		return runtime.ExitStatus{}, fmt.Errorf("runc: wait for task %s: %w", c.task.ID, runtime.ErrNotStarted)
	}
	select {
	case <-c.exited:
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.status, nil
	case <-c.detached:
		return runtime.ExitStatus{}, fmt.Errorf("runc: wait for task %s: the controller was detached", c.task.ID)
	case <-ctx.Done():
		return runtime.ExitStatus{}, ctx.Err()
	}
}

// Shutdown sends the stop signal (Spec.StopSignal, else the image's
// STOPSIGNAL, else SIGTERM) to the container's init, waits the grace
// period, then kills it.
func (c *Controller) Shutdown(ctx context.Context) error {
	c.mu.Lock()
	if c.isDetached {
		c.mu.Unlock()
		return nil
	}
	if !c.started {
		c.shutdownReq = true
		c.mu.Unlock()
		return nil
	}
	sig := c.prep.StopSignal
	c.mu.Unlock()
	select {
	case <-c.exited:
		return nil
	default:
	}
	if sig == "" {
		sig = runtime.DefaultStopSignal
	}
	s, _ := runtime.ParseSignal(sig)
	if _, err := c.rt.runcCmd(ctx, "kill", c.task.ID, fmt.Sprint(int(s))); err != nil && !c.hasExited() {
		c.log.Debug("stop signal not delivered", "err", err)
	}
	t := time.NewTimer(c.grace)
	defer t.Stop()
	select {
	case <-c.exited:
		return nil
	case <-ctx.Done():
		c.kill()
		return ctx.Err()
	case <-t.C:
	}
	c.mu.Lock()
	c.killedAfterGrace = true
	c.mu.Unlock()
	c.kill()
	select {
	case <-c.exited:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *Controller) kill() {
	if _, err := c.rt.runcCmd(context.Background(), "kill", c.task.ID, "KILL"); err != nil && !c.hasExited() {
		c.log.Warn("killing the container failed", "err", err)
	}
}

func (c *Controller) hasExited() bool { return isClosed(c.exited) }

// Remove kills the container if it runs, deletes it from runc, unmounts its
// root filesystem, detaches it from the bridge and deletes its directory
// (its logs move to Dir/logs/<taskID> with Config.KeepLogs).
func (c *Controller) Remove(ctx context.Context) error {
	c.mu.Lock()
	if c.isDetached {
		c.mu.Unlock()
		return nil
	}
	if !c.isRemoved {
		c.isRemoved = true
		close(c.removed)
	}
	if c.cleaned {
		c.mu.Unlock()
		return nil
	}
	started := c.started
	sp := c.spawn
	c.spawn = nil
	c.mu.Unlock()
	if sp != nil {
		sp.dismiss() // prepared, never started
	}
	if started && !c.hasExited() {
		c.kill()
		select {
		case <-c.exited:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	c.mu.Lock()
	waiter := c.waiterDone
	c.mu.Unlock()
	if waiter != nil {
		select {
		case <-waiter:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if _, err := c.rt.runcCmd(ctx, "delete", "--force", c.task.ID); err != nil && !notExist(err) {
		return fmt.Errorf("runc: remove task %s: %w", c.task.ID, err)
	}
	if err := c.rt.images.Unmount(ctx, c.task.ID); err != nil {
		return fmt.Errorf("runc: remove task %s: %w", c.task.ID, err)
	}
	if c.rt.bridge != nil {
		if err := c.rt.bridge.Detach(ctx, c.task.ID); err != nil {
			return fmt.Errorf("runc: remove task %s: %w", c.task.ID, err)
		}
	}
	if c.rt.cfg.KeepLogs {
		keep := filepath.Join(c.rt.cfg.Dir, "logs", c.task.ID)
		if err := os.MkdirAll(filepath.Dir(keep), 0o700); err == nil {
			_ = os.RemoveAll(keep)
			_ = os.Rename(filepath.Join(c.dir, shim.DirLogs), keep)
		}
	}
	if err := os.RemoveAll(c.dir); err != nil {
		return fmt.Errorf("runc: remove task %s: %w", c.task.ID, err)
	}
	c.mu.Lock()
	c.cleaned = true
	c.mu.Unlock()
	c.rt.forget(c)
	return nil
}

// notExist reports whether runc said the container does not exist.
func notExist(err error) bool {
	return strings.Contains(err.Error(), "does not exist") || strings.Contains(err.Error(), "not exist")
}

// Detach lets go of the container without stopping it: the waiter ends,
// the runtime forgets the controller, and a later Restore (by this or
// another Runtime on the same Dir) adopts the container again. Shutdown
// and Remove of a detached controller do nothing: the container belongs to
// whoever restores it.
func (c *Controller) Detach() error {
	c.mu.Lock()
	if c.isDetached {
		c.mu.Unlock()
		return nil
	}
	c.isDetached = true
	close(c.detached)
	waiter := c.waiterDone
	sp := c.spawn
	c.spawn = nil
	c.mu.Unlock()
	if sp != nil {
		sp.dismiss() // prepared, never started: nothing to hand over
	}
	if waiter != nil {
		<-waiter
	}
	c.rt.forget(c)
	return nil
}

// Endpoints returns where each Spec.Ports entry is reachable: the
// container's address and the target port, or the node's (unspecified
// address) with host networking.
func (c *Controller) Endpoints() []runtime.Endpoint {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]runtime.Endpoint(nil), c.endpoints...)
}

func (c *Controller) endpointsFor(addr string) []runtime.Endpoint {
	if len(c.task.Spec.Ports) == 0 {
		return nil
	}
	ip := netip.IPv4Unspecified()
	if a, err := netip.ParseAddr(addr); err == nil {
		ip = a
	}
	out := make([]runtime.Endpoint, len(c.task.Spec.Ports))
	for i, p := range c.task.Spec.Ports {
		out[i] = runtime.Endpoint{Target: p.Target, Protocol: p.EffectiveProtocol(), Addr: netip.AddrPortFrom(ip, p.Target)}
	}
	return out
}

// Logs returns a reader of the container's rotated log files; see
// runtime.LogStreamer.
func (c *Controller) Logs(ctx context.Context, opts runtime.LogOptions) (io.ReadCloser, error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("runc: logs of task %s: %w", c.task.ID, err)
	}
	c.mu.Lock()
	removed, prepared := c.isRemoved, c.prepared
	c.mu.Unlock()
	switch {
	case removed:
		return nil, fmt.Errorf("runc: logs of task %s: %w", c.task.ID, runtime.ErrAlreadyRemoved)
	case !prepared:
		return nil, fmt.Errorf("runc: logs of task %s: %w", c.task.ID, runtime.ErrNotPrepared)
	}
	var srcs []logread.Source
	for _, s := range streams(opts) {
		p := filepath.Join(c.dir, shim.DirLogs, s+".log")
		var ls *logStream
		err := ensureFile(p)
		if err == nil {
			ls, err = openLogStream(p, c.rt.cfg.LogMaxFiles)
		}
		if err != nil {
			for _, src := range srcs {
				_ = src.Close()
			}
			return nil, fmt.Errorf("runc: logs of task %s: %w", c.task.ID, err)
		}
		srcs = append(srcs, ls)
	}
	return logread.New(ctx, srcs, opts.Follow, c.rt.cfg.LogPollInterval, c.exited, c.removed), nil
}

// ensureFile creates an empty log file if the shim has not yet.
func ensureFile(p string) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	return f.Close()
}

// Exec runs req inside the started container with runc exec; see
// runtime.Execer.
func (c *Controller) Exec(ctx context.Context, req runtime.ExecRequest) (int, error) {
	if len(req.Command) == 0 {
		return 0, fmt.Errorf("runc: exec in task %s: ExecRequest.Command: must not be empty", c.task.ID)
	}
	c.mu.Lock()
	started, rec := c.started, c.prep
	c.mu.Unlock()
	if !started {
		return 0, fmt.Errorf("runc: exec in task %s: %w", c.task.ID, runtime.ErrNotStarted)
	}
	if c.hasExited() {
		return 0, fmt.Errorf("runc: exec in task %s: the container has exited", c.task.ID)
	}
	uid, gid := rec.UID, rec.GID
	if req.User != "" {
		u, err := image.LookupUser(rec.Rootfs, req.User)
		if err != nil {
			return 0, fmt.Errorf("runc: exec in task %s: ExecRequest.User: %w", c.task.ID, err)
		}
		uid, gid = u.UID, u.GID
	}
	args := []string{"--root", c.rt.root, "exec", "--user", fmt.Sprintf("%d:%d", uid, gid)}
	if req.Dir != "" {
		args = append(args, "--cwd", req.Dir)
	}
	for _, e := range req.Env {
		args = append(args, "--env", e)
	}
	args = append(args, c.task.ID)
	args = append(args, req.Command...)
	cmd := exec.CommandContext(ctx, c.rt.runc, args...)
	cmd.Stdout, cmd.Stderr = req.Stdout, req.Stderr
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, nil
	case ctx.Err() != nil:
		return 0, ctx.Err()
	case errors.As(err, &ee) && ee.ExitCode() >= 0:
		return ee.ExitCode(), nil
	}
	return 0, fmt.Errorf("runc: exec in task %s: %w", c.task.ID, err)
}

// restore adopts the container of an earlier run from its directory. It
// returns false when the container never started (nothing to adopt).
func (c *Controller) restore(ctx context.Context) (bool, error) {
	var rec preparedRecord
	if err := shim.ReadJSON(filepath.Join(c.dir, filePrepared), &rec); err != nil {
		return false, nil
	}
	if _, err := os.Stat(filepath.Join(c.dir, shim.FileStarted)); err != nil {
		return false, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.prepared, c.prep, c.started = true, rec, true
	c.endpoints = c.endpointsFor(rec.Addr)
	pidfd, err := openShim(c.dir)
	if err != nil {
		// The shim is gone: the exit record says how the container ended,
		// or its absence that the shim died with it unsupervised.
		c.status = c.readExit()
		close(c.exited)
		return true, nil
	}
	c.startWaiter(pidfd)
	return true, nil
}
