package process

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/shoalhq/shoal/runtime"
)

// Runtime runs tasks as host processes. It is safe for concurrent use.
// Create it with New.
type Runtime struct {
	dir      string
	keepLogs bool
	poll     time.Duration
	log      *slog.Logger
	hostEnv  []string // PassEnv values captured by New

	mu    sync.Mutex
	tasks map[string]*Controller // live (not fully removed) controllers by task ID
}

var _ runtime.Runtime = (*Runtime)(nil)

// New validates cfg and returns a Runtime. It starts nothing and creates no
// directory. cfg is not modified.
func New(cfg Config) (*Runtime, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("process: Config.Dir: %w", err)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	poll := cfg.LogPollInterval
	if poll == 0 {
		poll = DefaultConfig().LogPollInterval
	}
	var hostEnv []string
	for _, name := range cfg.PassEnv {
		if v, ok := os.LookupEnv(name); ok {
			hostEnv = append(hostEnv, name+"="+v)
		}
	}
	return &Runtime{
		dir:      dir,
		keepLogs: cfg.KeepLogs,
		poll:     poll,
		log:      logger,
		hostEnv:  hostEnv,
		tasks:    make(map[string]*Controller),
	}, nil
}

// Controller returns the controller of task t, validating it first (errors
// wrap runtime.ErrInvalidTask). It starts nothing and does no I/O. While a
// controller for t.ID exists and has not been removed, the same controller
// is returned, so two callers can never run one task twice; after Remove a
// new controller is made. The returned value is a *Controller.
func (r *Runtime) Controller(t runtime.Task) (runtime.Controller, error) {
	return r.controller(t)
}

func (r *Runtime) controller(t runtime.Task) (*Controller, error) {
	if err := validateTaskID(t.ID); err != nil {
		return nil, err
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	if err := supported(t.Spec); err != nil {
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

// TaskDir returns Dir/<taskID>, the directory holding the task's logs and
// work directory, whether or not it exists.
func (r *Runtime) TaskDir(taskID string) string { return filepath.Join(r.dir, taskID) }

// LogPath returns the path of the task's log file for stream
// (runtime.StreamStdout or runtime.StreamStderr), whether or not it exists.
// With Config.KeepLogs the file outlives the controller.
func (r *Runtime) LogPath(taskID, stream string) string {
	return filepath.Join(r.dir, taskID, stream+".log")
}

// Tasks returns the IDs of the tasks whose controllers are not yet fully
// removed, sorted.
func (r *Runtime) Tasks() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	ids := make([]string, 0, len(r.tasks))
	for id := range r.tasks {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// RemoveAll removes every task not yet removed (killing those still
// running), e.g. when the host shuts the worker down. It returns ctx.Err()
// or the joined clean-up errors; calling it again resumes.
func (r *Runtime) RemoveAll(ctx context.Context) error {
	r.mu.Lock()
	cs := make([]*Controller, 0, len(r.tasks))
	for _, c := range r.tasks {
		cs = append(cs, c)
	}
	r.mu.Unlock()
	var errs []error
	for _, c := range cs {
		if err := c.Remove(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (r *Runtime) forget(c *Controller) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.tasks[c.task.ID] == c {
		delete(r.tasks, c.task.ID)
	}
}

// validateTaskID makes sure the ID is safe as a single path element.
func validateTaskID(id string) error {
	const rule = "must be 1-128 characters of [A-Za-z0-9_.-] not starting with '.'"
	if id == "" || len(id) > 128 || id[0] == '.' {
		return fmt.Errorf("%w: Task.ID: %s, got %q", runtime.ErrInvalidTask, rule, id)
	}
	for i := 0; i < len(id); i++ {
		ch := id[i]
		ok := ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '_' || ch == '.' || ch == '-'
		if !ok {
			return fmt.Errorf("%w: Task.ID: %s, got %q", runtime.ErrInvalidTask, rule, id)
		}
	}
	return nil
}

// supported refuses what a host process cannot honour, rather than run the
// task without it: images and container fields, and limits (a plain process
// has no cgroup). Errors wrap runtime.ErrInvalidTask.
func supported(s runtime.Spec) error {
	switch {
	case s.Image != "":
		return fmt.Errorf("%w: Spec.Image: the process runtime runs programs of the node, not images: use runtime/runc", runtime.ErrInvalidTask)
	case s.Resources.NanoCPUs != 0 || s.Resources.MemoryBytes != 0 || s.Resources.Pids != 0:
		return fmt.Errorf("%w: Spec.Resources: the process runtime cannot enforce limits (a host process has no cgroup): use runtime/runc", runtime.ErrInvalidTask)
	}
	return nil
}
