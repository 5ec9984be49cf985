package process

import (
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// Config configures a Runtime. Start from DefaultConfig and set Dir.
type Config struct {
	// Dir is the root directory of per-task data: Dir/<taskID>/ holds
	// stdout.log, stderr.log and work/ (see the package docs). Required; a
	// relative path is made absolute by New. The directory is created on the
	// first Prepare, not by New.
	Dir string
	// Logger receives the runtime's own logs (task starts, exits, clean-up
	// failures). nil discards them.
	Logger *slog.Logger
	// KeepLogs keeps Dir/<taskID>/stdout.log and stderr.log when the task is
	// removed; the work directory is deleted either way.
	KeepLogs bool
	// PassEnv names host environment variables copied into every task's
	// base environment, read once by New. A name the host does not set is
	// skipped. PATH falls back to DefaultPath when it is not passed or not
	// set.
	PassEnv []string
	// LogPollInterval is how often a following log reader looks for new
	// output. 0 means the DefaultConfig value.
	LogPollInterval time.Duration
}

// DefaultPath is the PATH a task gets when the host's PATH is not passed
// (see Config.PassEnv) or not set.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// DefaultConfig returns the default configuration. Dir has no default: the
// host program decides where task data lives; New rejects an empty Dir.
func DefaultConfig() Config {
	return Config{
		// Dir: no default, see above.
		// Logger: nil discards; the node passes its logger, never the global one.
		Logger: nil,
		// KeepLogs: an operator must be able to read why a task failed after
		// the agent removed it; the host prunes Dir on its own schedule.
		KeepLogs: true,
		// PassEnv: programs are found the way the host shell finds them, and
		// nothing else of the host's environment (credentials, tokens,
		// proxies) leaks into tasks unless the host opts in.
		PassEnv: []string{"PATH"},
		// LogPollInterval: tails feel live to a human while each follower
		// costs a couple of reads per tick; regular files cannot be waited on
		// portably without polling.
		LogPollInterval: 100 * time.Millisecond,
	}
}

// validate checks cfg without modifying it. Errors name the field and rule.
func (cfg *Config) validate() error {
	if cfg.Dir == "" {
		return fmt.Errorf("process: Config.Dir: required")
	}
	if strings.IndexByte(cfg.Dir, 0) >= 0 {
		return fmt.Errorf("process: Config.Dir: must not contain NUL bytes")
	}
	for i, name := range cfg.PassEnv {
		if name == "" || strings.ContainsAny(name, "=\x00") {
			return fmt.Errorf("process: Config.PassEnv[%d]: must be a variable name without '=' or NUL, got %q", i, name)
		}
	}
	if cfg.LogPollInterval < 0 {
		return fmt.Errorf("process: Config.LogPollInterval: must not be negative")
	}
	return nil
}
