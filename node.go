package shoal

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	raftpb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/shoalhq/shoal/dispatch"
	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/controlapi"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/identity"
	"github.com/shoalhq/shoal/internal/keys"
	"github.com/shoalhq/shoal/internal/orchestrator"
	"github.com/shoalhq/shoal/internal/schedule"
	"github.com/shoalhq/shoal/internal/state"
	"github.com/shoalhq/shoal/pki"
	"github.com/shoalhq/shoal/raftstore"
	"github.com/shoalhq/shoal/raftstore/transport"
	"github.com/shoalhq/shoal/runtime"
	"github.com/shoalhq/shoal/runtime/process"
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
	// CertValidity is how long node certificates are valid. Set at Init (a
	// cluster setting, changed later with UpdateCluster); default 90 days, at
	// least 30 minutes. Nodes renew at a random point between 50% and 80% of
	// it, so short validities mean frequent renewals, not outages.
	CertValidity time.Duration
	// ExternalCA, set at Init, makes the cluster's certificates come from an
	// external cfssl signing server instead of a root CA Shoal creates:
	// managers forward every CSR to it. Its root certificate becomes the
	// cluster's root (join tokens carry its digest).
	ExternalCA *ExternalCA
	// AutoLock turns autolock on at Init (a cluster setting, changed later
	// with UpdateCluster): every manager keeps the key that encrypts its Raft
	// log wrapped with the cluster's unlock key (ClusterInfo.UnlockKey,
	// Node.UnlockKey), and a restarted manager serves nothing until
	// Node.Unlock is given that key. Default off: a restarted manager starts
	// by itself.
	AutoLock bool
	// TaskHistoryLimit is how many dead tasks are kept per slot for
	// inspection. Set at Init; default 5, as in Docker.
	TaskHistoryLimit int
	// RestartDelay is the wait before a task that ended (or whose node went
	// down) is replaced, when the service's restart policy says 0. Default
	// 5s, as in Docker: a crash-looping task must not spin the control plane.
	RestartDelay time.Duration

	// Raft tunes the managers' replicated log.
	Raft RaftConfig

	// Mesh configures the routing mesh on this node: its gossip member and
	// the balancer that makes published ports answer here.
	Mesh MeshConfig

	// ForceNewCluster restarts a manager as the only manager of a new
	// one-manager cluster, with all the state it has, as docker swarm init
	// --force-new-cluster does: the way back when a cluster has lost its
	// quorum for good. The other managers stay listed until removed (with
	// force). Only with New+Start on an existing manager's StateDir.
	ForceNewCluster bool

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
	// Fault, if set, is asked about every Raft message this manager sends
	// (from and to are Raft member IDs): drop it, or deliver it after delay.
	// For fault-injection tests (shoaltest); nil in production.
	Fault func(from, to uint64) (drop bool, delay time.Duration)
}

// electionTimeout is Raft's election timeout: ElectionTicks ticks.
func (c RaftConfig) electionTimeout() time.Duration {
	return c.TickInterval * time.Duration(c.ElectionTicks)
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
	if c.Mesh.DrainDelay == 0 {
		c.Mesh.DrainDelay = defaultDrainDelay
	}
	if c.Mesh.DrainTimeout == 0 {
		c.Mesh.DrainTimeout = defaultDrainTimeout
	}
	if c.Mesh.KeyRotationGrace == 0 {
		c.Mesh.KeyRotationGrace = defaultKeyRotationGrace
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
	if e := c.ExternalCA; e != nil {
		if e.URL == "" {
			return configError("ExternalCA.URL", "is required")
		}
		if _, err := pki.ParseRootCA(e.RootCert, nil); err != nil {
			return configError("ExternalCA.RootCert", "must be the PEM root certificate of the external CA: %v", err)
		}
	}
	if c.CertValidity < 0 || (c.CertValidity > 0 && c.CertValidity < pki.MinCertValidity) {
		return configError("CertValidity", "must be at least %v", pki.MinCertValidity)
	}
	if c.HeartbeatPeriod < 0 || (c.HeartbeatPeriod > 0 && c.HeartbeatPeriod < 10*time.Millisecond) {
		return configError("HeartbeatPeriod", "must be at least 10ms")
	}
	if c.RestartDelay < 0 {
		return configError("RestartDelay", "must be >= 0")
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
	return c.Mesh.validate()
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
	// Role, if not nil, promotes a worker (Manager) or demotes a manager
	// (Worker), live: the node starts or stops its manager part without a
	// restart. A promoted node must be ready. A demotion is refused when
	// the remaining managers could not reach a quorum (ErrNoQuorum) and for
	// the last manager; a leader that is demoted hands leadership over first.
	Role *NodeRole
}

// ExternalCA is a cfssl signing server (cfssl serve, or any server of
// cfssl's signing API) that issues the cluster's certificates.
type ExternalCA struct {
	// URL is the server's base URL, e.g. "https://ca.example.com:8888".
	URL string
	// AuthKey is the hex key of cfssl's "standard" authenticated signing
	// (the server's auth_key); empty for unauthenticated /api/v1/cfssl/sign.
	AuthKey string
	// RootCert is the PEM root certificate the server's certificates chain
	// to; every certificate it returns is checked against it.
	RootCert []byte
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
	// CertValidity is how long node certificates are issued for.
	CertValidity time.Duration
	// RootCADigest is the digest of the cluster's root CA certificate (the
	// one the join tokens carry); RootCACert is that certificate (PEM).
	RootCADigest string
	RootCACert   []byte
	// RootRotating is true while a root CA rotation is in progress.
	RootRotating bool
	// GossipKeyRotating is true while a gossip key rotation
	// (ClusterUpdate.RotateGossipKey) runs.
	GossipKeyRotating bool
	// AutoLock says whether managers need UnlockKey to start after a restart.
	AutoLock  bool
	UnlockKey string
}

// maxResponseSize caps a control API response a client accepts: listing the
// tasks of a 100,000-replica service takes about 5 MiB, past gRPC's 4 MiB
// default.
const maxResponseSize = 256 << 20

// noAgentMessage is the status message of a manager that runs no agent.
const noAgentMessage = "manager without an agent (Config.DisableAgent): runs no tasks"

// identityFile is the node's identity under StateDir, written once at Init or
// Join and read at every restart.
const identityFile = "node.json"

type nodeIdentity struct {
	NodeID    string   `json:"node_id"`
	ClusterID string   `json:"cluster_id"`
	Role      NodeRole `json:"role"`
	RaftID    uint64   `json:"raft_id,omitempty"`
	Managers  []string `json:"managers"`
	// RaftPeers are the Raft members a joining manager started with; after
	// that, the store's manager objects say where the members are.
	RaftPeers map[uint64]string `json:"raft_peers,omitempty"`
}

func loadIdentity(dir string) (*nodeIdentity, error) {
	path := filepath.Join(dir, identityFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read node identity: %w", err)
	}
	var id nodeIdentity
	if err := json.Unmarshal(data, &id); err != nil {
		return nil, fmt.Errorf("node identity %s is corrupt: %w", path, err)
	}
	if !identity.Valid(id.NodeID) || !identity.Valid(id.ClusterID) {
		return nil, fmt.Errorf("node identity %s is corrupt: invalid node or cluster ID", path)
	}
	return &id, nil
}

func saveIdentity(dir string, id *nodeIdentity) error {
	data, err := json.MarshalIndent(id, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, identityFile+".tmp")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("write node identity: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write node identity: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write node identity: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write node identity: %w", err)
	}
	return os.Rename(tmp, filepath.Join(dir, identityFile))
}

type startMode int

const (
	modeRestart startMode = iota
	modeInit
	modeJoin
)

// Node is a running cluster member: a manager (replicated state, scheduler,
// dispatcher, control API) or a worker (runs tasks), or both. Make one with
// Init, Join, or New followed by Start (to restart a node from its StateDir).
// A Node's methods are safe for concurrent use.
type Node struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	started bool
	stopped bool
	ready   chan struct{}
	done    chan struct{}
	err     error

	ident *nodeIdentity
	addr  string
	lis   net.Listener
	srv   *grpc.Server

	// serving is closed once the node may answer the control, join and
	// dispatcher APIs (a manager's state is loaded); Raft is served before.
	serving     chan struct{}
	servingOnce sync.Once

	// Every node registers the manager services on its server when it
	// starts (gRPC allows no registration once serving); they answer "not a
	// manager" until the manager part runs, which a promotion starts and a
	// demotion stops while the node runs.
	controlSvc *switchable
	joinSvc    *switchable
	raftSvc    *switchable
	// dispSvc serves the dispatcher of the current leader term; between
	// terms it answers Unavailable, and agents retry.
	dispSvc *switchable
	mgr     atomic.Pointer[managerPart]

	// Role changes: the wanted role (from the dispatcher session or the Raft
	// membership), applied one at a time by roleLoop.
	roleMu     sync.Mutex
	roleWant   *roleWant
	roleCancel context.CancelFunc // cancels a promotion in progress
	roleKick   chan struct{}
	roleStop   context.CancelFunc
	roleWG     sync.WaitGroup

	agent  *dispatch.Agent
	mesh   *mesh // nil when Config.Mesh.Disabled
	client *Client

	// creds is the node's TLS identity (certificate, key, trusted roots);
	// renewals swap it in place. initRoot is the root CA Init created, for
	// the cluster object.
	creds     *pki.Credentials
	initRoot  *pki.RootCA
	renewMu   sync.Mutex
	renewKick chan struct{}
	caSvc     *switchable
	// renewFromRoot is the digest of a root a rotation wants the node's
	// certificate from ("" when none).
	renewFromRoot atomic.Value
	// wantRoots is the latest trust bundle the cluster sent ([]byte).
	wantRoots atomic.Value

	// cipher encrypts a manager's Raft log (its data key); wrapKey is the
	// unlock key the data key file is wrapped with (nil: plain); locked is
	// set while a restarted autolocked manager waits for Unlock.
	cipher   *keys.Cipher
	wrapKey  []byte
	locked   bool
	unlockMu sync.Mutex
}

