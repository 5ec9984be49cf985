package dispatch

import (
	"context"
	"errors"
	"sync"

	"google.golang.org/protobuf/proto"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/state"
)

// queuedStatus is one accepted status report waiting to be written.
type queuedStatus struct {
	taskID string
	nodeID string
	status *api.TaskStatus
}

// flushResult is the outcome of one batch write; done is closed once err is
// set.
type flushResult struct {
	done chan struct{}
	err  error
}

func newFlushResult() *flushResult { return &flushResult{done: make(chan struct{})} }

// statusBatcher collects status reports and writes them to the store in few
// transactions: the write path that saturates the log at scale.
type statusBatcher struct {
	d *Dispatcher

	mu      sync.Mutex
	pending map[string]queuedStatus // latest (most advanced) status per task
	cur     *flushResult            // result of the batch now collecting
	closed  bool

	kick chan struct{} // a batch has something
	full chan struct{} // a batch reached StatusBatchSize
}

func newStatusBatcher(d *Dispatcher) *statusBatcher {
	return &statusBatcher{
		d:       d,
		pending: map[string]queuedStatus{},
		cur:     newFlushResult(),
		kick:    make(chan struct{}, 1),
		full:    make(chan struct{}, 1),
	}
}

// add queues updates and returns the result of the batch they joined.
func (b *statusBatcher) add(updates []queuedStatus) *flushResult {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		r := newFlushResult()
		r.err = errdefs.ErrStopped
		close(r.done)
		return r
	}
	for _, u := range updates {
		if prev, ok := b.pending[u.taskID]; ok && statusNewer(prev.status, u.status) {
			continue
		}
		b.pending[u.taskID] = u
	}
	res, n := b.cur, len(b.pending)
	b.mu.Unlock()
	select {
	case b.kick <- struct{}{}:
	default:
	}
	if n >= b.d.cfg.StatusBatchSize {
		select {
		case b.full <- struct{}{}:
		default:
		}
	}
	return res
}

// run writes batches until ctx ends, then fails whatever is left.
func (b *statusBatcher) run(ctx context.Context) {
	t := b.d.cfg.Clock.NewTimer(b.d.cfg.StatusBatchInterval)
	defer t.Stop()
	defer func() {
		b.mu.Lock()
		b.closed = true
		res := b.cur
		b.pending = nil
		b.mu.Unlock()
		res.err = errdefs.ErrStopped
		close(res.done)
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-b.kick:
		}
		// Collect for one interval, or until the batch is full.
		if !t.Stop() {
			select {
			case <-t.C():
			default:
			}
		}
		t.Reset(b.d.cfg.StatusBatchInterval)
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		case <-b.full:
		}
		b.mu.Lock()
		batch, res := b.pending, b.cur
		b.pending, b.cur = map[string]queuedStatus{}, newFlushResult()
		b.mu.Unlock()
		select { // a full signal for the batch just taken is stale
		case <-b.full:
		default:
		}
		res.err = b.write(ctx, batch)
		close(res.done)
	}
}

// write stores batch in transactions of at most StatusBatchSize tasks.
func (b *statusBatcher) write(ctx context.Context, batch map[string]queuedStatus) error {
	chunk := make([]queuedStatus, 0, min(len(batch), b.d.cfg.StatusBatchSize))
	flush := func() error {
		if len(chunk) == 0 {
			return nil
		}
		written := 0
		err := b.d.store.UpdateRetry(ctx, storeRetries, func(tx state.WriteTx) error {
			written = 0
			for _, q := range chunk {
				err := tx.ModifyTask(q.taskID, func(t *api.Task) error {
					if t.GetNodeId() != q.nodeID {
						return state.ErrSkip // moved off the node since it was reported
					}
					if !statusNewer(q.status, t.GetStatus()) {
						// Late or duplicate: task state only moves forward, and
						// a health change is newer only by its health_seq.
						return state.ErrSkip
					}
					t.Status = proto.Clone(q.status).(*api.TaskStatus)
					written++
					return nil
				})
				if err != nil && !errors.Is(err, state.ErrNotFound) { // deleted: nothing to report on
					return err
				}
			}
			return nil
		})
		if err == nil && written > 0 {
			b.d.m.statusWrites.Inc()
			b.d.m.statusBatchLen.Observe(float64(written))
		}
		chunk = chunk[:0]
		return err
	}
	for _, q := range batch {
		chunk = append(chunk, q)
		if len(chunk) >= b.d.cfg.StatusBatchSize {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}
