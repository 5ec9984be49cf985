package state

import (
	"context"
	"sync"

	"github.com/shoalhq/shoal/internal/api"
)

// memLog is this package's copy of statetest.Log, which its internal tests
// cannot import (statetest imports state). It applies every proposal at once,
// through the RequestLog fast path when it can.
type memLog struct {
	s   *Store
	mu  sync.Mutex // guards idx and serializes applies
	idx uint64
}

var _ RequestLog = (*memLog)(nil)

func (l *memLog) Propose(ctx context.Context, data []byte) (any, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.idx++
	return l.s.Apply(l.idx, data), nil
}

func (l *memLog) ProposeRequest(ctx context.Context, req *api.StoreRequest) (any, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.idx++
	return l.s.ApplyRequest(l.idx, req), nil
}

// newMemStore is statetest.NewStore: a store on a memLog.
func newMemStore(cfg Config) *Store {
	s := New(cfg)
	s.SetLog(&memLog{s: s})
	return s
}
