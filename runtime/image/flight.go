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
	// waiters counts the callers still waiting, and abandoned says it
	// fell to 0 and the call was cancelled; both guarded by the group's mu.
	waiters   int
	abandoned bool
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
	for {
		g.mu.Lock()
		f, ok := g.m[key]
		if ok && f.abandoned {
			// A call nobody waited for is ending; a new one starts after it,
			// so two calls for one key never run at once.
			g.mu.Unlock()
			select {
			case <-f.done:
				continue
			case <-ctx.Done():
				return zero, ctx.Err()
			}
		}
		if !ok {
			if g.base.Err() != nil {
				g.mu.Unlock()
				return zero, ErrClosed
			}
			f = g.start(key, fn)
		}
		f.waiters++
		g.mu.Unlock()
		return g.wait(ctx, f)
	}
}

// start runs fn for key in a new goroutine. The caller holds mu.
func (g *flightGroup[V]) start(key string, fn func(context.Context) (V, error)) *flight[V] {
	fctx, cancel := context.WithCancel(g.base)
	f := &flight[V]{done: make(chan struct{}), cancel: cancel}
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
	return f
}

// wait waits for f's result or the end of ctx.
func (g *flightGroup[V]) wait(ctx context.Context, f *flight[V]) (V, error) {
	var zero V
	select {
	case <-f.done:
		return f.val, f.err
	case <-ctx.Done():
		g.mu.Lock()
		f.waiters--
		if f.waiters == 0 {
			// Nobody wants the result any more: cancel the call. The next
			// caller waits for it to end and starts afresh rather than join
			// a dying call.
			f.abandoned = true
			f.cancel()
		}
		g.mu.Unlock()
		return zero, ctx.Err()
	}
}

// quiesce returns once no call is being started: after the base context
// ends, the caller may wait on the group's WaitGroup.
func (g *flightGroup[V]) quiesce() {
	g.mu.Lock()
	defer g.mu.Unlock()
}

// waiting returns how many callers wait for key (tests use it to line
// callers up).
func (g *flightGroup[V]) waiting(key string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if f, ok := g.m[key]; ok && !f.abandoned {
		return f.waiters
	}
	return 0
}
