package manager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	raftpb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/shoalhq/shoal/dispatch"
	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/autolock"
	"github.com/shoalhq/shoal/internal/ca"
	"github.com/shoalhq/shoal/internal/clock"
	"github.com/shoalhq/shoal/internal/controlapi"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/gossipkeys"
	"github.com/shoalhq/shoal/internal/keys"
	"github.com/shoalhq/shoal/internal/state"
	"github.com/shoalhq/shoal/pki"
	"github.com/shoalhq/shoal/raftstore"
	"github.com/shoalhq/shoal/raftstore/transport"
	"github.com/shoalhq/shoal/runtime/image"
)

// ErrNoLongerManager: the other managers no longer list this node as a
// manager (it was demoted or removed while it was down or cut off).
var ErrNoLongerManager = errors.New("the other managers no longer list this node as a manager")

// Manager is a running manager part.
type Manager struct {
	cfg   Config
	clock clock.Clock
	log   *slog.Logger

	store     *state.Store
	raft      *raftstore.Node
	transport *transport.Transport
	selfConn  atomic.Pointer[grpc.ClientConn] // set once the services run
	peersKick chan struct{}

	// armed is set once the log is loaded: from then on a membership
	// without this member means the node was demoted (while the log is
	// replayed, older memberships pass by).
	armed atomic.Bool

	// termMu guards term: the leader-only components of the current term.
	termMu sync.Mutex
	term   *leaderTerm

	// lock keeps the data key file wrapped as autolock says (nil without a
	// data key file).
	lock *autolock.Keeper

	bgCancel context.CancelFunc
	bg       sync.WaitGroup
}

