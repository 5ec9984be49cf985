package membership

import (
	"context"
	"errors"
	"fmt"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/lifecycle"
	"github.com/shoalhq/shoal/internal/state"
	"github.com/shoalhq/shoal/raftstore"
)

// ErrStarted is returned by Start on a Reconciler that was started before: a
// Reconciler runs once (one per leadership term).
var ErrStarted = errors.New("membership: already started")

// Raft is the part of the Raft member the Reconciler uses; raftstore.Node
// implements it. Every method is called from the Reconciler's goroutine only,
// one call at a time, and must return when ctx ends. The Reconciler runs on
// the leader; on a member that is not (or no longer) the leader, the methods
// fail (raftstore.ErrNotLeader) and the Reconciler tries again next round.
type Raft interface {
	// Members returns the current Raft configuration. It is safe to call
	// concurrently with the other methods and with the Raft loop.
	Members(ctx context.Context) ([]raftstore.Member, error)
	// CaughtUp reports whether member id's log is close enough to the
	// leader's to promote it. It is safe to call concurrently with the other
	// methods and with the Raft loop.
	CaughtUp(ctx context.Context, id uint64) (bool, error)
	// PromoteLearner makes learner id a voter and returns once the change is
	// applied; it is a no-op for a voter. It is safe to call concurrently
	// with the other methods; membership changes are serialized by the Raft
	// member.
	PromoteLearner(ctx context.Context, id uint64) error
}

var _ Raft = (*raftstore.Node)(nil)

// Store is the part of the object store the Reconciler writes to;
// *state.Store implements it. It is safe for concurrent use, and the
// Reconciler calls it from its own goroutine only.
type Store interface {
	// UpdateRetry runs fn in a write transaction and commits what it wrote,
	// running it again, up to attempts times, while the commit conflicts
	// with another writer. It returns when the write is applied or failed,
	// or when ctx ends.
	UpdateRetry(ctx context.Context, attempts int, fn func(state.WriteTx) error) error
}

var _ Store = (*state.Store)(nil)

// Reconciler marks this manager as leader in the store and promotes
// caught-up learners to voters, once per Config.Interval, while it runs.
type Reconciler struct {
	store Store
	raft  Raft
	cfg   Config
	ready chan struct{} // closed after the first round
	loop  lifecycle.Loop
}

// New returns a Reconciler that writes the leader mark to store and changes
// the configuration of raft. It validates cfg and starts nothing.
func New(store Store, raft Raft, cfg Config) (*Reconciler, error) {
	if store == nil {
		return nil, fmt.Errorf("membership: store must not be nil: %w", errdefs.ErrInvalidSpec)
	}
	if raft == nil {
		return nil, fmt.Errorf("membership: raft must not be nil: %w", errdefs.ErrInvalidSpec)
	}
	cfg, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	return &Reconciler{
		store: store,
		raft:  raft,
		cfg:   cfg,
		ready: make(chan struct{}),
	}, nil
}

// Start starts the rounds and returns; the first round runs at once. They
// run until Stop; ctx only bounds the start itself. Start may be called
// once: again it returns ErrStarted, after Stop an error matching
// errdefs.ErrStopped.
func (r *Reconciler) Start(ctx context.Context) error {
	return r.loop.Start(ctx, "membership", ErrStarted, r.run)
}

// Ready returns a channel closed once the first round after Start has
// finished (whether or not its calls succeeded).
func (r *Reconciler) Ready() <-chan struct{} { return r.ready }

// Stop ends the rounds and waits, at most until ctx ends, for the goroutine
// to return; a Raft call or store write in flight is cancelled. It is
// idempotent, and safe to call before Start (the Reconciler then never
// starts).
func (r *Reconciler) Stop(ctx context.Context) error { return r.loop.Stop(ctx) }

// run is the Reconciler's goroutine.
func (r *Reconciler) run(ctx context.Context) {
	marked := r.round(ctx, false)
	close(r.ready)
	t := r.cfg.Clock.NewTimer(r.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
		marked = r.round(ctx, marked)
		t.Reset(r.cfg.Interval)
	}
}

// round runs one round and returns whether the leader mark is written.
func (r *Reconciler) round(ctx context.Context, marked bool) bool {
	log := r.cfg.Logger
	if !marked {
		if err := r.markLeader(ctx); err != nil {
			if ctx.Err() == nil {
				log.Warn("membership: cannot record this manager as the leader; trying again next round", "err", err)
			}
		} else {
			marked = true
		}
	}
	members, err := r.raft.Members(ctx)
	if err != nil {
		if ctx.Err() == nil {
			log.Debug("membership: cannot read the Raft configuration", "err", err)
		}
		return marked
	}
	if err := r.recordReachability(ctx, members); err != nil && ctx.Err() == nil {
		log.Debug("membership: cannot record the managers' reachability; trying again next round", "err", err)
	}
	for _, m := range members {
		if !m.Learner {
			continue
		}
		ok, err := r.raft.CaughtUp(ctx, m.ID)
		if err != nil {
			if ctx.Err() != nil {
				return marked
			}
			log.Debug("membership: cannot tell whether the learner caught up", "raft_id", m.ID, "err", err)
			continue
		}
		if !ok {
			continue
		}
		if err := r.raft.PromoteLearner(ctx, m.ID); err != nil {
			if ctx.Err() != nil {
				return marked
			}
			log.Warn("membership: cannot promote manager to voter; trying again next round", "raft_id", m.ID, "err", err)
			continue
		}
		log.Info("membership: manager promoted to voter", "raft_id", m.ID)
	}
	return marked
}

// markLeader records in the store that this manager leads and the other
// managers do not. Managers without a ManagerStatus are left alone.
func (r *Reconciler) markLeader(ctx context.Context) error {
	return r.store.UpdateRetry(ctx, markAttempts, func(tx state.WriteTx) error {
		nodes, err := tx.FindNodes(state.ByRole(api.NodeRole_NODE_ROLE_MANAGER))
		if err != nil {
			return err
		}
		for _, m := range nodes {
			want := m.Id == r.cfg.NodeID
			if m.ManagerStatus == nil || m.ManagerStatus.Leader == want {
				continue
			}
			m.ManagerStatus.Leader = want
			if err := tx.UpdateNode(m); err != nil {
				return err
			}
		}
		return nil
	})
}

// recordReachability records, in every manager's node object, whether the
// leader heard from it within an election timeout (raftstore's
// RecentActive): docker node ls's Reachable and Unreachable. A manager
// whose Raft ID is not a member is unreachable. Nothing is written when
// nothing changed.
func (r *Reconciler) recordReachability(ctx context.Context, members []raftstore.Member) error {
	active := make(map[uint64]bool, len(members))
	for _, m := range members {
		active[m.ID] = m.RecentActive
	}
	return r.store.UpdateRetry(ctx, 5, func(tx state.WriteTx) error {
		nodes, err := tx.FindNodes(state.ByRole(api.NodeRole_NODE_ROLE_MANAGER))
		if err != nil {
			return err
		}
		for _, n := range nodes {
			ms := n.GetManagerStatus()
			if ms == nil || ms.GetRaftId() == 0 {
				continue
			}
			want := api.Reachability_REACHABILITY_UNREACHABLE
			if active[ms.GetRaftId()] || n.GetId() == r.cfg.NodeID {
				want = api.Reachability_REACHABILITY_REACHABLE
			}
			if ms.GetReachability() == want {
				continue
			}
			ms.Reachability = want
			if err := tx.UpdateNode(n); err != nil {
				return err
			}
		}
		return nil
	})
}
