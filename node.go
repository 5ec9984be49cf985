package shoal

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/node"
	"github.com/shoalhq/shoal/pki"
)

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

// ManagerStatus is what docker node ls shows in its MANAGER STATUS column:
// empty for a worker, else Leader, Reachable or Unreachable.
type ManagerStatus int

// Manager statuses.
const (
	// NotManager is a worker's.
	NotManager ManagerStatus = iota
	// Leader is the manager that leads the Raft group.
	Leader
	// Reachable managers take part in the Raft group: the leader heard
	// from them within an election timeout.
	Reachable
	// Unreachable managers are members the leader has not heard from
	// lately: down, partitioned or still catching up.
	Unreachable
)

func (s ManagerStatus) String() string {
	switch s {
	case NotManager:
		return ""
	case Leader:
		return "Leader"
	case Reachable:
		return "Reachable"
	case Unreachable:
		return "Unreachable"
	}
	return fmt.Sprintf("ManagerStatus(%d)", int(s))
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
	// State is the node's liveness: READY while its agent holds a session
	// with the leader's dispatcher; a manager without an agent
	// (Config.DisableAgent) is READY while the leader hears it, and its
	// StateMessage says that it runs no tasks.
	State NodeState
	// StateMessage says why the node is in its state ("heartbeat failure").
	StateMessage string
	// Addr is the address the node was last seen at.
	Addr string
	// Leader is true for the manager that leads the Raft group.
	Leader bool
	// ManagerStatus is Leader, Reachable or Unreachable for a manager, as
	// the leader last recorded it; NotManager for a worker.
	ManagerStatus ManagerStatus
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

// CertificateInfo describes a node's current certificate.
type CertificateInfo struct {
	// NodeID, Role and ClusterID are what the certificate says (CN, OU, O).
	NodeID, Role, ClusterID string
	NotBefore, NotAfter     time.Time
	// RootDigest is the digest of the root CA the node trusts (the one join
	// tokens carry).
	RootDigest string
}

// MeshEndpoint is one entry of the routing mesh's endpoint table: a running
// task's address for one published ingress port.
type MeshEndpoint struct {
	ServiceID string
	TaskID    string
	// NodeID is the node that runs the task and publishes the endpoint.
	NodeID    string
	Published uint16
	Protocol  Protocol
	Addr      netip.AddrPort
}

// Node is a running cluster member: a manager (replicated state, scheduler,
// dispatcher, control API) or a worker (runs tasks), or both. Make one with
// Init, Join, or New followed by Start (to restart a node from its StateDir).
// A Node's methods are safe for concurrent use. The node itself lives in
// internal/node; this handle delegates to it.
type Node struct {
	n *node.Node

	// clientMu guards client: the Client of the node's current connection,
	// made again when a role change replaces that connection.
	clientMu sync.Mutex
	client   *Client
}

// New validates cfg and returns a node that has not started. Start restarts
// it from its StateDir; for a new cluster use Init, to join one use Join.
func New(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	n, err := node.New(cfg.nodeConfigWithDefaults())
	if err != nil {
		return nil, err
	}
	return &Node{n: n}, nil
}

// Start restarts the node from the identity and state in its StateDir (a
// node made earlier by Init or Join). It returns once the node serves. A
// node starts once: after Stop, make a new one with New.
func (n *Node) Start(ctx context.Context) error {
	return n.n.Start(ctx, node.StartOptions{Mode: node.Restart})
}

// ID returns the node's ID (empty before it has started).
func (n *Node) ID() string {
	if id := n.n.Identity(); id != nil {
		return id.NodeID
	}
	return ""
}

// ClusterID returns the ID of the node's cluster.
func (n *Node) ClusterID() string {
	if id := n.n.Identity(); id != nil {
		return id.ClusterID
	}
	return ""
}

// Role returns the node's role.
func (n *Node) Role() NodeRole { return NodeRole(n.n.Role()) }

// Addr returns the address other nodes and clients reach this node at.
func (n *Node) Addr() string { return n.n.Addr() }

// Ready is closed once the node serves: a manager has its state loaded and
// a leader, and the node's agent (if any) has started.
func (n *Node) Ready() <-chan struct{} { return n.n.Ready() }

// Done is closed when the node has stopped.
func (n *Node) Done() <-chan struct{} { return n.n.Done() }

// Err says why the node stopped: nil after a clean Stop.
func (n *Node) Err() error { return n.n.Err() }

// Client returns the control API of this node's cluster. On a worker every
// call fails with ErrNotManager. The client shares the node's connection
// and stops working when the node stops or is demoted.
func (n *Node) Client() *Client {
	conn, err := n.n.Conn()
	if err != nil {
		return &Client{err: err}
	}
	n.clientMu.Lock()
	defer n.clientMu.Unlock()
	if n.client == nil || n.client.conn != conn {
		n.client = newClient(conn, false)
	}
	return n.client
}

// Stop stops the node: its tasks are stopped (bounded by ctx), then its
// control plane. It is idempotent; every goroutine the node started has
// ended when it returns (unless ctx ended first, which it then returns).
func (n *Node) Stop(ctx context.Context) error { return n.n.Stop(ctx) }

// Leave takes a worker out of the cluster for good, like docker swarm leave:
// the node stops gracefully (its tasks are stopped and reported, and the
// managers mark it down at once), then its identity and task files are
// deleted from StateDir, so the directory can be used to join again. The
// cluster keeps listing the node as down until it is removed with
// Client.RemoveNode. A manager cannot leave: demote it to a worker first
// (Client.UpdateNode with Role Worker), which is refused if the other
// managers could not keep a quorum.
func (n *Node) Leave(ctx context.Context) error { return n.n.Leave(ctx) }

// RaftMembers reports, on a manager, how many managers vote in the Raft
// group and how many are learners still catching up (diagnostics and tests).
func (n *Node) RaftMembers(ctx context.Context) (voters, learners int, err error) {
	return n.n.RaftMembers(ctx)
}

// RaftID returns a manager's Raft member ID (0 on a worker).
func (n *Node) RaftID() uint64 {
	if id := n.n.Identity(); id != nil {
		return id.RaftID
	}
	return 0
}

// IsLeader reports whether this node is the manager that leads the cluster.
func (n *Node) IsLeader() bool { return n.n.IsLeader() }

// Certificate returns the node's current certificate details; zero before
// the node started.
func (n *Node) Certificate() CertificateInfo {
	creds := n.n.Security().Credentials()
	if creds == nil {
		return CertificateInfo{}
	}
	leaf, subj := creds.Leaf(), creds.Subject()
	info := CertificateInfo{NodeID: subj.NodeID, Role: subj.Role, ClusterID: subj.ClusterID,
		NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter}
	if root, err := pki.ParseRootCA(api.FirstRoot(creds.KeyPair().RootPEM), nil); err == nil {
		info.RootDigest = root.Digest()
	}
	return info
}

// RenewCertificate replaces the node's certificate with a new one, for a
// new key, from a manager's CA. Nodes renew by themselves (at a random point
// between 50% and 80% of the validity, and when their role changes); this
// forces it now. Established connections are not interrupted.
func (n *Node) RenewCertificate(ctx context.Context) error {
	return n.n.Security().RenewCertificate(ctx)
}

// Locked reports whether the node is a manager waiting for its unlock key.
func (n *Node) Locked() bool { return n.n.Locked() }

// Unlock gives a locked manager (autolock on, restarted) the cluster's unlock
// key: it opens the data key and finishes starting. A wrong key returns
// ErrWrongUnlockKey and leaves the node locked.
func (n *Node) Unlock(ctx context.Context, unlockKey string) error { return n.n.Unlock(ctx, unlockKey) }

// UnlockKey returns the cluster's unlock key as this manager's state has it
// ("" when autolock is off, or on a worker).
func (n *Node) UnlockKey() string { return n.n.UnlockKey() }

// MeshEndpoints returns this node's current view of the routing mesh: every
// endpoint its balancer spreads published ports across, sorted by service,
// port, protocol, node and task. Empty when the mesh is disabled. Call it
// once Start (or Init, Join) has returned.
func (n *Node) MeshEndpoints() []MeshEndpoint {
	tbl := n.n.MeshTable()
	out := make([]MeshEndpoint, 0, len(tbl))
	for _, e := range tbl {
		p := TCP
		if e.Protocol == "udp" {
			p = UDP
		}
		out = append(out, MeshEndpoint{ServiceID: e.Service, TaskID: e.Task, NodeID: e.Node,
			Published: uint16(e.Port), Protocol: p, Addr: e.Addr})
	}
	return out
}