// managerPart is what a manager runs on top of a worker: the object store,
// the Raft member and its transport, the peer and leadership loops. It is
// started when a manager starts or a worker is promoted, and stopped when
// the node stops or is demoted.
type managerPart struct {
	n         *Node
	nodeID    string
	clusterID string
	raftID    uint64
	bootPeers map[uint64]string

	store     *state.Store
	raft      *raftstore.Node
	transport *transport.Transport
	peersKick chan struct{}
	termMu    sync.Mutex
	term      *leaderTerm
	bgCancel  context.CancelFunc
	bg        sync.WaitGroup
	selfConn  *grpc.ClientConn
	// armed is set once the log is loaded: from then on a membership
	// without this member means the node was demoted (while the log is
	// replayed, older memberships pass by).
	armed atomic.Bool
}

// roleWant is the role a node was told it has.
type roleWant struct {
	manager bool
	raftID  uint64
	peers   map[uint64]string
}

// leaderTerm holds the components that run only on the Raft leader.
type leaderTerm struct {
	orch   *orchestrator.Orchestrator
	sched  *schedule.Driver
	disp   *dispatch.Dispatcher
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New validates cfg and returns a node that has not started. Start restarts
// it from its StateDir; for a new cluster use Init, to join one use Join.
func New(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	quietCFSSL()
	c := cfg.withDefaults()
	notManager := errdefs.ToGRPC(fmt.Errorf("this node is not a manager: %w", ErrNotManager))
	return &Node{cfg: c, log: c.Logger, ready: make(chan struct{}), done: make(chan struct{}),
		serving: make(chan struct{}), roleKick: make(chan struct{}, 1), renewKick: make(chan struct{}, 1),
		caSvc:      &switchable{down: notManager},
		controlSvc: &switchable{down: notManager}, joinSvc: &switchable{down: notManager},
		raftSvc: &switchable{down: status.Error(codes.Unavailable, "this node is not a Raft member")},
		dispSvc: &switchable{down: status.Error(codes.Unavailable, "the dispatcher is not running on this manager (no leader yet)")}}, nil
}

// Start restarts the node from the identity and state in its StateDir (a
// node made earlier by Init or Join). It returns once the node serves.
func (n *Node) Start(ctx context.Context) error { return n.start(ctx, modeRestart, "", "") }

// ID returns the node's ID (empty before it has started).
func (n *Node) ID() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ident == nil {
		return ""
	}
	return n.ident.NodeID
}

// ClusterID returns the ID of the node's cluster.
func (n *Node) ClusterID() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ident == nil {
		return ""
	}
	return n.ident.ClusterID
}

// Role returns the node's role.
func (n *Node) Role() NodeRole {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ident == nil {
		return Worker
	}
	return n.ident.Role
}

// Addr returns the address other nodes and clients reach this node at.
func (n *Node) Addr() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.addr
}

// Ready is closed once the node serves: a manager has its state loaded and
// a leader, and the node's agent (if any) has started.
func (n *Node) Ready() <-chan struct{} { return n.ready }

// Done is closed when the node has stopped.
func (n *Node) Done() <-chan struct{} { return n.done }

// Err says why the node stopped: nil after a clean Stop.
func (n *Node) Err() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.err
}

// Client returns the control API of this node's cluster. On a worker every
// call fails with ErrNotManager. The client shares the node's connection
// and stops working when the node stops.
func (n *Node) Client() *Client {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.client == nil {
		return &Client{err: fmt.Errorf("node has not started: %w", ErrStopped)}
	}
	return n.client
}

func (n *Node) listen() (net.Listener, error) {
	if n.cfg.Listener != nil {
		return n.cfg.Listener, nil
	}
	lis, err := net.Listen("tcp", n.cfg.ListenAddr)
	if err != nil {
		return nil, fmt.Errorf("Config.ListenAddr: %w", err)
	}
	return lis, nil
}

func (n *Node) description() *api.NodeDescription {
	host := n.cfg.Hostname
	if host == "" {
		host, _ = os.Hostname()
	}
	res := n.cfg.Resources
	if res.NanoCPUs == 0 {
		res.NanoCPUs = int64(goruntime.NumCPU()) * 1e9
	}
	if res.MemoryBytes == 0 {
		res.MemoryBytes = totalMemory()
	}
	return &api.NodeDescription{
		GossipAddr: n.gossipAddr(),
		Hostname:   host,
		Platform:   &api.Platform{Os: goruntime.GOOS, Arch: goruntime.GOARCH},
		Resources:  &api.Resources{NanoCpus: res.NanoCPUs, MemoryBytes: res.MemoryBytes},
	}
}

// totalMemory reads the machine's memory from /proc/meminfo (0 if unknown:
// tasks that reserve memory then do not fit, which is the safe answer).
func totalMemory() int64 {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			var kb int64
			if _, err := fmt.Sscanf(strings.TrimSpace(rest), "%d kB", &kb); err == nil {
				return kb * 1024
			}
		}
	}
	return 0
}

