package runc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/moby/profiles/seccomp"

	"github.com/shoalhq/shoal/runtime"
	"github.com/shoalhq/shoal/runtime/image"
	"github.com/shoalhq/shoal/runtime/network"
	"github.com/shoalhq/shoal/runtime/runc/shim"
)

// MinRuncVersion is the oldest runc this runtime drives: 1.1 has every
// command and flag it uses (run --detach with a pid file, kill, delete
// --force, exec, state) and cgroup v1 and v2.
const MinRuncVersion = "1.1.0"

// Runtime runs tasks as OCI containers under runc. It is safe for
// concurrent use. Create it with New; Close releases it.
type Runtime struct {
	cfg      Config
	runc     string // absolute path of the runc binary
	version  string
	shim     string // absolute path of the shim program
	initPath string // "" when the node has no init binary
	root     string // runc --root
	images   *image.Store
	ownStore bool // images was made by New, closed by Close
	bridge   *network.Bridge
	log      *slog.Logger

	setupMu sync.Mutex
	setUp   bool // the bridge is set up and leases loaded (guarded by setupMu)

	mu    sync.Mutex
	tasks map[string]*Controller // live (not removed, not detached) controllers by task ID
}

var (
	_ runtime.Runtime  = (*Runtime)(nil)
	_ runtime.Restorer = (*Runtime)(nil)
)

var runcVersion = regexp.MustCompile(`(?m)^runc version (\d+)\.(\d+)\.(\d+)`)

// New validates cfg, checks that runc exists and is recent enough, and
// returns a Runtime. It starts no container and sets up no network: the
// bridge is created by the first Prepare. Errors say what is missing.
func New(cfg Config) (*Runtime, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("runc: Config.Dir: %w", err)
	}
	cfg.Dir = dir
	bin, err := exec.LookPath(cfg.Runc)
	if err != nil {
		return nil, fmt.Errorf("runc: the runc binary %q was not found (install Debian's runc package, or set Config.Runc to its path): %w", cfg.Runc, err)
	}
	if bin, err = filepath.Abs(bin); err != nil {
		return nil, fmt.Errorf("runc: Config.Runc: %w", err)
	}
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return nil, fmt.Errorf("runc: %s --version failed: %w", bin, err)
	}
	m := runcVersion.FindStringSubmatch(string(out))
	if m == nil {
		return nil, fmt.Errorf("runc: %s --version printed no version: %q", bin, strings.TrimSpace(string(out)))
	}
	version := m[1] + "." + m[2] + "." + m[3]
	if !atLeast(m[1:], strings.Split(MinRuncVersion, ".")) {
		return nil, fmt.Errorf("runc: %s is runc %s; this runtime needs %s or later", bin, version, MinRuncVersion)
	}
	shim := cfg.ShimPath
	if shim == "" {
		if shim, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("runc: this program's executable (the shim): %w", err)
		}
	}
	initPath := cfg.InitPath
	if initPath == "" {
		for _, name := range []string{"docker-init", "tini-static"} {
			if p, err := exec.LookPath(name); err == nil {
				initPath = p
				break
			}
		}
	} else if _, err := os.Stat(initPath); err != nil {
		return nil, fmt.Errorf("runc: Config.InitPath: %w", err)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	store, own := cfg.ImageStore, false
	if store == nil {
		icfg := cfg.Images
		if icfg.Dir == "" {
			icfg.Dir = filepath.Join(dir, "images")
		}
		if icfg.Logger == nil {
			icfg.Logger = logger
		}
		if store, err = image.New(icfg); err != nil {
			return nil, fmt.Errorf("runc: Config.Images: %w", err)
		}
		own = true
	}
	var bridge *network.Bridge
	if !cfg.DisableNetwork {
		ncfg := cfg.Network
		if ncfg.StateDir == "" {
			ncfg.StateDir = filepath.Join(dir, "network")
		}
		if ncfg.Logger == nil {
			ncfg.Logger = logger
		}
		if bridge, err = network.New(ncfg); err != nil {
			if own {
				_ = store.Close()
			}
			return nil, fmt.Errorf("runc: Config.Network: %w", err)
		}
	}
	if cfg.LogPollInterval == 0 {
		cfg.LogPollInterval = DefaultConfig().LogPollInterval
	}
	if cfg.LogMaxFiles == 0 {
		cfg.LogMaxFiles = 1
	}
	return &Runtime{
		cfg:      cfg,
		runc:     bin,
		version:  version,
		shim:     shim,
		initPath: initPath,
		root:     filepath.Join(dir, "runc"),
		images:   store,
		ownStore: own,
		bridge:   bridge,
		log:      logger,
		tasks:    make(map[string]*Controller),
	}, nil
}

