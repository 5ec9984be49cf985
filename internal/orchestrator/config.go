package orchestrator

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/shoalhq/shoal/internal/clock"
	"github.com/shoalhq/shoal/internal/errdefs"
)

// Clock is the time source of the reconcilers. Restart delays, update delays,
// retries and the periodic sweep all go through it, so tests drive time
// explicitly instead of sleeping.
type Clock = clock.Clock

// Timer is a one-shot timer made by a Clock.
type Timer = clock.Timer

// SystemClock returns the Clock of the real time (package time).
func SystemClock() Clock { return clock.Real() }

// Config configures an Orchestrator. Start from DefaultConfig.
type Config struct {
	// Logger receives the reconcilers' messages. Nil discards them: a library
	// writes to the host's logs only when asked to.
	Logger *slog.Logger
	// Clock is the time source. Nil means SystemClock.
	Clock Clock
	// ReconcileInterval is the period of the full sweep that re-checks every
	// service even without watch events. It must be positive.
	ReconcileInterval time.Duration
	// RetryInterval is how long a service whose reconcile failed (a store
	// error, or conflicts that kept recurring) waits before it is tried
	// again. It must be positive.
	RetryInterval time.Duration
	// MaxBatch is the largest number of objects written in one store
	// transaction; bigger plans are split. It must be positive.
	MaxBatch int
	// DefaultTaskHistoryLimit is the number of dead tasks kept per slot when
	// the cluster object is missing or its TaskHistoryLimit is 0. A negative
	// value keeps none.
	DefaultTaskHistoryLimit int64
	// DefaultRestartDelay is the delay before a task that ended is replaced
	// when its restart policy says 0. It must not be negative.
	DefaultRestartDelay time.Duration
}

// DefaultConfig returns the configuration the node uses unless told
// otherwise.
func DefaultConfig() Config {
	return Config{
		// Discard: the embedding node passes its own logger.
		Logger: nil,
		// Real time; tests inject a fake clock.
		Clock: SystemClock(),
		// 10s: watch events drive the reconcilers, so the sweep is only a
		// safety net (a dropped watch, a write that failed for good); it
		// costs one read of every task, which at 10s is negligible even for
		// large clusters, and it bounds how long a missed change can linger.
		ReconcileInterval: 10 * time.Second,
		// 1s: failures are store errors (no quorum, leadership moving); they
		// clear in about an election timeout, and retrying faster only adds
		// load to a log that is already struggling.
		RetryInterval: time.Second,
		// 1000: one log entry of 1000 tasks is a few hundred KiB, well under
		// the Raft entry size limits, and keeps a 10000-replica service to
		// ten entries.
		MaxBatch: 1000,
		// 5: Docker swarm mode's default; enough to see why a task keeps
		// failing without letting dead tasks pile up.
		DefaultTaskHistoryLimit: 5,
		// 5s: Docker's default restart delay. A crash-looping task would
		// otherwise cost a scheduler, dispatcher and log round trip every
		// few milliseconds, for every replica.
		DefaultRestartDelay: 5 * time.Second,
	}
}

// validate checks cfg and returns a copy with the nil defaults filled in.
func (cfg Config) validate() (Config, error) {
	bad := func(field, rule string) (Config, error) {
		return Config{}, fmt.Errorf("orchestrator: Config.%s %s: %w", field, rule, errdefs.ErrInvalidSpec)
	}
	if cfg.ReconcileInterval <= 0 {
		return bad("ReconcileInterval", fmt.Sprintf("must be positive, got %v", cfg.ReconcileInterval))
	}
	if cfg.RetryInterval <= 0 {
		return bad("RetryInterval", fmt.Sprintf("must be positive, got %v", cfg.RetryInterval))
	}
	if cfg.MaxBatch <= 0 {
		return bad("MaxBatch", fmt.Sprintf("must be positive, got %d", cfg.MaxBatch))
	}
	if cfg.DefaultRestartDelay < 0 {
		return bad("DefaultRestartDelay", fmt.Sprintf("must not be negative, got %v", cfg.DefaultRestartDelay))
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = SystemClock()
	}
	return cfg, nil
}