func (n *Node) start(ctx context.Context, mode startMode, joinAddr, token string) (err error) {
	n.mu.Lock()
	if n.started {
		n.mu.Unlock()
		return errors.New("shoal: node already started")
	}
	n.started = true
	n.mu.Unlock()
	defer func() {
		if err != nil {
			n.abortStart(err)
		}
	}()

	if err := os.MkdirAll(n.cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("Config.StateDir: %w", err)
	}
	ident, err := loadIdentity(n.cfg.StateDir)
	if err != nil {
		return err
	}
	switch {
	case mode == modeRestart && ident == nil:
		return fmt.Errorf("Config.StateDir: %s holds no node; use Init to create a cluster or Join to join one", n.cfg.StateDir)
	case mode == modeJoin && ident != nil && certificateExpired(n.cfg.StateDir):
		n.log.Warn("the node's certificate expired; joining again as a new node", "old_node", ident.NodeID)
		if err := removeStaleNode(n.cfg.StateDir); err != nil {
			return fmt.Errorf("Config.StateDir: clearing the expired node: %w", err)
		}
		ident = nil
	case mode != modeRestart && ident != nil:
		return fmt.Errorf("Config.StateDir: %s already holds node %s of cluster %s; restart it with New(cfg) and Start: %w",
			n.cfg.StateDir, ident.NodeID, ident.ClusterID, ErrExist)
	case mode != modeRestart && n.cfg.ForceNewCluster:
		return configError("ForceNewCluster", "needs a manager's existing StateDir: use New(cfg) and Start")
	case mode == modeRestart && n.cfg.ForceNewCluster && ident.Role != Manager:
		return configError("ForceNewCluster", "node %s is a worker; only a manager can start a new cluster", ident.NodeID)
	case mode != modeRestart:
		// No identity but a Raft log: an Init that was interrupted. Its log
		// is not this node's to reuse or to delete.
		if _, err := os.Stat(filepath.Join(n.cfg.StateDir, "raft")); err == nil {
			return fmt.Errorf("Config.StateDir: %s holds a Raft log but no node identity (an interrupted Init?); remove %s to start over: %w",
				n.cfg.StateDir, filepath.Join(n.cfg.StateDir, "raft"), ErrExist)
		}
	}

	lis, err := n.listen()
	if err != nil {
		return err
	}
	n.lis = lis
	addr := n.cfg.AdvertiseAddr
	if addr == "" {
		addr = lis.Addr().String()
	}
	n.mu.Lock()
	n.addr = addr
	n.mu.Unlock()

	switch mode {
	case modeInit:
		ident = &nodeIdentity{NodeID: identity.NewID(), ClusterID: identity.NewID(), Role: Manager, RaftID: 1}
		if n.initRoot, err = n.initCredentials(ctx, ident); err != nil {
			return err
		}
	case modeJoin:
		if ident, err = n.join(ctx, joinAddr, token); err != nil {
			return err
		}
	default:
		if err := n.loadCredentials(ident); err != nil {
			return err
		}
	}
	n.mu.Lock()
	n.ident = ident
	n.mu.Unlock()

	// Raft messages carry entries of up to raftstore's MaxEntryBytes; the
	// transport's limit leaves room for the message around the largest one.
	// Every connection is mutual TLS; every RPC is authorized by the
	// caller's certificate (authorize).
	n.srv = grpc.NewServer(grpc.MaxRecvMsgSize(transport.MaxMessageBytes),
		grpc.Creds(credentials.NewTLS(n.credentials().ServerTLS())),
		grpc.ChainUnaryInterceptor(n.authUnary, n.gateUnary), grpc.ChainStreamInterceptor(n.authStream, n.gateStream))
	n.controlSvc.register(n.srv, &api.Control_ServiceDesc)
	n.joinSvc.register(n.srv, &api.Join_ServiceDesc)
	n.caSvc.register(n.srv, &api.CA_ServiceDesc)
	n.raftSvc.register(n.srv, &api.Raft_ServiceDesc)
	n.dispSvc.register(n.srv, &api.Dispatcher_ServiceDesc)
	// Serve before a manager's log is loaded: a joining manager receives the
	// log through the Raft service; everything else waits behind the gate.
	go func() { _ = n.srv.Serve(lis) }()
	if ident.Role == Manager {
		// The Raft log is encrypted with the manager's data key; with
		// autolock, a restarted manager waits for Unlock.
		locked, err := n.dataKeyLocked()
		if err != nil {
			return err
		}
		if locked && mode == modeRestart {
			n.mu.Lock()
			n.locked = true
			n.mu.Unlock()
			n.log.Warn("the manager is locked (autolock): call Node.Unlock with the cluster's unlock key to start it")
			return nil
		}
		if err := n.openDataKey(nil); err != nil {
			return err
		}
	}
	return n.finishStart(ctx, mode, ident)
}

// abortStart ends a node whose start failed.
func (n *Node) abortStart(err error) {
	n.cleanup(context.Background())
	n.mu.Lock()
	n.stopped = true
	n.err = err
	n.mu.Unlock()
	close(n.done)
}

// finishStart starts the node's parts once its key material is open: the
// manager part (Raft log, store, API), the role and renewal loops, the agent.
func (n *Node) finishStart(ctx context.Context, mode startMode, ident *nodeIdentity) error {
	addr := n.Addr()
	if err := n.startMesh(ctx); err != nil {
		return err
	}
	manager := ident.Role == Manager
	if manager {
		err := n.startManagerPart(ctx, ident, mode == modeInit, mode != modeInit)
		if errors.Is(err, errNoLongerManager) {
			n.log.Warn("demoted or removed while down; starting as a worker", "raft_id", ident.RaftID)
			if err := n.saveAsWorker(nil); err != nil {
				return err
			}
			manager = false
		} else if err != nil {
			return err
		}
	}
	if !manager {
		n.servingOnce.Do(func() { close(n.serving) })
		n.mu.Lock()
		n.client = workerClient(ident.NodeID)
		n.mu.Unlock()
	}
	rctx, rcancel := context.WithCancel(context.Background())
	n.roleStop = rcancel
	n.roleWG.Add(2)
	go n.roleLoop(rctx)
	go n.renewLoop(rctx)
	if mode == modeInit {
		// Written last: a node whose Init failed leaves no identity behind.
		if err := saveIdentity(n.cfg.StateDir, ident); err != nil {
			return err
		}
	}
	if err := n.startAgent(ctx); err != nil {
		return err
	}
	close(n.ready)
	n.log.Info("node started", "node", ident.NodeID, "role", ident.Role, "addr", addr)
	return nil
}

// join asks the manager at addr to admit this node.
func (n *Node) join(ctx context.Context, addr, token string) (*nodeIdentity, error) {
	tok, err := pki.ParseToken(token)
	if err != nil {
		return nil, err
	}
	resp, kp, err := n.joinCluster(ctx, addr, tok, token)
	if err != nil {
		return nil, err
	}
	if !identity.Valid(resp.NodeId) {
		return nil, fmt.Errorf("join %s: manager returned an invalid node ID", addr)
	}
	ident := &nodeIdentity{NodeID: resp.NodeId, ClusterID: resp.ClusterId, Role: NodeRole(resp.Role), Managers: resp.Managers}
	if ident.Role == Manager {
		if resp.RaftId == 0 || len(resp.Peers) == 0 {
			return nil, fmt.Errorf("join %s: manager returned no Raft membership", addr)
		}
		ident.RaftID = resp.RaftId
		ident.RaftPeers = map[uint64]string{}
		for _, p := range resp.Peers {
			ident.RaftPeers[p.RaftId] = p.Addr
		}
	}
	if len(ident.Managers) == 0 {
		ident.Managers = []string{addr}
	}
	// The key material first: an identity without it cannot restart.
	if err := n.adoptKeyPair(kp); err != nil {
		return nil, err
	}
	if err := saveIdentity(n.cfg.StateDir, ident); err != nil {
		return nil, err
	}
	return ident, nil
}

