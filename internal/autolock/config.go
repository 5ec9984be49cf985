package autolock

import (
	"bytes"
	"fmt"
	"log/slog"
	"time"

	"github.com/shoalhq/shoal/internal/clock"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/keys"
)

// Config configures a Keeper. Start from DefaultConfig.
type Config struct {
	// ClusterID is the ID of the cluster object whose autolock setting and
	// unlock key the Keeper follows. It must not be empty.
	ClusterID string
	// DataKeyPath is the path of the manager's data key file (written by
	// keys.SaveDataKey). It must not be empty. The file may be missing at
	// New; a rewrap fails (and is retried) while it is.
	DataKeyPath string
	// Wrapped is the unlock key the file is wrapped with when the Keeper is
	// made: nil for a plain file, else keys.KeySize bytes. New copies it.
	Wrapped []byte
	// Clock is the time source of the retries. Nil means clock.Real().
	Clock clock.Clock
	// Logger receives rewraps and failures (never a key). Nil discards them.
	Logger *slog.Logger
	// RetryInterval is how long a failed rewrap, or a watch the store
	// closed, waits before it is tried again. It must be positive.
	RetryInterval time.Duration
}

// DefaultConfig returns the configuration the node uses unless told
// otherwise; ClusterID, DataKeyPath and Wrapped have no default.
func DefaultConfig() Config {
	return Config{
		// Real time; tests inject a fake clock.
		Clock: clock.Real(),
		// Discard: the embedding node passes its own logger, and a library
		// writes to the host's logs only when asked to.
		Logger: nil,
		// 5s: a rewrap fails for reasons that clear by themselves or by an
		// operator's hand (a full disk, an I/O error, permissions). A retry
		// costs one small file write and two fsyncs, so every 5s is cheap,
		// takes effect soon after the cause is fixed, and logs an error no
		// more than every 5s while it is not.
		RetryInterval: 5 * time.Second,
	}
}

// validate checks cfg and returns a copy with the nil defaults filled in and
// Wrapped copied.
func (cfg Config) validate() (Config, error) {
	bad := func(field, rule string) (Config, error) {
		return Config{}, fmt.Errorf("autolock: Config.%s %s: %w", field, rule, errdefs.ErrInvalidSpec)
	}
	if cfg.ClusterID == "" {
		return bad("ClusterID", "must not be empty")
	}
	if cfg.DataKeyPath == "" {
		return bad("DataKeyPath", "must not be empty")
	}
	if cfg.Wrapped != nil && len(cfg.Wrapped) != keys.KeySize {
		return bad("Wrapped", fmt.Sprintf("must be nil or %d bytes, got %d", keys.KeySize, len(cfg.Wrapped)))
	}
	if cfg.RetryInterval <= 0 {
		return bad("RetryInterval", fmt.Sprintf("must be positive, got %v", cfg.RetryInterval))
	}
	cfg.Wrapped = bytes.Clone(cfg.Wrapped)
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return cfg, nil
}