func atLeast(have, want []string) bool {
	for i := range want {
		h, _ := strconv.Atoi(have[i])
		w, _ := strconv.Atoi(want[i])
		if h != w {
			return h > w
		}
	}
	return true
}

// Version returns the version of the runc binary in use.
func (r *Runtime) Version() string { return r.version }

// Images returns the runtime's image store, for a host program that
// preloads images (Store.LoadTarball) or inspects them.
func (r *Runtime) Images() *image.Store { return r.images }

// Bridge returns the node's bridge, nil with Config.DisableNetwork.
func (r *Runtime) Bridge() *network.Bridge { return r.bridge }

// Close releases the bridge (leaving it and its attachments in the kernel
// for the next run) and the image store if New made it (ending its garbage
// collection, which the first Prepare starts). Containers keep running:
// they belong to their shims (see the package documentation).
func (r *Runtime) Close() error {
	var errs []error
	if r.bridge != nil {
		errs = append(errs, r.bridge.Close())
	}
	if r.ownStore {
		errs = append(errs, r.images.Close())
	}
	return errors.Join(errs...)
}

// containerDir is Dir/containers/<taskID>.
func (r *Runtime) containerDir(id string) string { return filepath.Join(r.cfg.Dir, "containers", id) }

// volumeDir is the directory of a named volume.
func (r *Runtime) volumeDir(name string) string {
	return filepath.Join(r.cfg.Dir, "volumes", name, "_data")
}

// setup creates the bridge (and loads its leases) once; a failure is
// retried by the next caller.
func (r *Runtime) setup(ctx context.Context) error {
	r.setupMu.Lock()
	defer r.setupMu.Unlock()
	if r.setUp {
		return nil
	}
	for _, d := range []string{filepath.Join(r.cfg.Dir, "containers"), r.root} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("runc: %w", err)
		}
	}
	if r.bridge != nil {
		if err := r.bridge.Setup(ctx); err != nil {
			return fmt.Errorf("runc: setting up the bridge: %w", err)
		}
	}
	if r.ownStore {
		// The store's garbage collection runs until Close.
		if err := r.images.Start(context.Background()); err != nil {
			return fmt.Errorf("runc: starting the image store: %w", err)
		}
	}
	r.setUp = true
	return nil
}

// Controller returns the controller of task t, validating it first (errors
// wrap runtime.ErrInvalidTask). It starts nothing and does no I/O. While a
// controller for t.ID exists and has not been removed or detached, the same
// controller is returned.
func (r *Runtime) Controller(t runtime.Task) (runtime.Controller, error) {
	if err := r.check(t); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if c, ok := r.tasks[t.ID]; ok {
		return c, nil
	}
	c := newController(r, t)
	r.tasks[t.ID] = c
	return c, nil
}