// managerAddrs lists the managers' addresses, the leader's first.
func (mg *managerPart) managerAddrs() []string {
	if mg.raft == nil {
		return []string{mg.n.Addr()}
	}
	peers := mg.raftPeers()
	leader := mg.raft.Leader()
	var out []string
	if a, ok := peers[leader]; ok {
		out = append(out, a)
	}
	ids := make([]uint64, 0, len(peers))
	for id := range peers {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	for _, id := range ids {
		if id != leader {
			out = append(out, peers[id])
		}
	}
	if len(out) == 0 {
		out = []string{mg.n.Addr()}
	}
	return out
}

// kickPeers asks the peer loop to refresh the transport's peers.
func (mg *managerPart) kickPeers() {
	select {
	case mg.peersKick <- struct{}{}:
	default:
	}
}

// peerLoop keeps the transport's peers in step with the managers recorded in
// the store (their Raft IDs and addresses).
func (mg *managerPart) peerLoop(ctx context.Context) {
	defer mg.bg.Done()
	w := mg.store.Watch(state.KindIs(state.KindNode))
	defer func() { w.Cancel() }()
	for {
		select {
		case <-ctx.Done():
			return
		case <-mg.peersKick:
		case e, ok := <-w.C:
			if !ok {
				if ctx.Err() != nil {
					return
				}
				w = mg.store.Watch(state.KindIs(state.KindNode)) // reset by a snapshot restore
			} else if e.Node().GetRole() != api.NodeRole_NODE_ROLE_MANAGER {
				continue
			}
		}
		mg.syncPeers()
	}
}

// errNoLongerManager: the other managers no longer list this node as a
// manager (it was demoted or removed while it was down or cut off).
var errNoLongerManager = errors.New("the other managers no longer list this node as a manager")

// roleCheckLoop covers what neither the Raft log nor a dispatcher session can
// tell a manager: that it was demoted or removed while it was down or cut
// off (the leader no longer sends it anything, and a manager without an agent
// has no session). While this member hears no leader for several election
// timeouts, it asks the other managers for its own node object; an up-to-date
// (not stale) answer that it is no longer a manager demotes it: before its
// log is ready, noLonger is closed and Start continues as a worker; after,
// the role loop demotes it.
func (mg *managerPart) roleCheckLoop(ctx context.Context, noLonger chan struct{}) {
	defer mg.bg.Done()
	election := mg.n.cfg.Raft.electionTimeout()
	t := time.NewTicker(election)
	defer t.Stop()
	var leaderless time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if mg.hasLeader(ctx) {
			leaderless = time.Time{}
			continue
		}
		now := time.Now()
		if leaderless.IsZero() {
			leaderless = now
		}
		if now.Sub(leaderless) < 3*election {
			continue
		}
		leaderless = now                                         // ask again after as long, if still leaderless
		if !mg.stillManager(ctx, max(election, 3*time.Second)) { // a new mTLS connection each: not an election timeout under load
			mg.n.log.Warn("the other managers no longer list this node as a manager; becoming a worker")
			if mg.armed.Load() {
				mg.n.wantRole(roleWant{manager: false})
			} else {
				close(noLonger)
			}
			return
		}
	}
}

// hasLeader reports whether this member follows (or is) a working leader
// (see raftstore's WorkingLeader: the leader's ID alone does not tell).
func (mg *managerPart) hasLeader(ctx context.Context) bool {
	ok, err := mg.raft.WorkingLeader(ctx)
	return err == nil && ok
}

// stillManager asks the other managers whether this node is still a
// manager, and says no only when a strict majority of them answers that it
// is not: a manager whose state lags (it has not applied this node's
// promotion or join yet) may refuse this node's certificate or not know the
// node, but it cannot make a majority. A manager that refuses this node's
// manager certificate (PermissionDenied: removed, or no longer a manager),
// or an up-to-date read (not stale) that finds the node gone or a worker,
// counts as "not a manager"; errors and stale reads count as no answer.
func (mg *managerPart) stillManager(ctx context.Context, timeout time.Duration) bool {
	peers, notManager := 0, 0
	for id, addr := range mg.raftPeers() {
		if id == mg.raftID || addr == mg.n.addr {
			continue
		}
		peers++
		conn, err := grpc.NewClient(addr, mg.n.dialOptions()...)
		if err != nil {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, timeout)
		var md metadata.MD
		resp, err := api.NewControlClient(conn).GetNode(cctx, &api.GetRequest{Id: mg.nodeID}, grpc.Header(&md))
		cancel()
		conn.Close()
		stale := len(md.Get(controlapi.StaleReadHeader)) > 0
		switch {
		case status.Code(err) == codes.PermissionDenied:
			notManager++
		case status.Code(err) == codes.NotFound && !stale:
			notManager++
		case err == nil && !stale && resp.GetNode().GetRole() != api.NodeRole_NODE_ROLE_MANAGER:
			notManager++
		}
	}
	return peers == 0 || notManager*2 <= peers
}

// syncPeers sets the transport's peers from the store's manager objects.
func (mg *managerPart) syncPeers() {
	want := mg.raftPeers()
	have := mg.transport.Peers()
	for id, addr := range want {
		if id == mg.raftID {
			continue
		}
		if have[id] != addr {
			mg.transport.AddPeer(id, addr)
		}
	}
	for id := range have {
		if _, ok := want[id]; !ok {
			if _, boot := mg.bootPeers[id]; !boot {
				mg.transport.RemovePeer(id)
			}
		}
	}
}

// raftPeers returns the managers' Raft IDs and addresses from the store.
func (mg *managerPart) raftPeers() map[uint64]string {
	out := map[uint64]string{}
	mg.store.View(func(tx state.ReadTx) {
		nodes, _ := tx.FindNodes(state.ByRole(api.NodeRole_NODE_ROLE_MANAGER))
		for _, m := range nodes {
			if ms := m.GetManagerStatus(); ms.GetRaftId() != 0 && ms.GetAddr() != "" {
				out[ms.RaftId] = ms.Addr
			}
		}
	})
	return out
}

// leaderControl returns a control API client of the leader.
func (mg *managerPart) leaderControl(ctx context.Context) (api.ControlClient, func(), error) {
	addr, ok := mg.raftPeers()[mg.raft.Leader()]
	if !ok {
		return nil, nil, fmt.Errorf("no leader known: %w", ErrNoQuorum)
	}
	conn, err := grpc.NewClient(addr, mg.n.dialOptions()...)
	if err != nil {
		return nil, nil, err
	}
	return api.NewControlClient(conn), func() { conn.Close() }, nil
}

