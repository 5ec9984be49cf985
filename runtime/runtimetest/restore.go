package runtimetest

import (
	"context"
	"sort"

	"github.com/shoalhq/shoal/runtime"
)

var (
	_ runtime.Restorer = (*Runtime)(nil)
	_ runtime.Detacher = (*Controller)(nil)
)

// Detach lets go of the task without stopping it (runtime.Detacher): the
// fake task keeps its state, and Restore hands the same controller to a
// later agent.
func (c *Controller) Detach() error {
	c.rt.mu.Lock()
	defer c.rt.mu.Unlock()
	c.detached = true
	c.rt.notifyLocked()
	return nil
}

// Detached reports whether the task was detached and not restored since.
func (r *Runtime) Detached(taskID string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.tasks[taskID]
	return ok && c.detached
}

// Restore returns the controller of a detached task (runtime.Restorer),
// which is then attached again; ok is false for any other task.
func (r *Runtime) Restore(ctx context.Context, t runtime.Task) (runtime.Controller, bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, false, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.tasks[t.ID]
	if !ok || !c.detached {
		return nil, false, nil
	}
	c.detached = false
	r.notifyLocked()
	return c, true, nil
}

// Restorable lists the detached tasks, sorted.
func (r *Runtime) Restorable(ctx context.Context) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ids []string
	for id, c := range r.tasks {
		if c.detached {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids, nil
}

// Discard shuts down and removes a detached task.
func (r *Runtime) Discard(ctx context.Context, taskID string) error {
	c, ok, err := r.Restore(ctx, runtime.Task{ID: taskID})
	if err != nil || !ok {
		return err
	}
	if err := c.Shutdown(ctx); err != nil {
		return err
	}
	return c.Remove(ctx)
}
