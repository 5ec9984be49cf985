package runc

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/shoalhq/shoal/runtime/image"
	"github.com/shoalhq/shoal/runtime/network"
)

// Config configures a Runtime. Start from DefaultConfig and set Dir.
type Config struct {
	// Dir is the runtime's state directory (the node puts it under its
	// StateDir): containers/<taskID>/ (bundle, logs, the shim's records),
	// volumes/<name>/, runc's own state, and by default the image store and
	// the network's leases. Required.
	Dir string
	// Runc is the runc binary: a path, or a name looked up in PATH.
	Runc string
	// Images configures the image store when ImageStore is nil; an empty
	// Images.Dir means Dir/images.
	Images image.Config
	// ImageStore, if set, is used instead of a store made from Images, so
	// that a host program can share one store or preload it.
	ImageStore *image.Store
	// Network configures the node's bridge; an empty Network.StateDir means
	// Dir/network. Several runtimes in one process (several nodes in a
	// test) need distinct bridge names and subnets.
	Network network.Config
	// DisableNetwork runs no bridge: every task must then set
	// Spec.HostNetwork, others are rejected.
	DisableNetwork bool
	// InitPath is the init binary a task with Spec.Init runs as PID 1; it
	// must be statically linked, since it runs inside the container. ""
	// looks for docker-init, then tini-static, in PATH; a task asking for
	// an init where none is found is rejected with a sentence saying so.
	InitPath string
	// CgroupParent is the cgroup under which every container gets one of
	// its own (CgroupParent/<taskID> in each hierarchy).
	CgroupParent string
	// LogMaxBytes is the size of a container's log file (per stream) at
	// which it is rotated; LogMaxFiles is how many files per stream are kept,
	// the current one included.
	LogMaxBytes int64
	LogMaxFiles int
	// KeepLogs keeps a container's logs when it is removed, under
	// Dir/logs/<taskID>/.
	KeepLogs bool
	// DisableSeccomp runs containers without the default seccomp profile.
	DisableSeccomp bool
	// LogPollInterval is how often a following log reader looks for new
	// output.
	LogPollInterval time.Duration
	// ShimPath is the program started as each container's shim; "" means
	// this program's own executable, which becomes a shim through the init
	// function of runtime/runc/shim. The command
	// runtime/runc/cmd/shoal-runc-shim is a shim and nothing else: a few
	// MiB, so it starts in a couple of milliseconds and keeps little memory
	// per container, where the default carries the whole host program.
	// Production nodes should install it and set its path here.
	ShimPath string
	// Logger receives the runtime's own logs. nil discards them.
	Logger *slog.Logger
}

// DefaultConfig returns the default configuration; Dir has no default.
func DefaultConfig() Config {
	return Config{
		// Runc: Debian's package installs it in PATH.
		Runc: "runc",
		// Images and Network: their packages' defaults.
		Images:  image.DefaultConfig(),
		Network: network.DefaultConfig(),
		// CgroupParent: one subtree for every container of Shoal, so an
		// operator finds them together and limits them as a whole.
		CgroupParent: "shoal",
		// LogMaxBytes, LogMaxFiles: 30 MiB per stream at most, enough to
		// read why a task failed, bounded so a chatty task cannot fill the
		// node's disk.
		LogMaxBytes: 10 << 20,
		LogMaxFiles: 3,
		// KeepLogs: logs go with the container, as docker's do when a
		// container is removed; the agent removes a task only once the
		// managers dropped it from the node's assignments.
		KeepLogs: false,
		// LogPollInterval: followers feel live to a human at a couple of
		// reads per tick.
		LogPollInterval: 100 * time.Millisecond,
	}
}

func (cfg *Config) validate() error {
	switch {
	case cfg.Dir == "":
		return fmt.Errorf("runc: Config.Dir: required")
	case strings.IndexByte(cfg.Dir, 0) >= 0:
		return fmt.Errorf("runc: Config.Dir: must not contain NUL bytes")
	case cfg.Runc == "":
		return fmt.Errorf("runc: Config.Runc: required (a path or a name in PATH)")
	case cfg.CgroupParent == "" || strings.Contains(cfg.CgroupParent, ".."):
		return fmt.Errorf("runc: Config.CgroupParent: must be a relative cgroup path without '..', got %q", cfg.CgroupParent)
	case cfg.LogMaxBytes < 0:
		return fmt.Errorf("runc: Config.LogMaxBytes: must not be negative")
	case cfg.LogMaxFiles < 0:
		return fmt.Errorf("runc: Config.LogMaxFiles: must not be negative")
	case cfg.LogPollInterval < 0:
		return fmt.Errorf("runc: Config.LogPollInterval: must not be negative")
	}
	return nil
}