// forwardJoin sends a join to the leader.
func (mg *managerPart) forwardJoin(ctx context.Context, req *api.JoinRequest) (*api.JoinResponse, error) {
	addr, ok := mg.raftPeers()[mg.raft.Leader()]
	if !ok {
		return nil, errdefs.ToGRPC(fmt.Errorf("join: no leader known yet: %w", ErrNoQuorum))
	}
	conn, err := grpc.NewClient(addr, mg.n.dialOptions()...)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return api.NewJoinClient(conn).Join(ctx, req)
}

// ensureClusterObjects creates the cluster object (with join tokens) and this
// manager's node object if they are missing, and records the manager's
// current address.
func (mg *managerPart) ensureClusterObjects(ctx context.Context, initCluster bool) error {
	desc := mg.n.description()
	return mg.store.UpdateRetry(ctx, 5, func(tx state.WriteTx) error {
		if c := tx.GetCluster(mg.clusterID); c == nil {
			if !initCluster {
				return fmt.Errorf("state of cluster %s is missing from %s", mg.clusterID, mg.n.cfg.StateDir)
			}
			root := mg.n.initRoot
			if root == nil {
				return fmt.Errorf("init: no root CA")
			}
			digest := root.Digest()
			wt, err := pki.NewToken(digest)
			if err != nil {
				return err
			}
			mt, err := pki.NewToken(digest)
			if err != nil {
				return err
			}
			gossipKeys, err := controlapi.NewGossipKeys(time.Now())
			if err != nil {
				return err
			}
			unlock := ""
			if mg.n.cfg.AutoLock {
				if unlock, err = keys.NewUnlockKey(); err != nil {
					return err
				}
			}
			if err := tx.CreateCluster(&api.Cluster{
				UnlockKey: unlock,
				Id:        mg.clusterID,
				Spec: &api.ClusterSpec{Name: "default", TaskHistoryLimit: int64(mg.n.cfg.TaskHistoryLimit),
					HeartbeatPeriod: int64(mg.n.cfg.HeartbeatPeriod), NodeCertValidity: int64(mg.n.cfg.CertValidity),
					Autolock: mg.n.cfg.AutoLock},
				JoinTokens: &api.JoinTokens{Worker: wt.String(), Manager: mt.String()},
				RootCa:     mg.n.initRootCA(root),
				Gossip:     gossipKeys,
			}); err != nil {
				return err
			}
		}
		// A manager without an agent never opens a session, so the dispatcher
		// never marks it READY; its status says why instead.
		status := &api.NodeStatus{State: api.NodeState_NODE_STATE_UNKNOWN, Addr: mg.n.addr}
		if mg.n.cfg.DisableAgent {
			status.Message = noAgentMessage
		}
		me := tx.GetNode(mg.nodeID)
		if me == nil {
			return tx.CreateNode(&api.Node{
				Id:            mg.nodeID,
				Role:          api.NodeRole_NODE_ROLE_MANAGER,
				Spec:          &api.NodeSpec{DesiredRole: api.NodeRole_NODE_ROLE_MANAGER, Labels: mg.n.cfg.Labels},
				Description:   desc,
				Status:        status,
				ManagerStatus: &api.ManagerStatus{RaftId: mg.raftID, Addr: mg.n.addr, Leader: mg.raft.IsLeader()},
			})
		}
		ms := &api.ManagerStatus{RaftId: mg.raftID, Addr: mg.n.addr, Leader: me.GetManagerStatus().GetLeader()}
		if proto.Equal(me.ManagerStatus, ms) && proto.Equal(me.Description, desc) &&
			(!mg.n.cfg.DisableAgent || proto.Equal(me.Status, status)) {
			return nil
		}
		me.ManagerStatus = ms
		me.Description = desc
		if mg.n.cfg.DisableAgent {
			me.Status = status
		}
		return tx.UpdateNode(me)
	})
}

// leadershipLoop runs the leader-only components while this manager leads.
func (mg *managerPart) leadershipLoop(ctx context.Context) {
	defer mg.bg.Done()
	ch, cancel := mg.raft.LeadershipChanges()
	defer cancel()
	defer mg.stopTerm()
	for {
		select {
		case <-ctx.Done():
			return
		case leader, ok := <-ch:
			if !ok {
				return
			}
			if leader {
				if err := mg.startTerm(ctx); err != nil {
					mg.n.log.Error("cannot start leader components", "err", err)
				}
			} else {
				mg.stopTerm()
			}
		}
	}
}

func (mg *managerPart) clusterSettings() (heartbeat time.Duration) {
	heartbeat = mg.n.cfg.HeartbeatPeriod
	mg.store.View(func(tx state.ReadTx) {
		if c := tx.GetCluster(mg.clusterID); c != nil && c.GetSpec().GetHeartbeatPeriod() > 0 {
			heartbeat = time.Duration(c.Spec.HeartbeatPeriod)
		}
	})
	return heartbeat
}

func (mg *managerPart) startTerm(ctx context.Context) error {
	mg.termMu.Lock()
	defer mg.termMu.Unlock()
	if mg.term != nil {
		return nil
	}
	t := &leaderTerm{}
	var err error
	ocfg := orchestrator.DefaultConfig()
	ocfg.Logger = mg.n.log.With("component", "orchestrator")
	if mg.n.cfg.RestartDelay > 0 {
		ocfg.DefaultRestartDelay = mg.n.cfg.RestartDelay
	}
	if t.orch, err = orchestrator.New(mg.store, ocfg); err != nil {
		return err
	}
	if t.sched, err = schedule.New(mg.store, schedule.Config{Logger: mg.n.log.With("component", "scheduler")}); err != nil {
		return err
	}
	dcfg := dispatch.DefaultDispatcherConfig()
	dcfg.HeartbeatPeriod = mg.clusterSettings()
	dcfg.Managers = mg.managerAddrs
	dcfg.Logger = mg.n.log
	dcfg.Registerer = mg.n.cfg.Metrics
	if t.disp, err = dispatch.NewDispatcher(mg.store, dcfg); err != nil {
		return err
	}
	if err := t.disp.Start(ctx); err != nil {
		return err
	}
	if err := t.sched.Start(ctx); err != nil {
		_ = t.disp.Stop(context.Background())
		return err
	}
	if err := t.orch.Start(ctx); err != nil {
		_ = t.sched.Stop(context.Background())
		_ = t.disp.Stop(context.Background())
		return err
	}
	mg.n.dispSvc.set(t.disp)
	tctx, cancel := context.WithCancel(context.Background())
	t.cancel = cancel
	t.wg.Add(3)
	go mg.membershipLoop(tctx, &t.wg)
	go mg.rootRotationLoop(tctx, &t.wg)
	go mg.gossipKeyLoop(tctx, &t.wg)
	mg.term = t
	return nil
}

