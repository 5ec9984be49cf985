package shoal

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/shoalhq/shoal/gossip"
	"github.com/shoalhq/shoal/ingress"
	"github.com/shoalhq/shoal/internal/manager"
	"github.com/shoalhq/shoal/internal/mesh"
	"github.com/shoalhq/shoal/internal/node"
	"github.com/shoalhq/shoal/internal/nodesec"
	"github.com/shoalhq/shoal/pki"
	"github.com/shoalhq/shoal/runtime"
)

// Config configures a node. The zero value of every field but StateDir and
// ListenAddr means its default (see DefaultConfig, which fills them all);
// validation never changes the caller's struct.
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
	// default os.Hostname() at start.
	Hostname string
	// Labels are the node's initial labels (node.labels.<key> constraints).
	Labels map[string]string
	// Resources is the capacity the scheduler may reserve on this node;
	// zero fields are detected at start (CPUs, total memory).
	Resources Resources

	// Runtime runs the node's tasks; nil means the process runtime
	// (runtime/process) with its files under StateDir/tasks.
	Runtime runtime.Runtime
	// DisableAgent keeps a manager from running tasks. By default managers run
	// tasks too, as small clusters want.
	DisableAgent bool
	// LiveRestore makes Stop leave the node's tasks running, for a restart
	// of the host program (an in-place upgrade) that re-adopts them
	// (docker's live-restore). It needs a Runtime that can restore tasks
	// (runtime.Restorer, such as runtime/runc). A node that stays away
	// longer than the heartbeat grace is marked down and its tasks replaced;
	// those it still runs are then discarded when it returns. Leave stops
	// the tasks either way.
	LiveRestore bool
	// InsecureRegistries are the registry hosts ("127.0.0.1:5000") a
	// manager reaches over plain HTTP when it pins a service's image to a
	// digest; the nodes' runtimes have their own list (runtime/runc).
	InsecureRegistries []string

	// HeartbeatPeriod is how often workers heartbeat; a node is DOWN after
	// three missed periods. Set at Init (a cluster setting).
	HeartbeatPeriod time.Duration
	// CertValidity is how long node certificates are valid. Set at Init (a
	// cluster setting, changed later with UpdateCluster); at least 30
	// minutes. Nodes renew at a random point between 50% and 80% of it, so
	// short validities mean frequent renewals, not outages.
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
	// Node.Unlock is given that key.
	AutoLock bool
	// TaskHistoryLimit is how many dead tasks are kept per slot for
	// inspection. Set at Init.
	TaskHistoryLimit int
	// RestartDelay is the wait before a task that ended is replaced, when
	// the service's restart policy says 0 (the leader's setting counts). A
	// task whose node went down or was drained is replaced at once.
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

	// Logger receives the node's logs.
	Logger *slog.Logger
	// Metrics, if set, receives the node's Prometheus metrics.
	Metrics prometheus.Registerer
}

