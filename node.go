package shoal

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/shoalhq/shoal/runtime"
)

// Config configures a node. The zero value of every field but StateDir means
// its default (see DefaultConfig); validation never changes the caller's
// struct.
type Config struct {
	// StateDir holds everything the node keeps across restarts: its identity,
	// the Raft log (managers) and the tasks' working directories. Required.
	StateDir string
	// ListenAddr is the TCP address the node serves on (control API, join,
	// dispatcher), e.g. "127.0.0.1:4242". Ignored if Listener is set.
	ListenAddr string
	// AdvertiseAddr is the address other nodes use to reach this one; default
	// the listener's address.
	AdvertiseAddr string
	// Listener, if set, is used instead of listening on ListenAddr; the node
	// closes it on Stop. Test harnesses pass in-memory listeners here.
	Listener net.Listener
	// Dial, if set, opens connections to other nodes instead of TCP; with
	// Listener it lets a harness run a whole cluster without sockets and cut
	// links between nodes.
	Dial func(ctx context.Context, addr string) (net.Conn, error)

	// Hostname names the node in listings and in node.hostname constraints;
	// default os.Hostname().
	Hostname string
	// Labels are the node's initial labels (node.labels.<key> constraints).
	Labels map[string]string
	// Resources is the capacity the scheduler may reserve on this node;
	// zero fields are detected (CPUs, total memory).
	Resources Resources

	// Runtime runs the node's tasks; nil means the process runtime
	// (runtime/process) with its files under StateDir/tasks.
	Runtime runtime.Runtime
	// DisableAgent keeps a manager from running tasks. By default managers run
	// tasks too, as small clusters want.
	DisableAgent bool

	// HeartbeatPeriod is how often workers heartbeat; a node is DOWN after
	// three missed periods. Set at Init (a cluster setting); default 5s, which
	// notices a dead node in about 15s without loading the managers. Tests use
	// tens of milliseconds.
	HeartbeatPeriod time.Duration
	// TaskHistoryLimit is how many dead tasks are kept per slot for
	// inspection. Set at Init; default 5, as in Docker.
	TaskHistoryLimit int

	// Raft tunes the managers' replicated log.
	Raft RaftConfig

	// Logger receives the node's logs; default discards them, because a
	// library must not write to its host's output unasked.
	Logger *slog.Logger
	// Metrics, if set, receives the node's Prometheus metrics.
	Metrics prometheus.Registerer
}

// RaftConfig tunes the managers' Raft log.
type RaftConfig struct {
	// TickInterval is Raft's clock tick; default 100ms.
	TickInterval time.Duration
	// ElectionTicks is how many ticks without a leader start an election;
	// default 10 (one second at the default tick).
	ElectionTicks int
	// SnapshotInterval is how many log entries pass between snapshots;
	// default 10,000, which keeps replay after a restart short.
	SnapshotInterval uint64
}

// DefaultConfig returns a Config with every default filled in, for a node
// whose state lives in stateDir and which listens on listenAddr.
func DefaultConfig(stateDir, listenAddr string) Config {
	return Config{
		StateDir:         stateDir,
		ListenAddr:       listenAddr,
		HeartbeatPeriod:  5 * time.Second,
		TaskHistoryLimit: 5,
		Raft: RaftConfig{
			TickInterval:     100 * time.Millisecond,
			ElectionTicks:    10,
			SnapshotInterval: 10000,
		},
	}
}

