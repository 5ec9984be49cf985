package state

import (
	"context"
	"sync"

	"github.com/shoalhq/shoal/internal/api"
)

// memLog is an in-memory, single-node Log: Propose applies the entry at once,
// in order, under a lock. It has no durability and needs no encoding: the
// store hands it requests as they are (proposeRequest). It is for tests and
// for the components' benchmarks; Propose serves callers that have bytes.
type memLog struct {
	mu  sync.Mutex
	s   *Store
	idx uint64
}

func (l *memLog) Propose(ctx context.Context, data []byte) (any, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.idx++
	return l.s.Apply(l.idx, data), nil
}

// proposeRequest applies the request without encoding it.
func (l *memLog) proposeRequest(ctx context.Context, req *api.StoreRequest) (any, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.idx++
	return l.s.applyRequest(l.idx, req), nil
}

// NewInMemory returns a store attached to an in-memory single-node log.
func NewInMemory(cfg Config) *Store {
	s := New(cfg)
	s.SetLog(&memLog{s: s})
	return s
}