// RaftConfig tunes the managers' Raft log.
type RaftConfig struct {
	// TickInterval is Raft's clock tick.
	TickInterval time.Duration
	// ElectionTicks is how many ticks without a leader start an election.
	ElectionTicks int
	// SnapshotInterval is how many log entries pass between snapshots.
	SnapshotInterval uint64
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

// BalancerKind chooses the routing mesh's balancer (MeshConfig.Balancer).
type BalancerKind int

const (
	// BalancerUserspace proxies published ports in the node's process
	// (package ingress): no privileges needed. The default.
	BalancerUserspace BalancerKind = iota
	// BalancerNFTables programs DNAT rules with nftables (ingress/nft);
	// needs CAP_NET_ADMIN.
	BalancerNFTables
	// BalancerIPVS programs IPVS virtual servers (ingress/ipvs); needs
	// CAP_NET_ADMIN and the ip_vs kernel module.
	BalancerIPVS
	// BalancerNone publishes no ports on this node; it still gossips its
	// tasks' endpoints, so other nodes balance to them.
	BalancerNone
)

// String returns "userspace", "nftables", "ipvs" or "none".
func (k BalancerKind) String() string {
	switch k {
	case BalancerUserspace:
		return "userspace"
	case BalancerNFTables:
		return "nftables"
	case BalancerIPVS:
		return "ipvs"
	case BalancerNone:
		return "none"
	}
	return fmt.Sprintf("BalancerKind(%d)", int(k))
}

// MeshConfig configures the node's part of the routing mesh: its gossip
// member, which spreads the endpoints of running tasks, and the balancer
// that makes every published ingress port answer on this node.
type MeshConfig struct {
	// Disabled turns the routing mesh off on this node: no gossip member and
	// no balancer. Its tasks' endpoints are then unknown to the other nodes'
	// balancers. Default false: every node takes part, as the published-port
	// promise ("answers on every node") needs.
	Disabled bool
	// GossipAddr is host:port where the gossip member listens, TCP and UDP.
	// Default: the host of AdvertiseAddr (or of the listener) with port
	// 7946, serf's customary port; a node whose ListenAddr has port 0
	// gossips on a free port too. Port 0 picks a free port.
	GossipAddr string
	// GossipAdvertiseAddr is the address other nodes use to reach the gossip
	// member; default the bound GossipAddr.
	GossipAdvertiseAddr string
	// GossipTransport, when set, replaces the gossip member's UDP/TCP
	// network (test harnesses run many nodes on gossiptest.MemNetwork). It is
	// used for one start; the node shuts it down on Stop.
	GossipTransport memberlist.Transport
	// Gossip, if set, edits the gossip member's settings (probe intervals,
	// fan-out) before it starts; NodeID, addresses, keys and logger are the
	// node's. Default: gossip.DefaultConfig.
	Gossip func(*gossip.Config)

	// Balancer chooses the balancer; default BalancerUserspace.
	Balancer BalancerKind
	// CustomBalancer, when set, is used instead of Balancer's kind: any
	// implementation of the ingress contract.
	CustomBalancer ingress.Balancer
	// ListenAddr is the address the userspace balancer binds published
	// ports on; default 0.0.0.0 (every address of the node).
	ListenAddr netip.Addr
	// EndpointAddr is the address other nodes reach this node's tasks at,
	// for runtimes that report a task port without an address (the process
	// runtime). Default: the host of the gossip advertise address.
	EndpointAddr netip.Addr
	// VIP is the IPVS balancer's virtual address; default EndpointAddr.
	VIP netip.Addr

	// DrainDelay is how long a task's endpoints are out of every balancer
	// before the task is stopped (scale-down, update, removal), so requests
	// in flight to it are not cut and no new one is sent to it.
	DrainDelay time.Duration
	// DrainTimeout bounds how long a stopping task's drain waits for every
	// gossip member to confirm that the task's endpoints left its table: the
	// drain lasts at least DrainDelay and until that confirmation, so on a
	// loaded cluster where changes spread slowly no node still sends the
	// task connections when it stops. A value below DrainDelay counts as
	// DrainDelay.
	DrainTimeout time.Duration
	// KeyRotationGrace is how long each phase of a gossip key rotation lasts
	// before the leader starts the next one, so every node has applied it.
	// Only the leader's setting counts.
	KeyRotationGrace time.Duration
}

// DefaultConfig returns a Config with every default filled in, for a node
// whose state lives in stateDir and which listens on listenAddr. Fields it
// leaves empty are detected when the node starts: Hostname (os.Hostname),
// Resources (the machine's CPUs and memory), AdvertiseAddr (the listener's
// address) and the mesh addresses (from the node's address).
func DefaultConfig(stateDir, listenAddr string) Config {
	return Config{
		StateDir:   stateDir,
		ListenAddr: listenAddr,
		// 5s notices a dead node in about 15s (three missed heartbeats)
		// without loading the managers with heartbeats from thousands of
		// nodes. Tests use tens of milliseconds.
		HeartbeatPeriod: 5 * time.Second,
		// 90 days, as Docker: renewals at 50-80% of it are rare, and a node
		// may be offline for weeks and still come back.
		CertValidity: pki.DefaultCertValidity,
		// 5 dead tasks per slot, as Docker: enough to see why a task keeps
		// failing, without the store growing with every restart.
		TaskHistoryLimit: 5,
		// 5s, as Docker: a crash-looping task must not spin the control plane.
		RestartDelay: 5 * time.Second,
		Raft: RaftConfig{
			// A 100ms tick and 10 ticks per election notice a failed leader
			// in about a second, well above LAN round trips and fsyncs.
			TickInterval:  100 * time.Millisecond,
			ElectionTicks: 10,
			// 10,000 entries between snapshots keep replay after a restart
			// short without snapshotting a large state too often.
			SnapshotInterval: 10000,
		},
		Mesh: MeshConfig{
			// Userspace needs no privileges: the routing mesh works for
			// every host program.
			Balancer: BalancerUserspace,
			// An endpoint change reaches 200 gossip members in about 1.3 s
			// (p99), so 2s out of every balancer cuts no request.
			DrainDelay: 2 * time.Second,
			// Confirmation from every member normally takes well under a
			// second; 10s bounds a stop on a badly loaded cluster.
			DrainTimeout: 10 * time.Second,
			// 30s gives every node several sync rounds (1s) and sessions to
			// apply a phase before the next one starts.
			KeyRotationGrace: 30 * time.Second,
		},
		// A library must not write to its host's output unasked.
		Logger: slog.New(slog.DiscardHandler),
	}
}

// nodeConfigWithDefaults is nodeConfig with DefaultConfig's values where c
// has none.
func (c Config) nodeConfigWithDefaults() node.Config {
	return c.nodeConfig().WithDefaults(DefaultConfig(c.StateDir, c.ListenAddr).nodeConfig())
}

// Validate checks the configuration. Errors name the field and the rule.
func (c Config) Validate() error { return c.nodeConfig().Validate() }

// nodeConfig is c for internal/node (validated and with its defaults
// where the node needs them; Validate converts the host's own values).
func (c Config) nodeConfig() node.Config {
	nc := node.Config{
		StateDir: c.StateDir, ListenAddr: c.ListenAddr, AdvertiseAddr: c.AdvertiseAddr,
		Listener: c.Listener, Dial: c.Dial,
		Hostname: c.Hostname, Labels: c.Labels, NanoCPUs: c.Resources.NanoCPUs, MemoryBytes: c.Resources.MemoryBytes,
		Runtime: c.Runtime, DisableAgent: c.DisableAgent, LiveRestore: c.LiveRestore, InsecureRegistries: c.InsecureRegistries,
		HeartbeatPeriod: c.HeartbeatPeriod, CertValidity: c.CertValidity, AutoLock: c.AutoLock,
		TaskHistoryLimit: c.TaskHistoryLimit, RestartDelay: c.RestartDelay,
		Raft: manager.RaftConfig{TickInterval: c.Raft.TickInterval, ElectionTicks: c.Raft.ElectionTicks,
			SnapshotInterval: c.Raft.SnapshotInterval},
		ForceNewCluster: c.ForceNewCluster,
		// A failed promotion or demotion is retried after a second: long
		// enough not to spin against an unreachable leader.
		RoleRetry: time.Second,
		// Client streams that outlive the node's parts are cut after 2s.
		StopGrace: 2 * time.Second,
		Logger:    c.Logger, Metrics: c.Metrics,
	}
	if e := c.ExternalCA; e != nil {
		nc.ExternalCA = &nodesec.ExternalCA{URL: e.URL, AuthKey: e.AuthKey, RootCert: e.RootCert}
	}
	m := c.Mesh
	nc.Mesh = node.MeshConfig{
		Disabled: m.Disabled, DrainDelay: m.DrainDelay, DrainTimeout: m.DrainTimeout, KeyRotationGrace: m.KeyRotationGrace,
		Mesh: mesh.Config{
			GossipAddr: m.GossipAddr, GossipAdvertiseAddr: m.GossipAdvertiseAddr, GossipTransport: m.GossipTransport,
			Gossip: m.Gossip, Balancer: mesh.BalancerKind(m.Balancer), CustomBalancer: m.CustomBalancer,
			ListenAddr: m.ListenAddr, EndpointAddr: m.EndpointAddr, VIP: m.VIP,
			// A manager reads the gossip keys and peers from its store, and
			// every node rejoins the gossip when alone, once a second.
			SyncInterval: time.Second,
		},
	}
	return nc
}
