package image

import (
	"context"
	"sync"
)

// flightGroup runs one call of a function per key at a time and gives its
// result to every caller that asked for the key meanwhile. The call runs in
// its own goroutine under a context of its own: a caller whose context ends
// stops waiting without disturbing the others, and the call is cancelled
// only when every caller has stopped waiting (or the store closes).
type flightGroup[V any] struct {
	// base is the store's lifetime: its end cancels every call.
	base context.Context
	// wg counts the calls' goroutines, so Close can wait for them.
	wg *sync.WaitGroup

	mu sync.Mutex
	// m holds the calls in progress by key; guarded by mu.
	m map[string]*flight[V]
}

// flight is one call in progress.
type flight[V any] struct {
	done   chan struct{}
	cancel context.CancelFunc
	// waiters counts the callers still waiting; guarded by the group's mu.
	waiters int
	// val and err are set before done closes and read only after.
	val V
	err error
}

func newFlightGroup[V any](base context.Context, wg *sync.WaitGroup) *flightGroup[V] {
	return &flightGroup[V]{base: base, wg: wg, m: make(map[string]*flight[V])}
}

// do returns the result of fn for key, joining a call in progress if there
// is one. It returns ctx.Err() if ctx ends first.
func (g *flightGroup[V]) do(ctx context.Context, key string, fn func(context.Context) (V, error)) (V, error) {
	var zero V
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	g.mu.Lock()
	f, ok := g.m[key]
	if !ok {
		if g.base.Err() != nil {
			g.mu.Unlock()
			return zero, ErrClosed
		}
		fctx, cancel := context.WithCancel(g.base)
		f = &flight[V]{done: make(chan struct{}), cancel: cancel}
		g.m[key] = f
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			v, err := fn(fctx)
			if err != nil && g.base.Err() != nil {
				err = ErrClosed
			}
			g.mu.Lock()
			if g.m[key] == f {
				delete(g.m, key)
			}
			g.mu.Unlock()
			f.val, f.err = v, err
			close(f.done)
			cancel()
		}()
	}
	f.waiters++
	g.mu.Unlock()

	select {
	case <-f.done:
		return f.val, f.err
	case <-ctx.Done():
		g.mu.Lock()
		f.waiters--
		if f.waiters == 0 {
			// Nobody wants the result any more: cancel the call, and let the
			// next caller start afresh rather than join a dying call.
			f.cancel()
			if g.m[key] == f {
				delete(g.m, key)
			}
		}
		g.mu.Unlock()
		return zero, ctx.Err()
	}
}

// waiting returns how many callers wait for key (tests use it to line
// callers up).
func (g *flightGroup[V]) waiting(key string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if f, ok := g.m[key]; ok {
		return f.waiters
	}
	return 0
}
