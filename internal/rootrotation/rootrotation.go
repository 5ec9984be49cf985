package rootrotation

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/ca"
	"github.com/shoalhq/shoal/internal/clock"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/lifecycle"
	"github.com/shoalhq/shoal/internal/state"
)

// ErrStarted is returned by Start on a Completer that was started before: a
// Completer runs once (one per leadership term).
var ErrStarted = errors.New("rootrotation: already started")

// Config configures a Completer. Start from DefaultConfig.
type Config struct {
	// Clock is the time source of the periodic check. Nil means
	// clock.Real().
	Clock clock.Clock
	// Logger receives the rotation's messages. Nil discards them.
	Logger *slog.Logger
	// Interval is how often the Completer checks without a watched change;
	// it bounds how late a rotation completes after its last lagging node
	// went DOWN. It must be positive.
	Interval time.Duration
}

// DefaultConfig returns the configuration a leader uses unless told
// otherwise.
func DefaultConfig() Config {
	return Config{
		// Real time; tests inject a fake clock.
		Clock: clock.Real(),
		// Discard: the embedding node passes its own logger.
		Logger: nil,
		// 1s: a check is one read of the nodes (a write only when the
		// rotation completes), cheap even for large clusters; a rotation
		// takes at least a renewal round, so a second more is unnoticeable.
		Interval: time.Second,
	}
}

// validate checks cfg and returns a copy with the defaults filled in.
func (cfg Config) validate() (Config, error) {
	if cfg.Interval <= 0 {
		return Config{}, fmt.Errorf("rootrotation: Config.Interval: must be positive, got %v: %w", cfg.Interval, errdefs.ErrInvalidSpec)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return cfg, nil
}

// Completer completes the cluster's root CA rotation once every node that is
// not DOWN has a certificate from the new root. It runs on the Raft leader:
// the node creates one per leadership term, calls Start when it becomes
// leader and Stop when it stops leading.
type Completer struct {
	store *state.Store
	cfg   Config
	loop  lifecycle.Loop
}

// New returns a Completer over store. It validates cfg (errors wrap
// errdefs.ErrInvalidSpec and name the field) and starts nothing.
func New(store *state.Store, cfg Config) (*Completer, error) {
	if store == nil {
		return nil, fmt.Errorf("rootrotation: store must not be nil: %w", errdefs.ErrInvalidSpec)
	}
	cfg, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	return &Completer{store: store, cfg: cfg}, nil
}

// Start starts the Completer's loop and returns; the loop runs until Stop,
// and ctx only bounds the start itself. The first check runs at once. Start
// may be called once (again: ErrStarted; after Stop: errdefs.ErrStopped).
func (c *Completer) Start(ctx context.Context) error {
	return c.loop.Start(ctx, "rootrotation", ErrStarted, c.run)
}

// Stop ends the loop and waits, at most until ctx ends, for it to return
// (else it returns ctx.Err() and the loop still ends soon after). It is
// idempotent and may be called without Start. A write in flight is
// abandoned; the rotation's state stays consistent and the next leader
// completes it.
func (c *Completer) Stop(ctx context.Context) error { return c.loop.Stop(ctx) }

// relevant selects the changes that can complete a rotation other than a
// node going DOWN: the cluster object (a rotation starting), and nodes that
// join, are removed, or record a certificate from another root.
func relevant(e state.Event) bool {
	switch e.Kind {
	case state.KindCluster:
		return true
	case state.KindNode:
		if e.Action != state.ActionUpdate {
			return true
		}
		old, _ := e.Old.(*api.Node)
		return old == nil || old.GetCertRootDigest() != e.Node().GetCertRootDigest()
	}
	return false
}

func (c *Completer) run(ctx context.Context) {
	// Watch before the first check, so no change after it is missed.
	w := c.store.Watch(relevant)
	defer func() {
		if w != nil {
			w.Cancel()
		}
	}()
	c.check(ctx)
	t := c.cfg.Clock.NewTimer(c.cfg.Interval)
	defer t.Stop()
	for {
		var events <-chan state.Event
		if w != nil {
			events = w.C
		}
		fired := false
		select {
		case <-ctx.Done():
			return
		case <-t.C():
			fired = true
			if w == nil {
				// The store ended the last watch; watch again, then check.
				w = c.store.Watch(relevant)
			}
		case _, ok := <-events:
			if !ok {
				if err := w.Err(); ctx.Err() == nil {
					c.cfg.Logger.Debug("root CA rotation: watch ended; watching again at the next check", "err", err)
				}
				w = nil
				continue
			}
			drain(w.C)
		}
		c.check(ctx)
		if fired {
			t.Reset(c.cfg.Interval)
		}
	}
}

// drain takes the events already queued on ch, so one check covers them.
func drain(ch <-chan state.Event) {
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		default:
			return
		}
	}
}

func (c *Completer) check(ctx context.Context) {
	done, err := ca.FinishRootRotation(ctx, c.store)
	switch {
	case err != nil && ctx.Err() == nil:
		c.cfg.Logger.Warn("completing the root CA rotation", "err", err)
	case done:
		c.cfg.Logger.Info("root CA rotation complete: the new root is the only one; join tokens replaced")
	}
}