// withDefaults returns a copy of c with defaults filled in.
func (c Config) withDefaults() Config {
	d := DefaultConfig(c.StateDir, c.ListenAddr)
	if c.HeartbeatPeriod == 0 {
		c.HeartbeatPeriod = d.HeartbeatPeriod
	}
	if c.TaskHistoryLimit == 0 {
		c.TaskHistoryLimit = d.TaskHistoryLimit
	}
	if c.Raft.TickInterval == 0 {
		c.Raft.TickInterval = d.Raft.TickInterval
	}
	if c.Raft.ElectionTicks == 0 {
		c.Raft.ElectionTicks = d.Raft.ElectionTicks
	}
	if c.Raft.SnapshotInterval == 0 {
		c.Raft.SnapshotInterval = d.Raft.SnapshotInterval
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Labels != nil {
		labels := make(map[string]string, len(c.Labels))
		for k, v := range c.Labels {
			labels[k] = v
		}
		c.Labels = labels
	}
	return c
}

func configError(field, rule string, args ...any) error {
	return fmt.Errorf("Config.%s: %s: %w", field, fmt.Sprintf(rule, args...), ErrInvalidSpec)
}

// Validate checks the configuration. Errors name the field and the rule.
func (c Config) Validate() error {
	if c.StateDir == "" {
		return configError("StateDir", "is required")
	}
	if c.Listener == nil && c.ListenAddr == "" {
		return configError("ListenAddr", "is required when Listener is not set")
	}
	if c.Listener == nil {
		if _, _, err := net.SplitHostPort(c.ListenAddr); err != nil {
			return configError("ListenAddr", "%q must be host:port", c.ListenAddr)
		}
	}
	if c.AdvertiseAddr != "" {
		if _, _, err := net.SplitHostPort(c.AdvertiseAddr); err != nil {
			return configError("AdvertiseAddr", "%q must be host:port", c.AdvertiseAddr)
		}
	}
	if c.HeartbeatPeriod < 0 || (c.HeartbeatPeriod > 0 && c.HeartbeatPeriod < 10*time.Millisecond) {
		return configError("HeartbeatPeriod", "must be at least 10ms")
	}
	if c.TaskHistoryLimit < 0 {
		return configError("TaskHistoryLimit", "must be >= 0")
	}
	if c.Resources.NanoCPUs < 0 {
		return configError("Resources.NanoCPUs", "must be >= 0")
	}
	if c.Resources.MemoryBytes < 0 {
		return configError("Resources.MemoryBytes", "must be >= 0")
	}
	if c.Raft.TickInterval < 0 {
		return configError("Raft.TickInterval", "must be >= 0")
	}
	if c.Raft.ElectionTicks < 0 {
		return configError("Raft.ElectionTicks", "must be >= 0")
	}
	for k := range c.Labels {
		if k == "" {
			return configError("Labels", "keys must not be empty")
		}
	}
	return nil
}

// NodeRole is a node's role in the cluster.
type NodeRole int

const (
	// Worker nodes run tasks and report their status.
	Worker NodeRole = iota
	// Manager nodes hold the replicated state and run the control plane
	// (and, unless Config.DisableAgent, tasks too).
	Manager
)

func (r NodeRole) String() string {
	if r == Manager {
		return "manager"
	}
	return "worker"
}

// Availability says whether the scheduler may place tasks on a node. The zero
// value means "unchanged" in a NodeUpdate.
type Availability int

const (
	// Active nodes take new tasks.
	Active Availability = iota + 1
	// Pause keeps a node's tasks but places no new ones there.
	Pause
	// Drain moves a node's tasks elsewhere and places no new ones there.
	Drain
)

func (a Availability) String() string {
	switch a {
	case Active:
		return "active"
	case Pause:
		return "pause"
	case Drain:
		return "drain"
	}
	return fmt.Sprintf("Availability(%d)", int(a))
}

// NodeState is what the managers know of a node's liveness.
type NodeState int

// Node states.
const (
	NodeUnknown NodeState = iota
	NodeDown
	NodeReady
	NodeDisconnected
)

func (s NodeState) String() string {
	switch s {
	case NodeUnknown:
		return "unknown"
	case NodeDown:
		return "down"
	case NodeReady:
		return "ready"
	case NodeDisconnected:
		return "disconnected"
	}
	return fmt.Sprintf("NodeState(%d)", int(s))
}

// Platform is a node's operating system and architecture (GOOS, GOARCH).
type Platform struct {
	OS   string
	Arch string
}

// NodeInfo is a node as the cluster stores it.
type NodeInfo struct {
	ID string
	Meta
	Role         NodeRole
	Availability Availability
	Labels       map[string]string
	Hostname     string
	Platform     Platform
	Resources    Resources
	State        NodeState
	// StateMessage says why the node is in its state ("heartbeat failure").
	StateMessage string
	// Addr is the address the node was last seen at.
	Addr string
	// Leader is true for the manager that leads the Raft group.
	Leader bool
}

// NodeUpdate changes a node's settings; zero fields are left as they are.
type NodeUpdate struct {
	// Availability is Active, Pause or Drain; 0 keeps the current one.
	Availability Availability
	// Labels, if not nil, replace the node's labels.
	Labels map[string]string
}

// ClusterInfo is the cluster-wide settings and join tokens.
type ClusterInfo struct {
	ID string
	Meta
	Name             string
	TaskHistoryLimit int
	HeartbeatPeriod  time.Duration
	// WorkerToken and ManagerToken admit new nodes in those roles.
	WorkerToken  string
	ManagerToken string
}
