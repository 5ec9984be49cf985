package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/shoalhq/shoal/dispatch"
	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/authz"
	"github.com/shoalhq/shoal/internal/clock"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/identity"
	"github.com/shoalhq/shoal/internal/keys"
	"github.com/shoalhq/shoal/internal/manager"
	"github.com/shoalhq/shoal/internal/mesh"
	"github.com/shoalhq/shoal/internal/nodesec"
	"github.com/shoalhq/shoal/internal/state"
	"github.com/shoalhq/shoal/internal/testhook"
	"github.com/shoalhq/shoal/pki"
	"github.com/shoalhq/shoal/raftstore/transport"
)

// Mode is how Start makes the node.
type Mode int

// The start modes.
const (
	// Restart restarts the node in StateDir.
	Restart Mode = iota
	// Init creates a new cluster with the node as its first manager.
	Init
	// Join joins the cluster of the manager at JoinAddr with Token.
	Join
)

// StartOptions say how to start.
type StartOptions struct {
	Mode     Mode
	JoinAddr string
	Token    string
}

// Node is a cluster member. Its methods are safe for concurrent use.
type Node struct {
	cfg   Config
	log   *slog.Logger
	clock clock.Clock

	mu      sync.Mutex
	started bool         // mu
	stopped bool         // mu
	err     error        // mu: why the node stopped
	ident   *Identity    // mu
	addr    string       // mu: the advertised address, set once at start
	locked  bool         // mu: a restarted autolocked manager waiting for Unlock
	cipher  *keys.Cipher // mu: the manager's data key (nil on a worker)
	wrapKey []byte       // mu: the unlock key the data key file is wrapped with (nil: plain)
	// initRoot is the root CA Init created, for the cluster object; set
	// before the manager part starts, read by it.
	initRoot *pki.RootCA

	ready chan struct{}
	done  chan struct{}

	lis  net.Listener
	srv  *grpc.Server
	gate *gate
	sec  *nodesec.Security

	// Every node registers the manager services on its server when it
	// starts (gRPC allows no registration once serving); they answer "not a
	// manager" until the manager part runs, which a promotion starts and a
	// demotion stops while the node runs.
	services manager.Services
	mgr      atomic.Pointer[manager.Manager]

	// Role changes: the wanted role (from the dispatcher session or the Raft
	// membership), applied one at a time by roles' goroutine, which
	// finishStart starts and cleanup ends (roleStop, roleDone).
	roles    *roleChanger
	roleStop context.CancelFunc
	roleDone chan struct{}

	agent *dispatch.Agent // set at start (or by a demotion), read after
	// leaving is set by Leave before it stops the node: the agent then
	// stops its tasks even with LiveRestore.
	leaving atomic.Bool
	mesh    *mesh.Mesh // nil when the mesh is disabled

	unlockMu sync.Mutex
}

// New returns a node that has not started; cfg must be validated and have
// its defaults.
func New(cfg Config) (*Node, error) {
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	notManager := errdefs.ToGRPC(fmt.Errorf("this node is not a manager: %w", errdefs.ErrNotManager))
	n := &Node{cfg: cfg, log: cfg.Logger, clock: cfg.Clock, ready: make(chan struct{}), done: make(chan struct{}),
		services: manager.Services{
			CA:         &switchable{down: notManager},
			Control:    &switchable{down: notManager},
			Join:       &switchable{down: notManager},
			Raft:       &switchable{down: status.Error(codes.Unavailable, "this node is not a Raft member")},
			Dispatcher: &switchable{down: status.Error(codes.Unavailable, "the dispatcher is not running on this manager (no leader yet)")},
		}}
	n.gate = newGate(n.Locked)
	n.roles = newRoleChanger(cfg.Clock, cfg.RoleRetry, cfg.Logger)
	n.roles.isManager = func() bool { return n.mgr.Load() != nil }
	n.roles.promote = n.promote
	n.roles.demote = n.demote
	sec, err := nodesec.New(nodesec.Config{StateDir: cfg.StateDir, Dial: cfg.Dial, RenewTargets: n.renewTargets,
		WantRole: n.wantCertRole, Clock: cfg.Clock, Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	n.sec = sec
	return n, nil
}

// Security is the node's TLS identity.
func (n *Node) Security() *nodesec.Security { return n.sec }

// Identity returns a copy of the node's identity (nil before it started).
func (n *Node) Identity() *Identity {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ident == nil {
		return nil
	}
	id := *n.ident
	return &id
}

// Addr returns the address other nodes and clients reach this node at.
func (n *Node) Addr() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.addr
}

// Ready is closed once the node serves.
func (n *Node) Ready() <-chan struct{} { return n.ready }

// Done is closed when the node has stopped.
func (n *Node) Done() <-chan struct{} { return n.done }

// Err says why the node stopped: nil after a clean Stop.
func (n *Node) Err() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.err
}

