package state

import (
	"context"
	"sync"
)

// memLog is an in-memory, single-node Log: Propose applies the entry at once,
// in order, under a lock. It has no durability; it is for tests and for the
// pure components' benchmarks.
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

// NewInMemory returns a store attached to an in-memory single-node log.
func NewInMemory(cfg Config) *Store {
	s := New(cfg)
	s.SetLog(&memLog{s: s})
	return s
}
