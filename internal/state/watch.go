package state

import (
	"errors"
	"sync"

	"github.com/shoalhq/shoal/internal/api"
)

// Action is what a change did.
type Action int

// Actions.
const (
	ActionCreate Action = iota + 1
	ActionUpdate
	ActionDelete
)

func (a Action) String() string {
	switch a {
	case ActionCreate:
		return "create"
	case ActionUpdate:
		return "update"
	case ActionDelete:
		return "delete"
	}
	return "unknown"
}

// Event is one applied change. Object is the object after the change (the
// removed object for a delete); Old is the object before an update. Both are
// the stored objects, shared between watchers, ViewShared readers and
// snapshots: a watcher may keep them (they never change) but must not modify
// them, nested messages included; clone one to change it.
type Event struct {
	Action Action
	Kind   Kind
	// Index is the log index of the transaction that made the change; the
	// events of one transaction share it and arrive together.
	Index  uint64
	Object Object
	Old    Object
	// Last is set on the last event of its transaction that the watcher
	// receives: a consumer that acts per transaction acts when it sees it.
	Last bool
}

// Task returns the event's object if it is a task, else nil.
func (e Event) Task() *api.Task { t, _ := e.Object.(*api.Task); return t }

// Node returns the event's object if it is a node, else nil.
func (e Event) Node() *api.Node { n, _ := e.Object.(*api.Node); return n }

// Service returns the event's object if it is a service, else nil.
func (e Event) Service() *api.Service { s, _ := e.Object.(*api.Service); return s }

// Cluster returns the event's object if it is the cluster, else nil.
func (e Event) Cluster() *api.Cluster { c, _ := e.Object.(*api.Cluster); return c }

// Filter selects events; nil filters accept everything. A filter runs in
// Apply, on the log's apply goroutine, while the store's locks are held: it
// must be fast, must not block, must not call the Store, and must not modify
// the event. It is called once per event and watcher.
type Filter func(Event) bool

// KindIs accepts events of any of the given kinds.
func KindIs(kinds ...Kind) Filter {
	return func(e Event) bool {
		for _, k := range kinds {
			if e.Kind == k {
				return true
			}
		}
		return false
	}
}

// Errors that end a watch; see Watcher.Err.
var (
	// ErrWatchOverflow: the watcher fell more than Config.WatchBuffer events behind.
	ErrWatchOverflow = errors.New("state: watcher fell too far behind and was closed")
	// ErrWatchReset: the store was restored from a snapshot; view and watch again.
	ErrWatchReset = errors.New("state: store restored from a snapshot; watch again")
	// ErrStoreClosed: the store was closed.
	ErrStoreClosed = errors.New("state: store closed")
	// ErrWatchCancelled: the watcher's Cancel was called.
	ErrWatchCancelled = errors.New("state: watch cancelled")
)

// Watcher receives the events that pass its filters, in commit order, on C.
// C is closed when the watch ends; Err then says why. Cancel ends it; it is
// safe to call more than once and from any goroutine.
//
// Each watcher has its own goroutine, which buffers events so that Apply
// never waits for a consumer; receive from C on one goroutine to see the
// events in order. A consumer that falls more than Config.WatchBuffer events
// behind loses the watch (ErrWatchOverflow), and a watch also ends when the
// store is restored from a snapshot (ErrWatchReset) or closed
// (ErrStoreClosed): a consumer then views and watches again, with
// ViewAndWatch. Receiving from C inside a View or Update callback can
// deadlock: events are published by Apply, which waits for the callback.
type Watcher struct {
	C <-chan Event
	w *watcher
	s *Store
}

// Err returns why the watch ended, or nil while it runs. It is safe for
// concurrent use.
func (w *Watcher) Err() error {
	w.w.mu.Lock()
	defer w.w.mu.Unlock()
	return w.w.err
}

// Cancel ends the watch and returns once its goroutine has exited and C is
// closed; events not yet received may be dropped. It does not block on
// the store, so it may be called from any goroutine, View and Update
// callbacks included; not from a Filter.
func (w *Watcher) Cancel() {
	w.s.pubMu.Lock()
	delete(w.s.watchers, w.w)
	w.s.pubMu.Unlock()
	w.w.close(ErrWatchCancelled)
	<-w.w.done
}

type watcher struct {
	filters []Filter
	limit   int
	out     chan Event

	// mu guards buf, err and closed; the store's pubMu is taken before it.
	mu     sync.Mutex
	buf    []Event
	err    error
	wake   chan struct{} // signalled when buf gains events
	quit   chan struct{} // closed by close
	closed bool
	done   chan struct{}
}

func (w *watcher) match(e Event) bool {
	for _, f := range w.filters {
		if f != nil && !f(e) {
			return false
		}
	}
	return true
}

// push queues events; called with the store's pubMu held.
func (w *watcher) push(events []Event) {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	n := 0
	for _, e := range events {
		if w.match(e) {
			w.buf = append(w.buf, e)
			n++
		}
	}
	if n > 0 {
		w.buf[len(w.buf)-1].Last = true
	}
	over := len(w.buf) > w.limit
	w.mu.Unlock()
	if over {
		w.close(ErrWatchOverflow)
		return
	}
	if n > 0 {
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
}

func (w *watcher) close(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	w.closed = true
	w.err = err
	w.buf = nil
	close(w.quit)
}

// run forwards buffered events to out until the watcher is closed.
func (w *watcher) run() {
	defer close(w.done)
	defer close(w.out)
	for {
		w.mu.Lock()
		batch := w.buf
		w.buf = nil
		w.mu.Unlock()
		for _, e := range batch {
			select {
			case w.out <- e:
			case <-w.quit:
				return
			}
		}
		if len(batch) == 0 {
			select {
			case <-w.wake:
			case <-w.quit:
				return
			}
		}
	}
}

// publish queues events for the watchers; Apply calls it holding mu.
func (s *Store) publish(events []Event) {
	if len(events) == 0 {
		return
	}
	s.pubMu.Lock()
	defer s.pubMu.Unlock()
	for w := range s.watchers {
		w.push(events)
		w.mu.Lock()
		closed := w.closed
		w.mu.Unlock()
		if closed {
			delete(s.watchers, w)
		}
	}
}

func (s *Store) newWatcher(filters []Filter) (*Watcher, *watcher) {
	w := &watcher{
		filters: filters,
		limit:   s.cfg.WatchBuffer,
		out:     make(chan Event, 64),
		wake:    make(chan struct{}, 1),
		quit:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	s.watchers[w] = struct{}{}
	go w.run()
	return &Watcher{C: w.out, w: w, s: s}, w
}

// Watch starts a watch of the changes applied from now on that pass every
// filter. The caller owns the Watcher and must Cancel it (or see it end);
// until then its goroutine runs.
func (s *Store) Watch(filters ...Filter) *Watcher {
	s.pubMu.Lock()
	defer s.pubMu.Unlock()
	wt, _ := s.newWatcher(filters)
	return wt
}

// ViewAndWatch runs fn on a snapshot and starts a watch of every change after
// that snapshot, atomically: no change is missed or seen twice. fn follows
// ReadTx's rules (its objects are copies, as in View), and runs before
// ViewAndWatch returns the Watcher, which is the caller's to Cancel.
func (s *Store) ViewAndWatch(fn func(ReadTx), filters ...Filter) *Watcher {
	s.mu.RLock()
	defer s.mu.RUnlock()
	s.pubMu.Lock()
	wt, _ := s.newWatcher(filters)
	s.pubMu.Unlock()
	fn(&readTx{s: s})
	return wt
}
