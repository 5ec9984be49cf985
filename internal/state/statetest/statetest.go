// Package statetest provides an in-memory, single-node log for state stores
// in tests and benchmarks, and stores attached to one.
package statetest

import (
	"context"
	"sync"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/state"
)

// Log is an in-memory, single-node state.Log: a proposal is applied at once,
// in order, under a lock, and Propose returns the store's result. It has no
// durability. It is a state.RequestLog, so the store hands it requests
// without encoding them (the components' benchmarks measure the store, not
// protobuf); Propose serves callers that have bytes. It is safe for
// concurrent use.
type Log struct {
	s *state.Store

	mu  sync.Mutex // guards idx and serializes applies
	idx uint64     // index of the last entry applied
}

var _ state.RequestLog = (*Log)(nil)

// NewLog returns an in-memory log that applies its entries to s. Attach it
// with s.SetLog.
func NewLog(s *state.Store) *Log { return &Log{s: s} }

// Propose applies the encoded entry data to the store.
func (l *Log) Propose(ctx context.Context, data []byte) (any, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.idx++
	return l.s.Apply(l.idx, data), nil
}

// ProposeRequest applies req to the store without encoding it.
func (l *Log) ProposeRequest(ctx context.Context, req *api.StoreRequest) (any, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.idx++
	return l.s.ApplyRequest(l.idx, req), nil
}

// NewStore returns a store made with cfg and attached to an in-memory log.
func NewStore(cfg state.Config) *state.Store {
	s := state.New(cfg)
	s.SetLog(NewLog(s))
	return s
}