var taskIDRule = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$`)

// check validates t and refuses what this runtime cannot honour.
func (r *Runtime) check(t runtime.Task) error {
	if !taskIDRule.MatchString(t.ID) {
		return fmt.Errorf("%w: Task.ID: must be 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit, got %q", runtime.ErrInvalidTask, t.ID)
	}
	if err := t.Validate(); err != nil {
		return err
	}
	s := t.Spec
	if s.Image == "" {
		return fmt.Errorf("%w: Spec.Image: the runc runtime runs containers: an image is required", runtime.ErrInvalidTask)
	}
	if _, err := name.ParseReference(s.Image); err != nil {
		return fmt.Errorf("%w: Spec.Image: %w", runtime.ErrInvalidTask, err)
	}
	if !s.HostNetwork && r.bridge == nil {
		return fmt.Errorf("%w: Spec.HostNetwork: this runtime has no bridge (Config.DisableNetwork), so tasks must use host networking", runtime.ErrInvalidTask)
	}
	if s.HostNetwork {
		for i, p := range s.Ports {
			if p.HostPort != 0 && p.HostPort != p.Target {
				return fmt.Errorf("%w: Spec.Ports[%d].HostPort: with host networking a container listens on the node's ports, so HostPort must be 0 or the target %d", runtime.ErrInvalidTask, i, p.Target)
			}
		}
	}
	if s.Init && r.initPath == "" {
		return fmt.Errorf("%w: Spec.Init: this node has no init binary: install tini (Debian's tini package provides tini-static) or set runc.Config.InitPath", runtime.ErrInvalidTask)
	}
	return nil
}

// forget drops c from the live controllers.
func (r *Runtime) forget(c *Controller) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.tasks[c.task.ID] == c {
		delete(r.tasks, c.task.ID)
	}
}

// Restorable lists the tasks whose containers this runtime's Dir still
// holds from an earlier run, sorted.
func (r *Runtime) Restorable(ctx context.Context) ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(r.cfg.Dir, "containers"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("runc: %w", err)
	}
	var ids []string
	for _, e := range ents {
		if e.IsDir() && taskIDRule.MatchString(e.Name()) {
			ids = append(ids, e.Name())
		}
	}
	sort.Strings(ids)
	return ids, nil
}

// Restore returns the controller of t's container if this runtime's Dir
// holds it from an earlier run (see runtime.Restorer): a container that
// runs is re-adopted, one that exited meanwhile reports its exit status,
// and one that never started is cleaned up (ok false).
func (r *Runtime) Restore(ctx context.Context, t runtime.Task) (runtime.Controller, bool, error) {
	if err := r.check(t); err != nil {
		return nil, false, err
	}
	if _, err := os.Stat(r.containerDir(t.ID)); errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if err := r.setup(ctx); err != nil {
		return nil, false, err
	}
	r.mu.Lock()
	if c, ok := r.tasks[t.ID]; ok {
		r.mu.Unlock()
		return c, true, nil
	}
	c := newController(r, t)
	r.tasks[t.ID] = c
	r.mu.Unlock()
	ok, err := c.restore(ctx)
	if err != nil || !ok {
		if rerr := c.Remove(ctx); rerr != nil {
			r.log.Warn("cleaning up a container that cannot be restored", "task", t.ID, "err", rerr)
		}
		return nil, false, err
	}
	return c, true, nil
}

// seccompProfile is docker's default profile for the spec's capabilities.
func (r *Runtime) seccompProfile() func(*specs.Spec) (*specs.LinuxSeccomp, error) {
	if r.cfg.DisableSeccomp {
		return nil
	}
	return seccomp.GetDefaultProfile
}

// runcCmd runs runc with the runtime's root and returns its combined
// output on failure in the error.
func (r *Runtime) runcCmd(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, r.runc, append([]string{"--root", r.root}, args...)...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("runc %s: %w: %s", args[0], err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// Discard stops and removes the container of an earlier run that the agent
// no longer has (see runtime.Restorer), with the task it was started as.
func (r *Runtime) Discard(ctx context.Context, taskID string) error {
	if !taskIDRule.MatchString(taskID) {
		return nil
	}
	var t runtime.Task
	if err := shim.ReadJSON(filepath.Join(r.containerDir(taskID), fileTask), &t); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			// Never prepared far enough to record its task: only the
			// directory (and maybe runc's record) is left.
			_, _ = r.runcCmd(ctx, "delete", "--force", taskID)
			return os.RemoveAll(r.containerDir(taskID))
		}
		return fmt.Errorf("runc: discard task %s: %w", taskID, err)
	}
	t.ID = taskID
	ctl, ok, err := r.Restore(ctx, t)
	if err != nil || !ok {
		return err
	}
	if err := ctl.Shutdown(ctx); err != nil {
		return err
	}
	return ctl.Remove(ctx)
}

// LogPath returns the path of a container's current log file for stream
// (runtime.StreamStdout or runtime.StreamStderr), whether or not it exists;
// rotated files are LogPath + ".1", ".2", ...
func (r *Runtime) LogPath(taskID, stream string) string {
	return filepath.Join(r.containerDir(taskID), shim.DirLogs, stream+".log")
}

// CgroupPath returns a container's cgroup relative to the cgroup roots.
func (r *Runtime) CgroupPath(taskID string) string {
	return "/" + r.cfg.CgroupParent + "/" + taskID
}

// VolumePath returns the directory of a named volume on this node.
func (r *Runtime) VolumePath(name string) string { return r.volumeDir(name) }

// ContainerPid returns the PID on the node of a started container's init
// process, from the container's records.
func (r *Runtime) ContainerPid(taskID string) (int, error) {
	var rec shim.Started
	if err := shim.ReadJSON(filepath.Join(r.containerDir(taskID), shim.FileStarted), &rec); err != nil {
		return 0, fmt.Errorf("runc: task %s: %w", taskID, err)
	}
	return rec.Pid, nil
}