// New returns a manager part that has not started.
func New(cfg Config) (*Manager, error) {
	switch {
	case cfg.NodeID == "" || cfg.ClusterID == "":
		return nil, errors.New("manager: Config.NodeID and ClusterID are required")
	case cfg.RaftID == 0:
		return nil, errors.New("manager: Config.RaftID is required")
	case cfg.Description == nil || cfg.DialOptions == nil:
		return nil, errors.New("manager: Config.Description and DialOptions are required")
	case cfg.TransportCredentials == nil:
		return nil, errors.New("manager: Config.TransportCredentials is required")
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.OnDemoted == nil {
		cfg.OnDemoted = func() {}
	}
	if cfg.OnTrustBundle == nil {
		cfg.OnTrustBundle = func([]byte) {}
	}
	return &Manager{cfg: cfg, clock: cfg.Clock, log: cfg.Logger, peersKick: make(chan struct{}, 1)}, nil
}

// Store is the manager's object store.
func (mg *Manager) Store() *state.Store { return mg.store }

// Raft is the manager's Raft member.
func (mg *Manager) Raft() *raftstore.Node { return mg.raft }

// Armed reports whether the manager's log is loaded (its store is current
// enough to authorize callers by).
func (mg *Manager) Armed() bool { return mg.armed.Load() }

// Conn is a connection to the node's own server, for the node's Client.
// It is nil until Start has switched the services on.
func (mg *Manager) Conn() *grpc.ClientConn { return mg.selfConn.Load() }

// Start starts the store, the Raft member and its transport, and once the
// state is loaded the control, join and CA services, the peer, role-check,
// leadership and autolock loops. It returns ErrNoLongerManager when the
// other managers say this node is not a manager any more. On error,
// whatever started is stopped.
func (mg *Manager) Start(ctx context.Context) (err error) {
	svc := mg.cfg.Services
	defer func() {
		if err != nil {
			setAll(nil, svc.Control, svc.Join, svc.CA)
			_ = mg.Stop(context.Background())
			setAll(nil, svc.Raft)
		}
	}()
	mg.store = state.New(state.Config{Logger: mg.log, Clock: mg.clock})
	tcfg := transport.DefaultConfig()
	tcfg.ID = mg.cfg.RaftID
	tcfg.Dial = mg.cfg.Dial
	tcfg.Credentials = mg.cfg.TransportCredentials
	tcfg.Clock = mg.clock
	tcfg.Logger = mg.log.With("component", "raft-transport")
	if f := mg.cfg.Raft.Fault; f != nil {
		self := mg.cfg.RaftID
		tcfg.Filter = func(to uint64, _ *raftpb.Message) (bool, time.Duration) { return f(self, to) }
	}
	tr, err := transport.New(tcfg)
	if err != nil {
		return err
	}
	mg.transport = tr
	rcfg := raftstore.DefaultConfig()
	rcfg.ID = mg.cfg.RaftID
	rcfg.Dir = mg.cfg.RaftDir
	rcfg.StateMachine = mg.store
	rcfg.Encryptor = mg.cfg.Encryptor
	rcfg.Clock = mg.clock
	rcfg.Transport = tr
	rcfg.Forwarder = tr
	rcfg.Join = mg.cfg.Joined && !mg.cfg.ForceNewCluster // Join matters only for a new log, which ForceNewCluster refuses
	rcfg.ForceNewCluster = mg.cfg.ForceNewCluster
	rcfg.Logger = mg.log
	rcfg.Registerer = mg.cfg.Metrics
	rcfg.TickInterval = mg.cfg.Raft.TickInterval
	rcfg.ElectionTick = mg.cfg.Raft.ElectionTicks
	rcfg.SnapshotInterval = mg.cfg.Raft.SnapshotInterval
	rcfg.OnMembershipChange = mg.onMembers
	rn, err := raftstore.New(rcfg)
	if err != nil {
		return err
	}
	mg.raft = rn
	mg.store.SetLog(rn)
	tr.SetLocal(rn)
	for id, addr := range mg.cfg.BootPeers {
		if id != mg.cfg.RaftID {
			tr.AddPeer(id, addr)
		}
	}
	if err := tr.Start(ctx); err != nil {
		return err
	}
	svc.Raft.Set(tr.Server())
	if err := rn.Start(ctx); err != nil {
		return err
	}
	if mg.cfg.Publish != nil {
		mg.cfg.Publish(mg)
	}
	mg.syncPeers()
	bgctx, cancel := context.WithCancel(context.Background())
	mg.bgCancel = cancel
	// noLonger is closed when the role check finds the node is no longer a
	// manager before the log is loaded; after, OnDemoted is called.
	// armMu makes the two exclusive: the check sees armed, or Start sees
	// noLonger closed.
	noLonger := make(chan struct{})
	var armMu sync.Mutex
	rc := &roleCheck{clock: mg.clock, election: mg.cfg.Raft.ElectionTimeout(), hasLeader: mg.hasLeader,
		stillManager: mg.stillManager, notManager: func() {
			mg.log.Warn("the other managers no longer list this node as a manager; becoming a worker")
			armMu.Lock()
			defer armMu.Unlock()
			if mg.armed.Load() {
				mg.cfg.OnDemoted()
			} else {
				close(noLonger)
			}
		}}
	mg.bg.Add(2)
	go mg.peerLoop(bgctx)
	go func() { defer mg.bg.Done(); rc.run(bgctx) }()
	select {
	case <-rn.Ready():
	case <-noLonger:
		// Demoted or removed while down: no leader will ever talk to this
		// member again, so its log would never be ready.
		return ErrNoLongerManager
	case <-ctx.Done():
		return ctx.Err()
	}
	armMu.Lock()
	mg.armed.Store(true)
	armMu.Unlock()
	select {
	case <-noLonger:
		return ErrNoLongerManager // found out just as the log became ready
	default:
	}
	if err := mg.ensureClusterObjects(ctx); err != nil {
		// A member removed while down may have heard one stale message
		// from the old leader, enough to call its log ready; the leader
		// then refuses its write. Ask the other managers before failing.
		if mg.cfg.Init == nil && ctx.Err() == nil && !mg.stillManager(ctx, max(3*time.Second, 3*mg.cfg.Raft.ElectionTimeout())) {
			return ErrNoLongerManager
		}
		return err
	}
	conn, err := grpc.NewClient(mg.cfg.Addr, mg.cfg.DialOptions()...)
	if err != nil {
		return err
	}
	svc.Control.Set(controlapi.New(mg.store, controlapi.Options{Members: rn, Leader: mg.leaderControl, Clock: mg.clock,
		Resolver: imageResolver{opts: image.RemoteOptions{InsecureRegistries: mg.cfg.InsecureRegistries}}, Logger: mg.log}))
	signers := &ca.Signers{}
	svc.Join.Set(controlapi.NewJoinServer(controlapi.JoinConfig{
		Store: mg.store, Managers: mg.ManagerAddrs, Membership: rn, Forward: mg.forwardJoin, Signers: signers,
	}))
	svc.CA.Set(ca.NewServer(mg.store, signers))
	mg.selfConn.Store(conn) // the node's Client works from here
	if mg.cfg.DataKeyPath != "" {
		acfg := autolock.DefaultConfig()
		acfg.ClusterID = mg.cfg.ClusterID
		acfg.DataKeyPath = mg.cfg.DataKeyPath
		acfg.Wrapped = mg.cfg.Wrapped
		acfg.Clock = mg.clock
		acfg.Logger = mg.log
		if mg.lock, err = autolock.New(mg.store, acfg); err != nil {
			return err
		}
		if err := mg.lock.Start(ctx); err != nil {
			mg.lock = nil
			return err
		}
	}
	mg.bg.Add(2)
	go mg.leadershipLoop(bgctx)
	go mg.trustLoop(bgctx)
	return nil
}

func setAll(impl any, ss ...Setter) {
	for _, s := range ss {
		s.Set(impl)
	}
}

// Stop stops whatever of the manager part has started, in reverse order,
// and switches its services off.
func (mg *Manager) Stop(ctx context.Context) error {
	svc := mg.cfg.Services
	setAll(nil, svc.Control, svc.Join, svc.CA)
	var errs []error
	if mg.bgCancel != nil {
		mg.bgCancel() // leader term (dispatcher sessions end), peer loop
		mg.bg.Wait()
		mg.bgCancel = nil
	}
	if mg.lock != nil {
		errs = append(errs, mg.lock.Stop(ctx))
		mg.lock = nil
	}
	if mg.store != nil {
		// Ends the control API's watch streams.
		mg.store.Close()
	}
	if conn := mg.selfConn.Swap(nil); conn != nil {
		errs = append(errs, conn.Close())
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
	setAll(nil, svc.Raft)
	return errors.Join(errs...)
}

// ManagerAddrs lists the managers' addresses, the leader's first.
func (mg *Manager) ManagerAddrs() []string {
	if mg.raft == nil {
		return []string{mg.cfg.Addr}
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
		out = []string{mg.cfg.Addr}
	}
	return out
}

// kickPeers asks the peer loop to refresh the transport's peers.
func (mg *Manager) kickPeers() {
	select {
	case mg.peersKick <- struct{}{}:
	default:
	}
}

// peerLoop keeps the transport's peers in step with the managers recorded in
// the store (their Raft IDs and addresses).
func (mg *Manager) peerLoop(ctx context.Context) {
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

// hasLeader reports whether this member follows (or is) a working leader
// (see raftstore's WorkingLeader: the leader's ID alone does not tell).
func (mg *Manager) hasLeader(ctx context.Context) bool {
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
func (mg *Manager) stillManager(ctx context.Context, timeout time.Duration) bool {
	peers, notManager := 0, 0
	for id, addr := range mg.raftPeers() {
		if id == mg.cfg.RaftID || addr == mg.cfg.Addr {
			continue
		}
		peers++
		conn, err := grpc.NewClient(addr, mg.cfg.DialOptions()...)
		if err != nil {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, timeout)
		var md metadata.MD
		resp, err := api.NewControlClient(conn).GetNode(cctx, &api.GetRequest{Id: mg.cfg.NodeID}, grpc.Header(&md))
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
func (mg *Manager) syncPeers() {
	want := mg.raftPeers()
	have := mg.transport.Peers()
	for id, addr := range want {
		if id == mg.cfg.RaftID {
			continue
		}
		if have[id] != addr {
			mg.transport.AddPeer(id, addr)
		}
	}
	for id := range have {
		if _, ok := want[id]; !ok {
			if _, boot := mg.cfg.BootPeers[id]; !boot {
				mg.transport.RemovePeer(id)
			}
		}
	}
}

// raftPeers returns the managers' Raft IDs and addresses from the store.
func (mg *Manager) raftPeers() map[uint64]string {
	out := map[uint64]string{}
	mg.store.ViewShared(func(tx state.ReadTx) {
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
func (mg *Manager) leaderControl(ctx context.Context) (api.ControlClient, func(), error) {
	addr, ok := mg.raftPeers()[mg.raft.Leader()]
	if !ok {
		return nil, nil, fmt.Errorf("no leader known: %w", errdefs.ErrNoQuorum)
	}
	conn, err := grpc.NewClient(addr, mg.cfg.DialOptions()...)
	if err != nil {
		return nil, nil, err
	}
	return api.NewControlClient(conn), func() { conn.Close() }, nil
}

// forwardJoin sends a join to the leader.
func (mg *Manager) forwardJoin(ctx context.Context, req *api.JoinRequest) (*api.JoinResponse, error) {
	addr, ok := mg.raftPeers()[mg.raft.Leader()]
	if !ok {
		return nil, errdefs.ToGRPC(fmt.Errorf("join: no leader known yet: %w", errdefs.ErrNoQuorum))
	}
	conn, err := grpc.NewClient(addr, mg.cfg.DialOptions()...)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return api.NewJoinClient(conn).Join(ctx, req)
}

// ensureClusterObjects creates the cluster object (with join tokens) at
// Init, and this manager's node object if it is missing, and records the
// manager's current address and description.
func (mg *Manager) ensureClusterObjects(ctx context.Context) error {
	desc := mg.cfg.Description()
	return mg.store.UpdateRetry(ctx, 5, func(tx state.WriteTx) error {
		if c := tx.GetCluster(mg.cfg.ClusterID); c == nil {
			in := mg.cfg.Init
			if in == nil {
				return fmt.Errorf("state of cluster %s is missing from %s", mg.cfg.ClusterID, mg.cfg.RaftDir)
			}
			wt, err := pki.NewToken(in.RootDigest)
			if err != nil {
				return err
			}
			mt, err := pki.NewToken(in.RootDigest)
			if err != nil {
				return err
			}
			gossipKeys, err := gossipkeys.NewKeys(mg.clock.Now())
			if err != nil {
				return err
			}
			unlock := ""
			if in.AutoLock {
				if unlock, err = keys.NewUnlockKey(); err != nil {
					return err
				}
			}
			if err := tx.CreateCluster(&api.Cluster{
				UnlockKey: unlock,
				Id:        mg.cfg.ClusterID,
				Spec: &api.ClusterSpec{Name: "default", TaskHistoryLimit: int64(in.TaskHistoryLimit),
					HeartbeatPeriod: int64(in.HeartbeatPeriod), NodeCertValidity: int64(in.CertValidity),
					Autolock: in.AutoLock},
				JoinTokens: &api.JoinTokens{Worker: wt.String(), Manager: mt.String()},
				RootCa:     in.RootCA,
				Gossip:     gossipKeys,
			}); err != nil {
				return err
			}
		}
		// A manager without an agent never opens a session, so no
		// dispatcher marks it READY (and no task is placed on it): its
		// manager status says it runs no agent, and its liveness is its
		// reachability, which the leader records (internal/membership).
		st := &api.NodeStatus{State: api.NodeState_NODE_STATE_UNKNOWN, Addr: mg.cfg.Addr}
		if mg.cfg.DisableAgent {
			st.Message = NoAgentMessage
		}
		me := tx.GetNode(mg.cfg.NodeID)
		if me == nil {
			return tx.CreateNode(&api.Node{
				Id:          mg.cfg.NodeID,
				Role:        api.NodeRole_NODE_ROLE_MANAGER,
				Spec:        &api.NodeSpec{DesiredRole: api.NodeRole_NODE_ROLE_MANAGER, Labels: mg.cfg.Labels},
				Description: desc,
				Status:      st,
				ManagerStatus: &api.ManagerStatus{RaftId: mg.cfg.RaftID, Addr: mg.cfg.Addr, Leader: mg.raft.IsLeader(),
					NoAgent: mg.cfg.DisableAgent, Reachability: api.Reachability_REACHABILITY_REACHABLE},
			})
		}
		old := me.GetManagerStatus()
		ms := &api.ManagerStatus{RaftId: mg.cfg.RaftID, Addr: mg.cfg.Addr, Leader: old.GetLeader(),
			NoAgent: mg.cfg.DisableAgent, Reachability: old.GetReachability()}
		if proto.Equal(me.ManagerStatus, ms) && proto.Equal(me.Description, desc) &&
			(!mg.cfg.DisableAgent || proto.Equal(me.Status, st)) {
			return nil
		}
		me.ManagerStatus = ms
		me.Description = desc
		if mg.cfg.DisableAgent {
			me.Status = st
		}
		return tx.UpdateNode(me)
	})
}

// NoAgentMessage is the status message of a manager that runs no agent.
const NoAgentMessage = "manager without an agent (Config.DisableAgent): runs no tasks"

// onMembers runs on the Raft loop at every membership change: it updates
// the transport's peers, and notices when this member was removed (the node
// was demoted).
func (mg *Manager) onMembers(ids []uint64) {
	mg.kickPeers()
	if mg.armed.Load() && !slices.Contains(ids, mg.cfg.RaftID) {
		mg.cfg.OnDemoted()
	}
}

// MeshState reads the cluster's gossip keys from the store, and the gossip
// addresses of up to dispatch.MaxGossipPeers other nodes, chosen as the
// dispatcher chooses them for workers' sessions.
func (mg *Manager) MeshState() (keys [][]byte, peers []string) {
	mg.store.ViewShared(func(tx state.ReadTx) {
		if c := tx.GetCluster(mg.cfg.ClusterID); c != nil {
			keys = c.GetGossip().GetKeys()
		}
		nodes, _ := tx.FindNodes(state.All()) // by ID
		peers = dispatch.GossipPeers(mg.cfg.NodeID, nodes, dispatch.MaxGossipPeers)
	})
	return slices.Clone(keys), peers
}

// UnlockKey returns the cluster's unlock key ("" when autolock is off).
func (mg *Manager) UnlockKey() string {
	var k string
	mg.store.ViewShared(func(tx state.ReadTx) {
		if c := tx.GetCluster(mg.cfg.ClusterID); c != nil {
			k = wantUnlockKey(c)
		}
	})
	return k
}

func wantUnlockKey(c *api.Cluster) string {
	if !c.GetSpec().GetAutolock() {
		return ""
	}
	return c.GetUnlockKey()
}
