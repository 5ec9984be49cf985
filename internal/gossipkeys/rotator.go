package gossipkeys

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/shoalhq/shoal/internal/clock"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/lifecycle"
	"github.com/shoalhq/shoal/internal/state"
)

// ErrStarted is returned by Start on a Rotator that was started before: a
// Rotator runs once (one per leadership term).
var ErrStarted = errors.New("gossipkeys: rotator already started")

// RotatorConfig configures a Rotator. Start from DefaultRotatorConfig.
type RotatorConfig struct {
	// ClusterID is the ID of the cluster object whose keys the Rotator
	// moves on. It is required.
	ClusterID string
	// Grace is how long each phase of a rotation lasts before the next one
	// begins (see NextPhase). It must be positive.
	Grace time.Duration
	// Interval is how often the Rotator reads the cluster object to see
	// whether a phase is due. 0 means Grace/4, at least 10ms and at most 1s.
	// It must not be negative.
	Interval time.Duration
	// Clock is the time source: phase starts and the check period. Nil means
	// clock.Real().
	Clock clock.Clock
	// Logger receives the rotation's messages. Nil discards them.
	Logger *slog.Logger
}

// DefaultRotatorConfig returns the configuration a leader uses unless told
// otherwise; ClusterID is left for the caller.
func DefaultRotatorConfig() RotatorConfig {
	return RotatorConfig{
		// 30s: a phase reaches every node through its dispatcher session or
		// its store within a few heartbeats; 30s covers a node that is
		// reconnecting, and a whole rotation still ends within a minute.
		Grace: 30 * time.Second,
		// Derived from Grace: a phase then ends at most a quarter of its
		// grace late; never more often than 10ms (a read of one object, but
		// not in a hot loop) nor less often than 1s (so a long grace is
		// still followed closely).
		Interval: 0,
		// Real time; tests inject a fake clock.
		Clock: clock.Real(),
		// Discard: the embedding node passes its own logger.
		Logger: nil,
	}
}

// validate checks cfg and returns a copy with the defaults filled in.
func (cfg RotatorConfig) validate() (RotatorConfig, error) {
	bad := func(field, rule string, args ...any) (RotatorConfig, error) {
		return RotatorConfig{}, fmt.Errorf("gossipkeys: RotatorConfig.%s: %s: %w", field, fmt.Sprintf(rule, args...), errdefs.ErrInvalidSpec)
	}
	if cfg.ClusterID == "" {
		return bad("ClusterID", "is required")
	}
	if cfg.Grace <= 0 {
		return bad("Grace", "must be positive, got %v", cfg.Grace)
	}
	if cfg.Interval < 0 {
		return bad("Interval", "must not be negative, got %v", cfg.Interval)
	}
	if cfg.Interval == 0 {
		cfg.Interval = min(time.Second, max(cfg.Grace/4, 10*time.Millisecond))
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return cfg, nil
}

// Rotator runs on the Raft leader: it moves a gossip key rotation from phase
// to phase once each has lasted the grace, and gives a cluster without
// gossip keys its first. The node creates one per leadership term, calls
// Start when it becomes leader and Stop when it stops leading.
type Rotator struct {
	store *state.Store
	cfg   RotatorConfig
	loop  lifecycle.Loop
}

// NewRotator returns a Rotator over store. It validates cfg (errors wrap
// errdefs.ErrInvalidSpec and name the field) and starts nothing.
func NewRotator(store *state.Store, cfg RotatorConfig) (*Rotator, error) {
	if store == nil {
		return nil, fmt.Errorf("gossipkeys: store must not be nil: %w", errdefs.ErrInvalidSpec)
	}
	cfg, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	return &Rotator{store: store, cfg: cfg}, nil
}

// Start starts the Rotator's loop and returns; the loop runs until Stop, and
// ctx only bounds the start itself. The first check runs at once. Start may
// be called once (again: ErrStarted; after Stop: errdefs.ErrStopped).
func (r *Rotator) Start(ctx context.Context) error {
	return r.loop.Start(ctx, "gossipkeys", ErrStarted, r.run)
}

// Stop ends the loop and waits, at most until ctx ends, for it to return
// (else it returns ctx.Err() and the loop still ends soon after). It is
// idempotent and may be called without Start. A write in flight is
// abandoned; the stored keys stay consistent and the next leader carries on.
func (r *Rotator) Stop(ctx context.Context) error { return r.loop.Stop(ctx) }

func (r *Rotator) run(ctx context.Context) {
	r.step(ctx)
	t := r.cfg.Clock.NewTimer(r.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
		r.step(ctx)
		t.Reset(r.cfg.Interval)
	}
}

// step writes the next phase if one is due. A shared read decides first, so
// the common case (nothing due) costs no write transaction.
func (r *Rotator) step(ctx context.Context) {
	var due bool
	r.store.ViewShared(func(tx state.ReadTx) {
		if c := tx.GetCluster(r.cfg.ClusterID); c != nil {
			_, due, _ = NextPhase(c.GetGossip(), r.cfg.Clock.Now(), r.cfg.Grace)
		}
	})
	if !due {
		return
	}
	var phase uint32
	var keys int
	changed := false
	err := r.store.Update(ctx, func(tx state.WriteTx) error {
		c := tx.GetCluster(r.cfg.ClusterID)
		if c == nil {
			return nil
		}
		next, ok, err := NextPhase(c.GetGossip(), r.cfg.Clock.Now(), r.cfg.Grace)
		if err != nil || !ok {
			return err
		}
		c.Gossip = next
		phase, keys, changed = next.GetRotationPhase(), len(next.GetKeys()), true
		return tx.UpdateCluster(c)
	})
	switch {
	case err != nil && ctx.Err() == nil:
		// Store errors (no quorum, leadership moving) clear by themselves;
		// the next check tries again.
		r.cfg.Logger.Debug("gossip key rotation step", "err", err)
	case err == nil && changed:
		r.cfg.Logger.Info("gossip key rotation", "phase", phase, "keys", keys)
	}
}
