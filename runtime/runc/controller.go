package runc

import (
	"context"
	"encoding/json"
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

	"golang.org/x/sys/unix"

	"github.com/shoalhq/shoal/runtime"
	"github.com/shoalhq/shoal/runtime/image"
	"github.com/shoalhq/shoal/runtime/internal/logread"
	"github.com/shoalhq/shoal/runtime/network"
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

// Prepare pulls the image (errors a registry gives for an image that cannot
// be pulled wrap runtime.ErrInvalidTask: unauthorized, not found, a digest
// that does not match, no manifest for the node's platform), mounts the
// container's root filesystem, resolves its user, attaches it to the
// node's bridge, creates its volumes and writes its OCI bundle.
func (c *Controller) Prepare(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.prepareMu.Lock()
	defer c.prepareMu.Unlock()
	c.mu.Lock()
	removed, prepared := c.isRemoved, c.prepared
	c.mu.Unlock()
	switch {
	case removed:
		return fmt.Errorf("runc: prepare task %s: %w", c.task.ID, runtime.ErrAlreadyRemoved)
	case prepared:
		return nil
	}
	rec, sp, err := c.prepare(ctx)
	if err != nil {
		if sp != nil {
			sp.dismiss()
		}
		return fmt.Errorf("runc: prepare task %s: %w", c.task.ID, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.isRemoved {
		sp.dismiss()
		return fmt.Errorf("runc: prepare task %s: %w", c.task.ID, runtime.ErrAlreadyRemoved)
	}
	c.prepared, c.prep, c.spawn = true, rec, sp
	c.log.Debug("container prepared", "image", rec.ImageDigest, "rootfs", rec.Rootfs)
	return nil
}

func (c *Controller) prepare(ctx context.Context) (preparedRecord, *spawned, error) {
	rec, err := c.prepareFiles(ctx)
	if err != nil {
		return rec, nil, err
	}
	// The shim starts (and initializes) while the rest is prepared.
	sp, err := c.spawnShim()
	if err != nil {
		return rec, nil, err
	}
	rec, err = c.prepareContainer(ctx, rec)
	return rec, sp, err
}

// prepareFiles creates the container's directory and its task record.
func (c *Controller) prepareFiles(ctx context.Context) (preparedRecord, error) {
	var rec preparedRecord
	if err := c.rt.setup(ctx); err != nil {
		return rec, err
	}
	if err := os.MkdirAll(filepath.Join(c.dir, shim.DirBundle), 0o700); err != nil {
		return rec, err
	}
	stored := c.task
	stored.Spec.RegistryAuth = runtime.RegistryAuth{} // credentials never reach the disk
	if err := shim.WriteJSONAtomic(filepath.Join(c.dir, fileTask), stored); err != nil {
		return rec, err
	}
	return rec, nil
}

// prepareContainer pulls, mounts, attaches and writes the bundle.
func (c *Controller) prepareContainer(ctx context.Context, rec preparedRecord) (preparedRecord, error) {
	s := c.task.Spec
	img, err := c.rt.images.Pull(ctx, s.Image, s.RegistryAuth)
	if err != nil && ctx.Err() == nil {
		// The store may have the image already (pulled before, or loaded
		// from a layout or a tarball): run that one, as docker does when a
		// pull fails.
		if local, lerr := c.rt.images.Get(s.Image); lerr == nil {
			c.log.Warn("pulling the image failed; running the copy the node has", "image", s.Image, "digest", local.Digest, "err", err)
			img, err = local, nil
		}
	}
	if err != nil {
		if pullRefused(err) {
			return rec, fmt.Errorf("%w: pulling %s: %w", runtime.ErrInvalidTask, s.Image, err)
		}
		return rec, fmt.Errorf("pulling %s: %w", s.Image, err)
	}
	rec.ImageDigest, rec.Image = img.Digest, img.Config
	// The network namespace is made while the root filesystem is mounted:
	// neither needs the other.
	type attached struct {
		att *network.Attachment
		err error
	}
	attachCh := make(chan attached, 1)
	if s.HostNetwork {
		attachCh <- attached{}
	} else {
		go func() {
			att, err := c.rt.bridge.Attach(ctx, c.task.ID)
			attachCh <- attached{att, err}
		}()
	}
	rootfs, err := c.rt.images.Mount(ctx, img.Digest, c.task.ID)
	atr := <-attachCh
	if err != nil {
		return rec, fmt.Errorf("mounting the root filesystem: %w", err)
	}
	rec.Rootfs = rootfs
	userSpec := s.User
	if userSpec == "" {
		userSpec = img.Config.User
	}
	u, err := image.LookupUser(rootfs, userSpec)
	if err != nil {
		return rec, fmt.Errorf("%w: Spec.User: %w", runtime.ErrInvalidTask, err)
	}
	rec.UID, rec.GID = u.UID, u.GID
	rec.StopSignal = s.StopSignal
	if rec.StopSignal == "" && img.Config.StopSignal != "" {
		if _, err := runtime.ParseSignal(img.Config.StopSignal); err == nil {
			rec.StopSignal = img.Config.StopSignal
		}
	}
	hostname := s.Hostname
	if hostname == "" {
		hostname = c.task.ID
		if len(hostname) > 12 {
			hostname = hostname[:12]
		}
	}
	att := atr.att
	if atr.err != nil {
		return rec, fmt.Errorf("attaching to the node's bridge: %w", atr.err)
	}
	if att != nil {
		rec.Addr = att.Addr.String()
		var maps []network.PortMapping
		for _, p := range s.Ports {
			if p.HostPort != 0 {
				maps = append(maps, network.PortMapping{HostPort: p.HostPort, Target: p.Target, Protocol: p.EffectiveProtocol()})
			}
		}
		if len(maps) > 0 {
			if err := c.rt.bridge.Publish(ctx, c.task.ID, maps); err != nil {
				return rec, fmt.Errorf("publishing host ports: %w", err)
			}
		}
	}
	volumes := make(map[string]string)
	for _, m := range s.Mounts {
		switch m.Type {
		case runtime.MountVolume:
			d := c.rt.volumeDir(m.Source)
			if err := os.MkdirAll(d, 0o755); err != nil {
				return rec, fmt.Errorf("volume %q: %w", m.Source, err)
			}
			volumes[m.Source] = d
		case runtime.MountBind:
			if _, err := os.Stat(m.Source); err != nil {
				return rec, fmt.Errorf("%w: bind mount source: %w", runtime.ErrInvalidTask, err)
			}
		}
	}
	files, err := c.writeEtcFiles(hostname, att)
	if err != nil {
		return rec, err
	}
	in := bundleInput{
		Task:         c.task,
		Image:        imageConfig{Entrypoint: img.Config.Entrypoint, Cmd: img.Config.Cmd, Env: img.Config.Env, WorkingDir: img.Config.WorkingDir},
		Rootfs:       rootfs,
		User:         resolvedUser{UID: u.UID, GID: u.GID, AdditionalGIDs: u.AdditionalGIDs, Home: u.Home},
		Hostname:     hostname,
		HostsFile:    files[0],
		HostnameFile: files[1],
		ResolvConf:   files[2],
		InitPath:     c.rt.initPath,
		VolumePaths:  volumes,
		CgroupsPath:  c.rt.CgroupPath(c.task.ID),
		Seccomp:      c.rt.seccompProfile(),
	}
	if att != nil {
		in.NetnsPath = att.NetnsPath
	}
	spec, err := buildSpec(in)
	if err != nil {
		return rec, err
	}
	b, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return rec, err
	}
	if err := os.WriteFile(filepath.Join(c.dir, shim.DirBundle, "config.json"), b, 0o600); err != nil {
		return rec, err
	}
	if err := shim.WriteJSONAtomic(filepath.Join(c.dir, filePrepared), rec); err != nil {
		return rec, err
	}
	return rec, nil
}

// pullRefused reports whether a pull failed for a reason that retrying the
// same spec on this node will not fix.
func pullRefused(err error) bool {
	for _, e := range []error{image.ErrUnauthorized, image.ErrNotFound, image.ErrDigestMismatch, image.ErrNoPlatform, image.ErrUnsafeLayer} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// writeEtcFiles writes the container's /etc/hosts, /etc/hostname and
// /etc/resolv.conf into its directory. With host networking the node's
// hosts and resolv.conf are used as they are.
func (c *Controller) writeEtcFiles(hostname string, att *network.Attachment) ([3]string, error) {
	var out [3]string
	hosts := "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
	if att != nil {
		hosts += att.Addr.String() + "\t" + hostname + "\n"
	} else {
		hosts += "127.0.1.1\t" + hostname + "\n"
	}
	resolv, err := containerResolvConf(att == nil)
	if err != nil {
		return out, err
	}
	for i, f := range []struct{ name, content string }{
		{"hosts", hosts}, {"hostname", hostname + "\n"}, {"resolv.conf", resolv},
	} {
		// Written in place: until prepared.json is, the container's
		// directory is not a prepared container, whatever it holds.
		p := filepath.Join(c.dir, f.name)
		if err := os.WriteFile(p, []byte(f.content), 0o644); err != nil {
			return out, err
		}
		out[i] = p
	}
	return out, nil
}

// containerResolvConf is the node's resolv.conf, with nameservers on
// loopback dropped in a container of its own network (they are not
// reachable from there: docker does the same) and Google's public servers
// used when none is left.
func containerResolvConf(hostNetwork bool) (string, error) {
	b, err := os.ReadFile("/etc/resolv.conf")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	if hostNetwork {
		return string(b), nil
	}
	var lines []string
	servers := 0
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && f[0] == "nameserver" {
			if a, err := netip.ParseAddr(f[1]); err == nil && a.IsLoopback() {
				continue
			}
			servers++
		}
		if strings.TrimSpace(l) != "" {
			lines = append(lines, l)
		}
	}
	if servers == 0 {
		lines = append(lines, "nameserver 8.8.8.8", "nameserver 8.8.4.4")
	}
	return strings.Join(lines, "\n") + "\n", nil
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

// spawned is a shim started by Prepare, waiting for Start's go.
type spawned struct {
	pidfd  *os.File // the shim's pidfd
	goW    *os.File // a byte lets the shim start the container; closing it without one sends it away
	notify *os.File // reaches EOF once the shim decided the start, or died
}

// spawnShim starts the container's shim, which waits for a byte on its go
// pipe: its start overlaps the rest of Prepare. Called by prepare.
func (c *Controller) spawnShim() (*spawned, error) {
	for _, f := range []string{shim.FileStarted, shim.FileStartError, shim.FileExit, shim.FilePid} {
		_ = os.Remove(filepath.Join(c.dir, f))
	}
	cfg := shim.Config{Runc: c.rt.runc, Root: c.rt.root, ID: c.task.ID, LogMax: c.rt.cfg.LogMaxBytes, LogFiles: c.rt.cfg.LogMaxFiles}
	if err := shim.WriteJSONAtomic(filepath.Join(c.dir, shim.FileConfig), cfg); err != nil {
		return nil, err
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, err
	}
	defer devnull.Close()
	shimLog, err := os.OpenFile(filepath.Join(c.dir, shim.FileLog), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer shimLog.Close()
	env := []string{shim.Env + "=" + c.dir}
	if p, ok := os.LookupEnv("PATH"); ok {
		env = append(env, "PATH="+p)
	}
	notifyR, notifyW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	goR, goW, err := os.Pipe()
	if err != nil {
		notifyR.Close()
		notifyW.Close()
		return nil, err
	}
	proc, err := os.StartProcess(c.rt.shim, []string{c.rt.shim}, &os.ProcAttr{
		Dir:   "/",
		Env:   env,
		Files: []*os.File{devnull, shimLog, shimLog, notifyW, goR},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
	notifyW.Close()
	goR.Close()
	if err != nil {
		notifyR.Close()
		goW.Close()
		return nil, fmt.Errorf("starting the shim %s: %w", c.rt.shim, err)
	}
	// The shim is an unreaped child: its PID cannot be reused before the
	// pidfd is open.
	fd, err := unix.PidfdOpen(proc.Pid, 0)
	_ = proc.Release()
	if err != nil {
		notifyR.Close()
		goW.Close() // the shim exits without starting anything
		return nil, fmt.Errorf("pidfd of the shim: %w", err)
	}
	return &spawned{pidfd: newPidfd(fd), goW: goW, notify: notifyR}, nil
}

// dismiss sends a spawned shim away without a start and reaps it.
func (sp *spawned) dismiss() {
	sp.goW.Close()
	sp.notify.Close()
	reapWait(sp.pidfd)
	sp.pidfd.Close()
}

// startShim lets the spawned shim start the container and waits until it
// reports that runc started it (or failed to). It returns the shim's pidfd.
func (c *Controller) startShim(ctx context.Context, sp *spawned) (*os.File, error) {
	_, werr := sp.goW.Write([]byte{1})
	sp.goW.Close()
	defer sp.notify.Close()
	pidfd := sp.pidfd
	if werr == nil {
		stop := context.AfterFunc(ctx, func() { _ = sp.notify.SetReadDeadline(time.Now()) })
		_, _ = io.Copy(io.Discard, sp.notify)
		stop()
	}
	if _, err := os.Stat(filepath.Join(c.dir, shim.FileStarted)); err == nil {
		return pidfd, nil
	}
	if msg, err := os.ReadFile(filepath.Join(c.dir, shim.FileStartError)); err == nil {
		reapWait(pidfd)
		pidfd.Close()
		return nil, fmt.Errorf("runc could not start the container: %s", strings.TrimSpace(string(msg)))
	}
	if err := ctx.Err(); err != nil {
		// The shim goes on and the container may start: kill whatever
		// runc made of it, so nothing runs unknown to the agent.
		_, _ = c.rt.runcCmd(context.Background(), "kill", c.task.ID, "KILL")
		pidfd.Close()
		return nil, err
	}
	reapWait(pidfd)
	pidfd.Close()
	b, _ := os.ReadFile(filepath.Join(c.dir, shim.FileLog))
	return nil, fmt.Errorf("the shim exited before the container started: %s", lastLine(string(b)))
}

// reapWait reaps the shim once it exits (it does right after a failed
// start), waiting at most a few seconds.
func reapWait(pidfd *os.File) {
	for range 500 {
		if exitedFd(pidfd) {
			reap(pidfd)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// exitedFd reports whether the process of a pidfd has exited.
func exitedFd(pidfd *os.File) bool {
	fds := []unix.PollFd{{Fd: int32(pidfd.Fd()), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n > 0
}

// reap collects the exit of the pidfd's process if it is this program's
// child (the shim it started); for a shim adopted from an earlier run it
// is a no-op (ECHILD).
func reap(pidfd *os.File) {
	var info unix.Siginfo
	_ = unix.Waitid(unix.P_PIDFD, int(pidfd.Fd()), &info, unix.WEXITED|unix.WNOHANG, nil)
}

// startWaiter watches the shim until it exits, then reads the container's
// exit record. Called with c.mu held.
func (c *Controller) startWaiter(pidfd *os.File) {
	c.pidfd = pidfd
	done := make(chan struct{})
	c.waiterDone = done
	go func() {
		defer close(done)
		c.waitShim(pidfd)
	}()
}

// waitShim blocks until the shim exits (or Detach lets go). The pidfd is
// non-blocking and waited on through Go's poller, so no thread is held per
// container; Detach unblocks the wait by closing it.
func (c *Controller) waitShim(pidfd *os.File) {
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-c.detached:
			_ = pidfd.SetReadDeadline(time.Now())
		case <-stop:
		}
	}()
	waitReadable(pidfd)
	if isClosed(c.detached) {
		pidfd.Close()
		return
	}
	reap(pidfd)
	pidfd.Close()
	st := c.readExit()
	c.mu.Lock()
	if c.killedAfterGrace && st.Signal == "SIGKILL" {
		st.Message = fmt.Sprintf("killed by SIGKILL after %s grace period", c.grace)
	}
	c.status = st
	c.mu.Unlock()
	close(c.exited)
}

// waitReadable waits until the pidfd is readable (its process exited) or
// its read deadline passes.
func waitReadable(pidfd *os.File) {
	rc, err := pidfd.SyscallConn()
	if err == nil {
		err = rc.Read(func(uintptr) bool { return exitedFd(pidfd) })
	}
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, os.ErrClosed) {
		return
	}
	// Not pollable here: look every few milliseconds instead.
	for !exitedFd(pidfd) {
		time.Sleep(20 * time.Millisecond)
	}
}

// readExit reads the shim's exit record. A shim that died without one (it
// was killed) leaves the container unsupervised: it is killed, and the
// status says why.
func (c *Controller) readExit() runtime.ExitStatus {
	var rec shim.Exit
	if err := shim.ReadJSON(filepath.Join(c.dir, shim.FileExit), &rec); err == nil {
		st := runtime.ExitStatus{Code: rec.Code, Signal: rec.Signal}
		st.Message = st.String()
		return st
	}
	_, _ = c.rt.runcCmd(context.Background(), "kill", c.task.ID, "KILL")
	return runtime.ExitStatus{Code: -1, Signal: "SIGKILL", Message: "the container's shim died without recording its exit; the container was killed"}
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

// openShim opens a pidfd of the container's shim if it still runs (the
// same process: its start time matches the record).
func openShim(dir string) (*os.File, error) {
	pid, start, err := shim.ReadPid(dir)
	if err != nil {
		return nil, err
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, err
	}
	f := newPidfd(fd)
	if st, err := shim.ProcessStartTime(pid); err != nil || st != start {
		f.Close()
		return nil, fmt.Errorf("the shim (pid %d) is gone", pid)
	}
	return f, nil
}

// newPidfd wraps a pidfd as a non-blocking file, so Go's poller waits on it.
func newPidfd(fd int) *os.File {
	_ = unix.SetNonblock(fd, true)
	return os.NewFile(uintptr(fd), "shim-pidfd")
}