// membershipLoop runs on the leader: it records which manager leads, and
// promotes learners (new managers) to voters once they have caught up, so a
// new manager never counts toward quorum before it can vote usefully.
func (mg *managerPart) membershipLoop(ctx context.Context, wg *sync.WaitGroup) {
	defer wg.Done()
	interval := 10 * mg.n.cfg.Raft.TickInterval
	leaderMarked := false
	for {
		if !leaderMarked {
			leaderMarked = mg.markLeader(ctx) == nil
		}
		if members, err := mg.raft.Members(ctx); err == nil {
			for _, m := range members {
				if !m.Learner {
					continue
				}
				if ok, err := mg.raft.CaughtUp(ctx, m.ID); err == nil && ok {
					if err := mg.raft.PromoteLearner(ctx, m.ID); err != nil {
						mg.n.log.Warn("cannot promote manager to voter", "raft_id", m.ID, "err", err)
					} else {
						mg.n.log.Info("manager promoted to voter", "raft_id", m.ID)
					}
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
	}
}

// markLeader records in the store that this manager leads.
func (mg *managerPart) markLeader(ctx context.Context) error {
	return mg.store.UpdateRetry(ctx, 5, func(tx state.WriteTx) error {
		nodes, err := tx.FindNodes(state.ByRole(api.NodeRole_NODE_ROLE_MANAGER))
		if err != nil {
			return err
		}
		for _, m := range nodes {
			want := m.Id == mg.nodeID
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

func (mg *managerPart) stopTerm() {
	mg.termMu.Lock()
	defer mg.termMu.Unlock()
	t := mg.term
	if t == nil {
		return
	}
	mg.term = nil
	mg.n.dispSvc.set(nil)
	t.cancel()
	t.wg.Wait()
	ctx := context.Background()
	_ = t.orch.Stop(ctx)
	_ = t.sched.Stop(ctx)
	_ = t.disp.Stop(ctx)
}

func (n *Node) startAgent(ctx context.Context) error {
	if n.ident.Role == Manager && n.cfg.DisableAgent {
		return nil
	}
	rt := n.cfg.Runtime
	if rt == nil {
		prt, err := process.New(process.Config{Dir: filepath.Join(n.cfg.StateDir, "tasks"), Logger: n.log, KeepLogs: true})
		if err != nil {
			return err
		}
		rt = prt
	}
	acfg := dispatch.DefaultAgentConfig()
	acfg.NodeID = n.ident.NodeID
	acfg.Managers = n.managerAddrs
	acfg.OnSession = n.onSession
	acfg.Dial = n.cfg.Dial
	acfg.TransportCredentials = n.clientCreds()
	acfg.Runtime = rt
	acfg.Description = n.description()
	acfg.Addr = n.addr
	acfg.Logger = n.log
	if m := n.mesh; m != nil {
		acfg.OnEndpoints = m.onEndpoints
		acfg.DrainDelay = n.cfg.Mesh.DrainDelay
		acfg.ConfirmWithdrawal = m.confirmWithdrawal
		acfg.DrainTimeout = n.cfg.Mesh.DrainTimeout
	}
	a, err := dispatch.NewAgent(acfg)
	if err != nil {
		return err
	}
	if err := a.Start(ctx); err != nil {
		return err
	}
	n.agent = a
	return nil
}

// Stop stops the node: its tasks are stopped (bounded by ctx), then its
// control plane. It is idempotent; every goroutine the node started has
// ended when it returns (unless ctx ended first, which it then returns).
func (n *Node) Stop(ctx context.Context) error {
	n.mu.Lock()
	if !n.started || n.stopped {
		n.mu.Unlock()
		select {
		case <-n.done:
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		return nil
	}
	n.stopped = true
	n.mu.Unlock()
	err := n.cleanup(ctx)
	close(n.done)
	return err
}

// Leave takes a worker out of the cluster for good, like docker swarm leave:
// the node stops gracefully (its tasks are stopped and reported, and the
// managers mark it down at once), then its identity and task files are
// deleted from StateDir, so the directory can be used to join again. The
// cluster keeps listing the node as down until it is removed with
// Client.RemoveNode. A manager cannot leave: demote it to a worker first
// (Client.UpdateNode with Role Worker), which is refused if the other
// managers could not keep a quorum.
func (n *Node) Leave(ctx context.Context) error {
	if n.Role() == Manager {
		return fmt.Errorf("node %s is a manager: demote it to a worker first, then leave: %w", n.ID(), ErrInvalidSpec)
	}
	if err := n.Stop(ctx); err != nil {
		return err
	}
	for _, p := range []string{identityFile, "tasks"} {
		if err := os.RemoveAll(filepath.Join(n.cfg.StateDir, p)); err != nil {
			return fmt.Errorf("leave: %w", err)
		}
	}
	return nil
}

// cleanup stops whatever has been started, in reverse order.
func (n *Node) cleanup(ctx context.Context) error {
	var errs []error
	if n.roleStop != nil {
		// No role change starts or runs after this (one in progress is
		// cancelled).
		n.roleStop()
		n.roleWG.Wait()
	}
	if n.agent != nil {
		errs = append(errs, n.agent.Stop(ctx))
	}
	if n.mesh != nil {
		errs = append(errs, n.mesh.stop(ctx))
	}
	if mg := n.mgr.Load(); mg != nil {
		errs = append(errs, mg.stop(ctx))
		n.mgr.Store(nil)
	}
	if n.srv != nil {
		stopped := make(chan struct{})
		go func() { n.srv.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-ctx.Done():
			n.srv.Stop()
			<-stopped
		case <-time.After(2 * time.Second):
			// A client stream that outlived everything above.
			n.srv.Stop()
			<-stopped
		}
	} else if n.lis != nil {
		errs = append(errs, n.lis.Close())
	}
	return errors.Join(errs...)
}

// RaftMembers reports, on a manager, how many managers vote in the Raft
// group and how many are learners still catching up (diagnostics and tests).
func (n *Node) RaftMembers(ctx context.Context) (voters, learners int, err error) {
	mg := n.mgr.Load()
	if mg == nil {
		return 0, 0, ErrNotManager
	}
	members, err := mg.raft.Members(ctx)
	if err != nil {
		return 0, 0, err
	}
	for _, m := range members {
		if m.Learner {
			learners++
		} else {
			voters++
		}
	}
	return voters, learners, nil
}

// RaftID returns a manager's Raft member ID (0 on a worker).
func (n *Node) RaftID() uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ident == nil {
		return 0
	}
	return n.ident.RaftID
}

// IsLeader reports whether this node is the manager that leads the cluster.
func (n *Node) IsLeader() bool {
	mg := n.mgr.Load()
	return mg != nil && mg.raft.IsLeader()
}

// gate answers Unavailable, until the node serves, for everything but the
// Raft transport (which a joining manager needs before it has its state).
func (n *Node) gate(method string) error {
	if strings.HasPrefix(method, "/shoal.api.Raft/") {
		return nil
	}
	select {
	case <-n.serving:
		return nil
	default:
		if n.Locked() {
			return status.Error(codes.FailedPrecondition, "the manager is locked (autolock): it serves nothing until Node.Unlock is given the cluster's unlock key")
		}
		return status.Error(codes.Unavailable, "the node is starting")
	}
}

func (n *Node) gateUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err := n.gate(info.FullMethod); err != nil {
		return nil, err
	}
	return h(ctx, req)
}

func (n *Node) gateStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if err := n.gate(info.FullMethod); err != nil {
		return err
	}
	return h(srv, ss)
}

func workerClient(nodeID string) *Client {
	return &Client{err: fmt.Errorf("node %s is a worker; use a manager's client or Dial a manager: %w", nodeID, ErrNotManager)}
}

// managerAddrs lists the managers' addresses, the leader's first: from the
// store on a manager, else the ones the node last knew.
func (n *Node) managerAddrs() []string {
	if mg := n.mgr.Load(); mg != nil {
		return mg.managerAddrs()
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ident == nil {
		return nil
	}
	return append([]string(nil), n.ident.Managers...)
}

// startManagerPart starts the manager part for ident: the store, the Raft
// member (joined: it was added to an existing group, and starts with an
// empty log) and its transport, and once the state is loaded the control
// and join services, the peer loop and the leadership loop.
func (n *Node) startManagerPart(ctx context.Context, ident *nodeIdentity, initCluster, joined bool) (err error) {
	mg := &managerPart{n: n, nodeID: ident.NodeID, clusterID: ident.ClusterID, raftID: ident.RaftID,
		bootPeers: ident.RaftPeers, peersKick: make(chan struct{}, 1)}
	defer func() {
		if err != nil {
			n.controlSvc.set(nil)
			n.joinSvc.set(nil)
			n.caSvc.set(nil)
			n.mgr.Store(nil)
			_ = mg.stop(context.Background())
			n.raftSvc.set(nil)
		}
	}()
	mg.store = state.New(state.Config{Logger: n.log})
	tcfg := transport.DefaultConfig()
	tcfg.ID = mg.raftID
	tcfg.Dial = n.cfg.Dial
	tcfg.DialOptions = []grpc.DialOption{grpc.WithTransportCredentials(n.clientCreds())}
	tcfg.Logger = n.log.With("component", "raft-transport")
	if f := n.cfg.Raft.Fault; f != nil {
		self := mg.raftID
		tcfg.Filter = func(to uint64, _ *raftpb.Message) (bool, time.Duration) { return f(self, to) }
	}
	tr, err := transport.New(tcfg)
	if err != nil {
		return err
	}
	mg.transport = tr
	rcfg := raftstore.DefaultConfig()
	rcfg.ID = mg.raftID
	rcfg.Dir = filepath.Join(n.cfg.StateDir, "raft")
	rcfg.StateMachine = mg.store
	n.mu.Lock()
	if n.cipher != nil {
		rcfg.Encryptor = n.cipher
	}
	n.mu.Unlock()
	rcfg.Transport = tr
	rcfg.Forwarder = tr
	rcfg.Join = joined && !n.cfg.ForceNewCluster // Join matters only for a new log, which ForceNewCluster refuses
	rcfg.ForceNewCluster = n.cfg.ForceNewCluster
	rcfg.Logger = n.log
	rcfg.Registerer = n.cfg.Metrics
	rcfg.TickInterval = n.cfg.Raft.TickInterval
	rcfg.ElectionTick = n.cfg.Raft.ElectionTicks
	rcfg.SnapshotInterval = n.cfg.Raft.SnapshotInterval
	rcfg.OnMembershipChange = mg.onMembers
	rn, err := raftstore.New(rcfg)
	if err != nil {
		return err
	}
	mg.raft = rn
	mg.store.SetLog(rn)
	tr.SetLocal(rn)
	for id, addr := range mg.bootPeers {
		if id != mg.raftID {
			tr.AddPeer(id, addr)
		}
	}
	if err := tr.Start(ctx); err != nil {
		return err
	}
	n.raftSvc.set(tr.Server())
	if err := rn.Start(ctx); err != nil {
		return err
	}
	n.mgr.Store(mg)
	mg.syncPeers()
	bgctx, cancel := context.WithCancel(context.Background())
	mg.bgCancel = cancel
	mg.bg.Add(1)
	go mg.peerLoop(bgctx)
	noLonger := make(chan struct{})
	mg.bg.Add(1)
	go mg.roleCheckLoop(bgctx, noLonger)
	select {
	case <-rn.Ready():
	case <-noLonger:
		// Demoted or removed while down: no leader will ever talk to this
		// member again, so its log would never be ready.
		return errNoLongerManager
	case <-ctx.Done():
		return ctx.Err()
	}
	mg.armed.Store(true)
	if err := mg.ensureClusterObjects(ctx, initCluster); err != nil {
		// A member removed while down may have heard one stale message
		// from the old leader, enough to call its log ready; the leader
		// then refuses its write. Ask the other managers before failing.
		if !initCluster && ctx.Err() == nil && !mg.stillManager(ctx, max(3*time.Second, 3*n.cfg.Raft.electionTimeout())) {
			return errNoLongerManager
		}
		return err
	}
	conn, err := grpc.NewClient(n.addr, n.dialOptions()...)
	if err != nil {
		return err
	}
	mg.selfConn = conn
	n.controlSvc.set(controlapi.New(mg.store, controlapi.Options{Members: rn, Leader: mg.leaderControl}))
	signers := &controlapi.Signers{}
	n.joinSvc.set(controlapi.NewJoinServer(controlapi.JoinConfig{
		Store: mg.store, Managers: mg.managerAddrs, Membership: rn, Forward: mg.forwardJoin, Signers: signers,
	}))
	n.caSvc.set(controlapi.NewCAServer(mg.store, signers))
	n.servingOnce.Do(func() { close(n.serving) })
	n.mu.Lock()
	n.client = newClient(conn, false)
	n.mu.Unlock()
	mg.bg.Add(2)
	go mg.leadershipLoop(bgctx)
	go mg.lockLoop(bgctx)
	return nil
}

// stop stops whatever of the manager part has started, in reverse order.
func (mg *managerPart) stop(ctx context.Context) error {
	var errs []error
	if mg.bgCancel != nil {
		mg.bgCancel() // leader term (dispatcher sessions end), peer loop
		mg.bg.Wait()
	}
	if mg.store != nil {
		// Ends the control API's watch streams.
		mg.store.Close()
	}
	if mg.selfConn != nil {
		errs = append(errs, mg.selfConn.Close())
	}
	// Raft stops while the transport and the server still run: a leader
	// hands leadership over first.
	if mg.raft != nil {
		errs = append(errs, mg.raft.Stop(ctx))
	}
	if mg.transport != nil {
		// Ends the peers' Raft streams, so the server stops promptly.
		errs = append(errs, mg.transport.Stop(ctx))
	}
	return errors.Join(errs...)
}

// onMembers runs on the Raft loop at every membership change: it updates
// the transport's peers, and notices when this member was removed (the node
// was demoted).
func (mg *managerPart) onMembers(ids []uint64) {
	mg.kickPeers()
	if mg.armed.Load() && !slices.Contains(ids, mg.raftID) {
		mg.n.wantRole(roleWant{manager: false})
	}
}

// onSession is the agent's view of its dispatcher session: the role the
// managers record for this node. It must not block.
func (n *Node) onSession(m *api.SessionMessage) {
	if n.mesh != nil {
		n.mesh.update(m.GetGossipKeys(), m.GetGossipPeers())
	}
	if len(m.GetRootCaPem()) > 0 && n.mgr.Load() == nil {
		n.followRoots(m.GetRootCaPem())
	}
	isManager := n.Role() == Manager
	switch {
	case m.GetRole() == api.NodeRole_NODE_ROLE_MANAGER && m.GetRaftId() != 0 && !isManager:
		peers := make(map[uint64]string, len(m.GetPeers()))
		for _, p := range m.GetPeers() {
			peers[p.GetRaftId()] = p.GetAddr()
		}
		n.wantRole(roleWant{manager: true, raftID: m.GetRaftId(), peers: peers})
	case m.GetRole() == api.NodeRole_NODE_ROLE_WORKER && isManager && len(m.GetManagers()) > 0:
		n.wantRole(roleWant{manager: false})
	}
}

// wantRole records the role the node was told it has and wakes the role
// loop; a promotion in progress is cancelled by a demotion. It does not
// block.
func (n *Node) wantRole(w roleWant) {
	n.roleMu.Lock()
	n.roleWant = &w
	if !w.manager && n.roleCancel != nil {
		n.roleCancel()
	}
	n.roleMu.Unlock()
	select {
	case n.roleKick <- struct{}{}:
	default:
	}
}

// roleLoop applies role changes one at a time until ctx ends.
func (n *Node) roleLoop(ctx context.Context) {
	defer n.roleWG.Done()
	var retry <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.roleKick:
		case <-retry:
		}
		retry = nil
		n.roleMu.Lock()
		w := n.roleWant
		n.roleWant = nil
		var opCtx context.Context
		var cancel context.CancelFunc
		if w != nil && w.manager {
			opCtx, cancel = context.WithCancel(ctx)
			n.roleCancel = cancel
		}
		n.roleMu.Unlock()
		if w == nil {
			continue
		}
		isManager := n.mgr.Load() != nil
		var err error
		switch {
		case w.manager && !isManager:
			err = n.promote(opCtx, w)
		case !w.manager && isManager:
			err = n.demote(ctx)
		}
		if cancel != nil {
			n.roleMu.Lock()
			n.roleCancel = nil
			n.roleMu.Unlock()
			cancel()
		}
		if err != nil && ctx.Err() == nil {
			n.log.Error("role change failed; retrying", "manager", w.manager, "err", err)
			n.roleMu.Lock()
			if n.roleWant == nil {
				n.roleWant = w
			}
			n.roleMu.Unlock()
			retry = time.After(time.Second)
		}
	}
}

// promote turns this worker into a manager: its identity says manager first
// (a crash from here on restarts it as one, with the Raft ID it was given),
// then the manager part starts as a new member of the Raft group, which the
// leader has added as a learner.
func (n *Node) promote(ctx context.Context, w *roleWant) error {
	n.mu.Lock()
	old := *n.ident
	n.mu.Unlock()
	n.log.Info("promoted to manager; starting the manager part", "raft_id", w.raftID)
	// Raft and the control API need a manager certificate: the CA issues one
	// now that the store records the node as a manager.
	if err := n.ensureRole(ctx, pki.OUManager); err != nil {
		return fmt.Errorf("promote: %w", err)
	}
	// A Raft log left from an earlier time as manager belongs to another
	// Raft ID: the new member starts empty, with a new data key.
	if err := os.RemoveAll(filepath.Join(n.cfg.StateDir, "raft")); err != nil {
		return fmt.Errorf("promote: %w", err)
	}
	if err := n.removeDataKey(); err != nil {
		return fmt.Errorf("promote: %w", err)
	}
	if err := n.openDataKey(nil); err != nil {
		return fmt.Errorf("promote: %w", err)
	}
	ident := old
	ident.Role, ident.RaftID, ident.RaftPeers = Manager, w.raftID, w.peers
	if err := saveIdentity(n.cfg.StateDir, &ident); err != nil {
		return fmt.Errorf("promote: %w", err)
	}
	n.mu.Lock()
	n.ident = &ident
	n.mu.Unlock()
	if err := n.startManagerPart(ctx, &ident, false, true); err != nil {
		n.mu.Lock()
		n.ident = &old
		n.mu.Unlock()
		return errors.Join(fmt.Errorf("promote: %w", err), saveIdentity(n.cfg.StateDir, &old),
			os.RemoveAll(filepath.Join(n.cfg.StateDir, "raft")))
	}
	n.log.Info("now a manager", "raft_id", w.raftID)
	return nil
}

// demote turns this manager into a worker: the manager part stops, the
// identity says worker (keeping the managers' addresses for the agent), the
// Raft log is deleted, and an agent starts if the node had none.
func (n *Node) demote(ctx context.Context) error {
	mg := n.mgr.Load()
	n.log.Info("demoted to worker; stopping the manager part", "raft_id", mg.raftID)
	var managers []string
	for _, a := range mg.managerAddrs() {
		if a != n.addr {
			managers = append(managers, a)
		}
	}
	n.controlSvc.set(nil)
	n.joinSvc.set(nil)
	n.caSvc.set(nil)
	n.mgr.Store(nil)
	n.mu.Lock()
	n.client = workerClient(n.ident.NodeID)
	n.mu.Unlock()
	err := mg.stop(ctx)
	n.raftSvc.set(nil)
	if serr := n.saveAsWorker(managers); serr != nil {
		return errors.Join(err, serr)
	}
	// The manager certificate is replaced by a worker's (the managers
	// already refuse it for Raft and the control API); the renewal loop
	// retries if no manager answers now.
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	if rerr := n.ensureRole(rctx, pki.OUWorker); rerr != nil {
		n.log.Warn("demote: no worker certificate yet; the renewal loop will retry", "err", rerr)
		n.kickRenewal()
	}
	cancel()
	if n.agent == nil {
		if aerr := n.startAgent(ctx); aerr != nil {
			err = errors.Join(err, fmt.Errorf("demote: start the agent: %w", aerr))
		}
	}
	n.log.Info("now a worker")
	return err
}

// saveAsWorker records this node as a worker (which knows the managers'
// addresses, default the ones it knew) and deletes its Raft log, which
// belongs to a Raft ID that is no longer a member.
func (n *Node) saveAsWorker(managers []string) error {
	n.mu.Lock()
	ident := *n.ident
	n.mu.Unlock()
	if len(managers) == 0 {
		managers = ident.Managers
		for _, addr := range ident.RaftPeers {
			if addr != n.addr && !slices.Contains(managers, addr) {
				managers = append(managers, addr)
			}
		}
	}
	ident.Role, ident.RaftID, ident.RaftPeers, ident.Managers = Worker, 0, nil, managers
	if err := saveIdentity(n.cfg.StateDir, &ident); err != nil {
		return fmt.Errorf("demote: %w", err)
	}
	n.mu.Lock()
	n.ident = &ident
	n.mu.Unlock()
	if err := os.RemoveAll(filepath.Join(n.cfg.StateDir, "raft")); err != nil {
		return fmt.Errorf("demote: %w", err)
	}
	if err := n.removeDataKey(); err != nil {
		return fmt.Errorf("demote: %w", err)
	}
	return nil
}

// switchable serves a gRPC service through whichever implementation is set,
// answering with down while none is: every node registers the manager
// services when it starts and switches them on and off with its role.
type switchable struct {
	down error
	mu   sync.RWMutex
	impl any
}

func (s *switchable) set(impl any) {
	s.mu.Lock()
	s.impl = impl
	s.mu.Unlock()
}

func (s *switchable) get() (any, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.impl == nil {
		return nil, s.down
	}
	return s.impl, nil
}

// register registers desc's methods on r, each calling the implementation
// set at the time of the call. impl set later must implement
// desc.HandlerType.
func (s *switchable) register(r grpc.ServiceRegistrar, desc *grpc.ServiceDesc) {
	d := *desc
	d.Methods = make([]grpc.MethodDesc, len(desc.Methods))
	for i, md := range desc.Methods {
		h := md.Handler
		d.Methods[i] = grpc.MethodDesc{MethodName: md.MethodName,
			Handler: func(_ any, ctx context.Context, dec func(any) error, ic grpc.UnaryServerInterceptor) (any, error) {
				impl, err := s.get()
				if err != nil {
					return nil, err
				}
				return h(impl, ctx, dec, ic)
			}}
	}
	d.Streams = make([]grpc.StreamDesc, len(desc.Streams))
	for i, sd := range desc.Streams {
		h := sd.Handler
		sd.Handler = func(_ any, stream grpc.ServerStream) error {
			impl, err := s.get()
			if err != nil {
				return err
			}
			return h(impl, stream)
		}
		d.Streams[i] = sd
	}
	// nil: the implementation is checked when set, not here.
	r.RegisterService(&d, nil)
}
