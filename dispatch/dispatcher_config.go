package dispatch

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// DispatcherConfig configures a Dispatcher.
type DispatcherConfig struct {
	// HeartbeatPeriod is how often agents are told to heartbeat. Default 5s:
	// a dead worker is noticed within about 15s (3 periods), which is what
	// Docker swarm users expect, while 1000 workers cost only 200 RPCs/s.
	HeartbeatPeriod time.Duration
	// HeartbeatJitter is the fraction by which the period sent to an agent
	// is randomly moved up or down. Default 0.1: agents that reconnected to a
	// new leader at the same moment spread their heartbeats over ±10% of
	// the period instead of arriving in lockstep, while the deadline
	// (3 periods) stays far beyond the longest jittered period.
	HeartbeatJitter float64
	// GracePeriodMultiplier is how many heartbeat periods may pass without a
	// heartbeat before a node is marked DOWN; it is also the grace a node
	// that was READY gets to reconnect after this dispatcher starts.
	// Default 3: one lost or late heartbeat (a GC pause, a dropped packet)
	// must not mark a healthy node down, three in a row almost surely means
	// the node or its link is gone.
	GracePeriodMultiplier int
	// StatusBatchInterval is how long the status writer collects task status
	// reports before it writes them in one store transaction. Default 10ms:
	// small next to a task's lifetime and a Raft round trip, large enough
	// that a burst from many workers lands in a handful of log entries.
	StatusBatchInterval time.Duration
	// StatusBatchSize flushes the batch early once it holds this many task
	// updates, and caps the updates of one transaction. Default 1000: keeps a
	// log entry well under a megabyte with typical task objects.
	StatusBatchSize int
	// Managers returns the addresses of the managers, sent to agents so they
	// can fail over. It is called from every session's goroutine, so it must
	// be safe for concurrent use and return promptly. Default: a func
	// returning nil (agents keep their own list), because only the embedding
	// node knows the Raft membership.
	Managers func() []string
	// Logger receives the dispatcher's logs. Default: discard, because a
	// library must not write to the host's logs unless asked.
	Logger *slog.Logger
	// Clock is the time source for deadlines and timestamps. Default: the
	// wall clock; tests inject their own.
	Clock Clock
	// Registerer, when not nil, receives the dispatcher's Prometheus
	// metrics. Default nil: no metrics, since only the host program knows
	// which registry it serves. A dispatcher made again on the same
	// registry (after a leader change) reuses the metrics already there.
	Registerer prometheus.Registerer

	// sinceReal measures real elapsed time for stall detection (tests
	// simulate a stall with it). Default time.Since.
	sinceReal func(time.Time) time.Duration
}

// DefaultDispatcherConfig returns the configuration with every default set.
func DefaultDispatcherConfig() DispatcherConfig {
	return DispatcherConfig{
		HeartbeatPeriod:       5 * time.Second,
		HeartbeatJitter:       0.1,
		GracePeriodMultiplier: 3,
		StatusBatchInterval:   10 * time.Millisecond,
		StatusBatchSize:       1000,
		Managers:              func() []string { return nil },
		Logger:                slog.New(slog.DiscardHandler),
		Clock:                 RealClock(),
	}
}

// withDefaults fills zero fields from DefaultDispatcherConfig and validates
// the result. It works on a copy; the caller's struct is never changed.
func (c DispatcherConfig) withDefaults() (DispatcherConfig, error) {
	d := DefaultDispatcherConfig()
	if c.HeartbeatPeriod == 0 {
		c.HeartbeatPeriod = d.HeartbeatPeriod
	}
	if c.HeartbeatJitter == 0 {
		c.HeartbeatJitter = d.HeartbeatJitter
	}
	if c.GracePeriodMultiplier == 0 {
		c.GracePeriodMultiplier = d.GracePeriodMultiplier
	}
	if c.StatusBatchInterval == 0 {
		c.StatusBatchInterval = d.StatusBatchInterval
	}
	if c.StatusBatchSize == 0 {
		c.StatusBatchSize = d.StatusBatchSize
	}
	if c.sinceReal == nil {
		c.sinceReal = time.Since
	}
	if c.Managers == nil {
		c.Managers = d.Managers
	}
	if c.Logger == nil {
		c.Logger = d.Logger
	}
	if c.Clock == nil {
		c.Clock = d.Clock
	}
	switch {
	case c.HeartbeatPeriod < time.Millisecond:
		return c, fmt.Errorf("DispatcherConfig.HeartbeatPeriod: must be at least 1ms, got %v", c.HeartbeatPeriod)
	case c.HeartbeatJitter < 0 || c.HeartbeatJitter >= 1:
		return c, fmt.Errorf("DispatcherConfig.HeartbeatJitter: must be in [0, 1), got %v", c.HeartbeatJitter)
	case c.GracePeriodMultiplier < 1:
		return c, fmt.Errorf("DispatcherConfig.GracePeriodMultiplier: must be at least 1, got %d", c.GracePeriodMultiplier)
	case c.StatusBatchInterval < 0:
		return c, fmt.Errorf("DispatcherConfig.StatusBatchInterval: must not be negative, got %v", c.StatusBatchInterval)
	case c.StatusBatchSize < 1:
		return c, fmt.Errorf("DispatcherConfig.StatusBatchSize: must be at least 1, got %d", c.StatusBatchSize)
	}
	return c, nil
}

// deadline is how long a node may go without a heartbeat.
func (c DispatcherConfig) deadline() time.Duration {
	return c.HeartbeatPeriod * time.Duration(c.GracePeriodMultiplier)
}
