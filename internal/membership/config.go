package membership

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/shoalhq/shoal/internal/clock"
	"github.com/shoalhq/shoal/internal/errdefs"
)

// markAttempts is how many times one round tries the leader-mark transaction
// while it conflicts with another writer (state.Store.UpdateRetry). A
// conflict means a manager node changed between the read and the write; a
// few immediate retries absorb a burst of heartbeats or status writes, and a
// round that still conflicts tries again at the next round anyway.
const markAttempts = 5

// Config configures a Reconciler. Start from DefaultConfig.
type Config struct {
	// NodeID is the node ID (not the Raft ID) of this manager: the manager
	// node the Reconciler marks as leader in the store. It must not be empty.
	NodeID string
	// Interval is the time between two rounds. It must be positive.
	Interval time.Duration
	// Clock is the time source of the rounds. Nil means clock.Real().
	Clock clock.Clock
	// Logger receives promotions and failures. Nil discards them.
	Logger *slog.Logger
}

// DefaultConfig returns the configuration the node uses unless told
// otherwise; NodeID has no default.
func DefaultConfig() Config {
	return Config{
		// 1s: ten ticks of the default Raft tick (100ms), the period the node
		// passes (10 × its Raft TickInterval). A learner is caught up within a
		// few heartbeats of receiving its snapshot, so promoting it up to a
		// second later costs nothing, while each round is a few calls on the
		// Raft loop that should stay cheap next to the log's own work.
		Interval: time.Second,
		// Real time; tests inject a fake clock.
		Clock: clock.Real(),
		// Discard: the embedding node passes its own logger, and a library
		// writes to the host's logs only when asked to.
		Logger: nil,
	}
}

// validate checks cfg and returns a copy with the nil defaults filled in.
func (cfg Config) validate() (Config, error) {
	bad := func(field, rule string) (Config, error) {
		return Config{}, fmt.Errorf("membership: Config.%s %s: %w", field, rule, errdefs.ErrInvalidSpec)
	}
	if cfg.NodeID == "" {
		return bad("NodeID", "must not be empty")
	}
	if cfg.Interval <= 0 {
		return bad("Interval", fmt.Sprintf("must be positive, got %v", cfg.Interval))
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return cfg, nil
}
