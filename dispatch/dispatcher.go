package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/state"
)

// storeRetries is how many times a dispatcher write is retried when another
// writer changed the same objects in the meantime.
const storeRetries = 10

// HeartbeatFailureMessage is the node status message written when a node is
// marked DOWN because it missed its heartbeat deadline.
const HeartbeatFailureMessage = "heartbeat failure"

// NodeLeftMessage is the node status message written when a node is marked
// DOWN because its agent said, with Leave, that it is stopping gracefully.
const NodeLeftMessage = "node stopped"

// Dispatcher is the manager side of the manager<->worker protocol. It
// implements api.DispatcherServer: the embedding node registers it on its
// gRPC server. Only the Raft leader runs a dispatcher; the node makes a new
// one each time it becomes leader and stops it when it loses leadership.
//
// Before Start and after Stop every RPC fails with codes.Unavailable.
type Dispatcher struct {
	api.UnimplementedDispatcherServer

	store *state.Store
	cfg   DispatcherConfig
	log   *slog.Logger
	m     *dispatcherMetrics

	mu      sync.Mutex
	phase   phase
	ctx     context.Context
	cancel  context.CancelFunc
	nodes   map[string]*session // by node ID: the live session, or a reconnect grace entry
	kick    chan struct{}       // wakes the expiry loop when a deadline may be earlier
	stopped chan struct{}       // closed once every goroutine and RPC has returned

	// nodesGen counts changes to what gossip peer lists are made of (a
	// node added or removed, its gossip address or READY state changed);
	// nodeList is the store's node list as of nodeListGen, shared by every
	// session so that a periodic session check does not scan every node.
	nodesGen    atomic.Uint64
	nodeListMu  sync.Mutex
	nodeList    []*api.Node // stored objects: immutable, never modified
	nodeListGen uint64

	loops   sync.WaitGroup // the dispatcher's own goroutines
	rpcs    sync.WaitGroup // RPC handlers in flight
	batcher *statusBatcher
}

var _ api.DispatcherServer = (*Dispatcher)(nil)

type phase int

const (
	phaseNew phase = iota
	phaseRunning
	phaseStopped
)

// NewDispatcher returns a dispatcher over store. It validates cfg and starts
// nothing.
func NewDispatcher(store *state.Store, cfg DispatcherConfig) (*Dispatcher, error) {
	if store == nil {
		return nil, errors.New("dispatch: NewDispatcher: store must not be nil")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("dispatch: %w", err)
	}
	return &Dispatcher{
		store:   store,
		cfg:     cfg,
		log:     cfg.Logger.With("component", "dispatcher"),
		m:       newDispatcherMetrics(cfg.Registerer),
		nodes:   map[string]*session{},
		kick:    make(chan struct{}, 1),
		stopped: make(chan struct{}),
	}, nil
}

// Start starts the dispatcher: it accepts RPCs from then on, and gives every
// node that is READY in the store a grace period (HeartbeatPeriod ×
// GracePeriodMultiplier) to open a session here before marking it DOWN.
// ctx only bounds Start itself. Start may be called once.
func (d *Dispatcher) Start(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	switch d.phase {
	case phaseRunning:
		return errors.New("dispatch: dispatcher already started")
	case phaseStopped:
		return fmt.Errorf("dispatch: dispatcher: %w", errdefs.ErrStopped)
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	deadline := d.cfg.Clock.Now().Add(d.cfg.deadline())
	var ready []string
	d.store.View(func(tx state.ReadTx) {
		nodes, err := tx.FindNodes(state.All())
		if err != nil {
			return
		}
		for _, n := range nodes {
			if n.GetStatus().GetState() == api.NodeState_NODE_STATE_READY {
				ready = append(ready, n.GetId())
			}
		}
	})
	for _, id := range ready {
		d.nodes[id] = &session{nodeID: id, deadline: deadline, done: make(chan struct{})}
	}
	d.batcher = newStatusBatcher(d)
	d.phase = phaseRunning
	d.loops.Add(3)
	go func() { defer d.loops.Done(); d.expiryLoop(d.ctx) }()
	go func() { defer d.loops.Done(); d.roleLoop(d.ctx) }()
	go func() { defer d.loops.Done(); d.batcher.run(d.ctx) }()
	d.log.Info("dispatcher started", "heartbeat_period", d.cfg.HeartbeatPeriod, "nodes_in_grace", len(ready))
	return nil
}

// Stop ends every session and stream and waits, bounded by ctx, for the
// dispatcher's goroutines and in-flight RPCs to return. Queued status
// reports that were not written fail; agents send them again to the next
// leader. Stop is idempotent.
func (d *Dispatcher) Stop(ctx context.Context) error {
	d.mu.Lock()
	switch d.phase {
	case phaseNew:
		d.phase = phaseStopped
		close(d.stopped)
		d.mu.Unlock()
		return nil
	case phaseRunning:
		d.phase = phaseStopped
		d.cancel()
		for id, s := range d.nodes {
			s.end(status.Error(codes.Unavailable, "dispatcher stopped"))
			delete(d.nodes, id)
		}
		go func() {
			d.loops.Wait()
			d.rpcs.Wait()
			close(d.stopped)
		}()
	}
	d.mu.Unlock()
	select {
	case <-d.stopped:
		d.m.sessions.Set(0)
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// enter admits an RPC: it returns the dispatcher's context and the func the
// handler must call when it returns.
func (d *Dispatcher) enter() (context.Context, func(), error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.phase != phaseRunning {
		return nil, nil, status.Error(codes.Unavailable, "dispatcher is not running on this manager")
	}
	d.rpcs.Add(1)
	return d.ctx, d.rpcs.Done, nil
}