// Role returns the node's role.
func (n *Node) Role() Role {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ident == nil {
		return Worker
	}
	return n.ident.Role
}

// Conn returns the connection of the node's Client: to its own server on a
// manager, or an error saying why there is none.
func (n *Node) Conn() (*grpc.ClientConn, error) {
	if mg := n.mgr.Load(); mg != nil && mg.Conn() != nil {
		return mg.Conn(), nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case n.stopped:
		return nil, fmt.Errorf("node has stopped: %w", errdefs.ErrStopped)
	case n.ident == nil || !n.started:
		return nil, fmt.Errorf("node has not started: %w", errdefs.ErrStopped)
	}
	return nil, fmt.Errorf("node %s is a worker; use a manager's client or Dial a manager: %w", n.ident.NodeID, errdefs.ErrNotManager)
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
	cpus, mem := n.cfg.NanoCPUs, n.cfg.MemoryBytes
	if cpus == 0 {
		cpus = int64(goruntime.NumCPU()) * 1e9
	}
	if mem == 0 {
		mem = totalMemory()
	}
	var gossipAddr string
	if n.mesh != nil {
		gossipAddr = n.mesh.GossipAddr()
	}
	return &api.NodeDescription{
		GossipAddr: gossipAddr,
		Hostname:   host,
		Platform:   &api.Platform{Os: goruntime.GOOS, Arch: goruntime.GOARCH},
		Resources:  &api.Resources{NanoCpus: cpus, MemoryBytes: mem},
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

func configError(field, rule string, args ...any) error {
	return fmt.Errorf("Config.%s: %s: %w", field, fmt.Sprintf(rule, args...), errdefs.ErrInvalidSpec)
}

// Start starts the node as opts say and returns once it serves (or, for a
// restarted autolocked manager, once it waits for Unlock). A node starts
// once: a stopped node cannot start again.
func (n *Node) Start(ctx context.Context, opts StartOptions) (err error) {
	n.mu.Lock()
	switch {
	case n.stopped:
		n.mu.Unlock()
		return fmt.Errorf("the node has stopped and cannot start again: make a new one with New(cfg), then Start: %w", errdefs.ErrStopped)
	case n.started:
		n.mu.Unlock()
		return fmt.Errorf("the node has already started: %w", errdefs.ErrExist)
	}
	n.started = true
	if h := testhook.From(ctx); h.RaftFault != nil {
		n.cfg.Raft.Fault = h.RaftFault
	}
	n.mu.Unlock()
	defer func() {
		if err != nil {
			n.abortStart(err)
		}
	}()
	mode := opts.Mode

	if err := os.MkdirAll(n.cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("Config.StateDir: %w", err)
	}
	ident, err := LoadIdentity(n.cfg.StateDir)
	if err != nil {
		return err
	}
	switch {
	case mode == Restart && ident == nil:
		return fmt.Errorf("Config.StateDir: %s holds no node; use Init to create a cluster or Join to join one", n.cfg.StateDir)
	case mode == Join && ident != nil && nodesec.CertificateExpired(n.cfg.StateDir):
		n.log.Warn("the node's certificate expired; joining again as a new node", "old_node", ident.NodeID)
		if err := nodesec.RemoveStale(n.cfg.StateDir, IdentityFile); err != nil {
			return fmt.Errorf("Config.StateDir: clearing the expired node: %w", err)
		}
		ident = nil
	case mode != Restart && ident != nil:
		return fmt.Errorf("Config.StateDir: %s already holds node %s of cluster %s; restart it with New(cfg) and Start: %w",
			n.cfg.StateDir, ident.NodeID, ident.ClusterID, errdefs.ErrExist)
	case mode != Restart && n.cfg.ForceNewCluster:
		return configError("ForceNewCluster", "needs a manager's existing StateDir: use New(cfg) and Start")
	case mode == Restart && n.cfg.ForceNewCluster && ident.Role != Manager:
		return configError("ForceNewCluster", "node %s is a worker; only a manager can start a new cluster", ident.NodeID)
	case mode != Restart:
		// No identity but a Raft log: an Init that was interrupted. Its log
		// is not this node's to reuse or to delete.
		if _, err := os.Stat(filepath.Join(n.cfg.StateDir, "raft")); err == nil {
			return fmt.Errorf("Config.StateDir: %s holds a Raft log but no node identity (an interrupted Init?); remove %s to start over: %w",
				n.cfg.StateDir, filepath.Join(n.cfg.StateDir, "raft"), errdefs.ErrExist)
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
	case Init:
		ident = &Identity{NodeID: identity.NewID(), ClusterID: identity.NewID(), Role: Manager, RaftID: 1}
		root, err := n.sec.Init(ctx, ident.NodeID, ident.ClusterID, n.cfg.ExternalCA, n.cfg.CertValidity)
		if err != nil {
			return err
		}
		n.initRoot = root
	case Join:
		if ident, err = n.join(ctx, opts.JoinAddr, opts.Token); err != nil {
			return err
		}
	default:
		if err := n.sec.Load(ident.NodeID); err != nil {
			return err
		}
	}
	n.mu.Lock()
	n.ident = ident
	n.mu.Unlock()

	// Raft messages carry entries of up to raftstore's MaxEntryBytes; the
	// transport's limit leaves room for the message around the largest one.
	// Every connection is mutual TLS; every RPC is authorized by the
	// caller's certificate (internal/authz).
	az := authz.New(authz.Config{ClusterID: func() string { return ident.ClusterID }, Lookup: n.lookupNode})
	n.srv = grpc.NewServer(grpc.MaxRecvMsgSize(transport.MaxMessageBytes),
		grpc.Creds(credentials.NewTLS(n.sec.ServerTLS())),
		grpc.ChainUnaryInterceptor(az.Unary, n.gate.unary), grpc.ChainStreamInterceptor(az.Stream, n.gate.stream))
	sv := n.services
	sv.Control.(*switchable).register(n.srv, &api.Control_ServiceDesc)
	sv.Join.(*switchable).register(n.srv, &api.Join_ServiceDesc)
	sv.CA.(*switchable).register(n.srv, &api.CA_ServiceDesc)
	sv.Raft.(*switchable).register(n.srv, &api.Raft_ServiceDesc)
	sv.Dispatcher.(*switchable).register(n.srv, &api.Dispatcher_ServiceDesc)
	// Serve before a manager's log is loaded: a joining manager receives the
	// log through the Raft service; everything else waits behind the gate.
	srv := n.srv
	go func() { _ = srv.Serve(lis) }()
	if ident.Role == Manager {
		// The Raft log is encrypted with the manager's data key; with
		// autolock, a restarted manager waits for Unlock.
		locked, err := n.dataKeyLocked()
		if err != nil {
			return err
		}
		if locked && mode == Restart {
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

// lookupNode is the authorizer's view of the store: checked only on a
// manager whose log is loaded.
func (n *Node) lookupNode(nodeID string) authz.NodeRecord {
	mg := n.mgr.Load()
	if mg == nil || !mg.Armed() {
		return authz.NodeRecord{}
	}
	var node *api.Node
	mg.Store().ViewShared(func(tx state.ReadTx) { node = tx.GetNode(nodeID) })
	return authz.NodeRecord{Checked: true, Exists: node != nil, Manager: node.GetRole() == api.NodeRole_NODE_ROLE_MANAGER}
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
// mesh, the manager part (Raft log, store, API), the role and renewal loops,
// the agent.
func (n *Node) finishStart(ctx context.Context, mode Mode, ident *Identity) error {
	addr := n.Addr()
	if err := n.startMesh(ctx, ident.NodeID); err != nil {
		return err
	}
	manager := ident.Role == Manager
	if manager {
		err := n.startManager(ctx, ident, mode == Init, mode != Init)
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
	n.gate.open()
	rctx, rcancel := context.WithCancel(context.Background())
	n.roleStop = rcancel
	n.roleDone = make(chan struct{})
	go func() { defer close(n.roleDone); n.roles.run(rctx) }()
	n.sec.Start()
	if mode == Init {
		// Written last: a node whose Init failed leaves no identity behind.
		if err := SaveIdentity(n.cfg.StateDir, ident); err != nil {
			return err
		}
	}
	if err := n.startAgent(ctx); err != nil {
		return err
	}
	close(n.ready)
	n.log.Info("node started", "node", ident.NodeID, "role", roleName(n.Role()), "addr", addr)
	return nil
}

func roleName(r Role) string {
	if r == Manager {
		return "manager"
	}
	return "worker"
}

// join asks the manager at addr to admit this node.
func (n *Node) join(ctx context.Context, addr, token string) (*Identity, error) {
	resp, kp, err := n.sec.Join(ctx, addr, nodesec.JoinRequest{Token: token, Description: n.description(),
		Addr: n.Addr(), Labels: n.cfg.Labels})
	if err != nil {
		return nil, err
	}
	if !identity.Valid(resp.NodeId) {
		return nil, fmt.Errorf("join %s: manager returned an invalid node ID", addr)
	}
	ident := &Identity{NodeID: resp.NodeId, ClusterID: resp.ClusterId, Role: Role(resp.Role), Managers: resp.Managers}
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
	if err := n.sec.Adopt(kp); err != nil {
		return nil, err
	}
	if err := SaveIdentity(n.cfg.StateDir, ident); err != nil {
		return nil, err
	}
	return ident, nil
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

// Leave takes a worker out of the cluster for good: the node stops
// gracefully, then its identity and task files are deleted from StateDir.
func (n *Node) Leave(ctx context.Context) error {
	if n.Role() == Manager {
		id := n.Identity()
		return fmt.Errorf("node %s is a manager: demote it to a worker first, then leave: %w", id.NodeID, errdefs.ErrInvalidSpec)
	}
	n.leaving.Store(true)
	if err := n.Stop(ctx); err != nil {
		return err
	}
	for _, p := range []string{IdentityFile, "tasks"} {
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
		<-n.roleDone
	}
	errs = append(errs, n.sec.Stop(ctx))
	if n.agent != nil {
		if n.leaving.Load() {
			errs = append(errs, n.agent.Leave(ctx))
		} else {
			errs = append(errs, n.agent.Stop(ctx))
		}
	}
	if n.mesh != nil {
		errs = append(errs, n.mesh.Stop(ctx))
	}
	if mg := n.mgr.Load(); mg != nil {
		errs = append(errs, mg.Stop(ctx))
		n.mgr.Store(nil)
	}
	if n.srv != nil {
		stopped := make(chan struct{})
		go func() { n.srv.GracefulStop(); close(stopped) }()
		grace := n.clock.NewTimer(n.cfg.StopGrace)
		select {
		case <-stopped:
		case <-ctx.Done():
			n.srv.Stop()
			<-stopped
		case <-grace.C():
			// A client stream that outlived everything above.
			n.srv.Stop()
			<-stopped
		}
		grace.Stop()
	} else if n.lis != nil {
		errs = append(errs, n.lis.Close())
	}
	return errors.Join(errs...)
}

// managerAddrs lists the managers' addresses, the leader's first: from the
// store on a manager, else the ones the node last knew.
func (n *Node) managerAddrs() []string {
	if mg := n.mgr.Load(); mg != nil {
		return mg.ManagerAddrs()
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ident == nil {
		return nil
	}
	return append([]string(nil), n.ident.Managers...)
}

// renewTargets lists the managers to ask for a certificate: this node first
// if it is one.
func (n *Node) renewTargets() []string {
	addrs := n.managerAddrs()
	if n.mgr.Load() != nil {
		addrs = append([]string{n.Addr()}, addrs...)
	}
	return addrs
}

// wantCertRole is the certificate role of the node's current role.
func (n *Node) wantCertRole() string {
	if n.Role() == Manager {
		return pki.OUManager
	}
	return pki.OUWorker
}

// errNoLongerManager is manager.ErrNoLongerManager.
var errNoLongerManager = manager.ErrNoLongerManager

// startManager starts the manager part for ident (joined: it was added to
// an existing group, and starts with an empty log).
func (n *Node) startManager(ctx context.Context, ident *Identity, initCluster, joined bool) error {
	n.mu.Lock()
	cipher, wrap := n.cipher, n.wrapKey
	n.mu.Unlock()
	mc := manager.Config{
		NodeID: ident.NodeID, ClusterID: ident.ClusterID, RaftID: ident.RaftID, BootPeers: ident.RaftPeers,
		Addr: n.Addr(), RaftDir: filepath.Join(n.cfg.StateDir, "raft"),
		Joined: joined, ForceNewCluster: n.cfg.ForceNewCluster, DisableAgent: n.cfg.DisableAgent,
		Labels: n.cfg.Labels, Description: n.description, InsecureRegistries: n.cfg.InsecureRegistries,
		DialOptions: n.sec.DialOptions, TransportCredentials: n.sec.ClientCreds(), Dial: n.cfg.Dial,
		DataKeyPath: dataKeyPath(n.cfg.StateDir), Wrapped: wrap,
		Raft: n.cfg.Raft, HeartbeatPeriod: n.cfg.HeartbeatPeriod, RestartDelay: n.cfg.RestartDelay,
		KeyRotationGrace: n.cfg.Mesh.KeyRotationGrace,
		Services:         n.services,
		OnDemoted:        func() { n.wantRole(roleWant{manager: false}) },
		Publish:          func(mg *manager.Manager) { n.mgr.Store(mg) },
		OnTrustBundle:    n.sec.FollowRoots,
		Clock:            n.clock, Logger: n.log, Metrics: n.cfg.Metrics,
	}
	if cipher != nil {
		mc.Encryptor = cipher
	}
	if initCluster {
		root := n.initRoot
		if root == nil {
			return errors.New("init: no root CA")
		}
		rc := &api.RootCA{CertPem: root.CertPEM, KeyPem: root.KeyPEM}
		if e := n.cfg.ExternalCA; e != nil {
			rc.KeyPem, rc.ExternalUrl, rc.ExternalAuthKey = nil, e.URL, e.AuthKey
		}
		mc.Init = &manager.InitCluster{RootCA: rc, RootDigest: root.Digest(), HeartbeatPeriod: n.cfg.HeartbeatPeriod,
			CertValidity: n.cfg.CertValidity, TaskHistoryLimit: n.cfg.TaskHistoryLimit, AutoLock: n.cfg.AutoLock}
	}
	mg, err := manager.New(mc)
	if err != nil {
		return err
	}
	// Start publishes the manager (Config.Publish) once its store and Raft
	// member exist, before the log is loaded: from then on the authorizer
	// checks callers against the store as soon as it is current (Armed).
	if err := mg.Start(ctx); err != nil {
		n.mgr.Store(nil)
		return err
	}
	n.mgr.Store(mg)
	return nil
}

// RaftMembers reports, on a manager, how many managers vote in the Raft
// group and how many are learners still catching up.
func (n *Node) RaftMembers(ctx context.Context) (voters, learners int, err error) {
	mg := n.mgr.Load()
	if mg == nil {
		return 0, 0, errdefs.ErrNotManager
	}
	members, err := mg.Raft().Members(ctx)
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

// IsLeader reports whether this node is the manager that leads the cluster.
func (n *Node) IsLeader() bool {
	mg := n.mgr.Load()
	return mg != nil && mg.Raft().IsLeader()
}

// UnlockKey returns the cluster's unlock key as this manager's state has it
// ("" when autolock is off, or on a worker).
func (n *Node) UnlockKey() string {
	mg := n.mgr.Load()
	if mg == nil {
		return ""
	}
	return mg.UnlockKey()
}
