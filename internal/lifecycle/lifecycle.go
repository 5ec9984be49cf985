// Package lifecycle is the Start/Stop contract of a component that runs one
// long-lived goroutine (DESIGN.md rule 1): Start once, Stop idempotent,
// bounded by its context, and safe before Start.
//
// # Concurrency
//
// A Loop's methods are safe for concurrent use; mu guards its fields.
package lifecycle

import (
	"context"
	"fmt"
	"sync"

	"github.com/shoalhq/shoal/internal/errdefs"
)

// Loop runs a component's goroutine. The zero value is ready to use.
type Loop struct {
	mu      sync.Mutex
	started bool               // guarded by mu
	stopped bool               // guarded by mu
	cancel  context.CancelFunc // ends the goroutine; guarded by mu
	done    chan struct{}      // closed when the goroutine returns; set by Start
}

// Start runs run on a new goroutine with a context that ends at Stop (ctx
// only bounds the start itself: its values pass on, its end does not).
// Started before, it returns errStarted; after Stop, an error naming the
// component (name) that matches errdefs.ErrStopped.
func (l *Loop) Start(ctx context.Context, name string, errStarted error, run func(ctx context.Context)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return fmt.Errorf("%s: start after stop: %w", name, errdefs.ErrStopped)
	}
	if l.started {
		return errStarted
	}
	l.started = true
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	l.cancel, l.done = cancel, make(chan struct{})
	done := l.done
	go func() {
		defer close(done)
		run(runCtx)
	}()
	return nil
}

// Stop ends the goroutine's context and waits, at most until ctx ends, for
// it to return (else it returns ctx.Err() and the goroutine still ends soon
// after). It is idempotent; before Start it only keeps the Loop from
// starting.
func (l *Loop) Stop(ctx context.Context) error {
	l.mu.Lock()
	l.stopped = true
	done := l.done
	if l.cancel != nil {
		l.cancel()
	}
	l.mu.Unlock()
	if done == nil {
		return nil
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Done returns a channel closed when the goroutine has returned (nil before
// Start).
func (l *Loop) Done() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.done
}
