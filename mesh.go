package shoal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/shoalhq/shoal/dispatch"
	"github.com/shoalhq/shoal/gossip"
	"github.com/shoalhq/shoal/ingress"
	"github.com/shoalhq/shoal/ingress/ipvs"
	"github.com/shoalhq/shoal/ingress/nft"
	"github.com/shoalhq/shoal/internal/controlapi"
	"github.com/shoalhq/shoal/internal/state"
)

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
	// 7946, serf's customary port. Port 0 picks a free port.
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
	// in flight to it are not cut and no new one is sent to it. Default 2s:
	// an endpoint change reaches 200 gossip members in about 1.3 s (p99).
	DrainDelay time.Duration
	// DrainTimeout bounds how long a stopping task's drain waits for every
	// gossip member to confirm that the task's endpoints left its table: the
	// drain lasts at least DrainDelay and until that confirmation, so on a
	// loaded cluster where changes spread slowly no node still sends the
	// task connections when it stops. Default 10s; a value below DrainDelay
	// counts as DrainDelay.
	DrainTimeout time.Duration
	// KeyRotationGrace is how long each phase of a gossip key rotation lasts
	// before the leader starts the next one, so every node has applied it.
	// Only the leader's setting counts. Default 30s.
	KeyRotationGrace time.Duration
}

const (
	defaultGossipPort       = "7946"
	defaultDrainDelay       = 2 * time.Second
	defaultDrainTimeout     = 10 * time.Second
	defaultKeyRotationGrace = 30 * time.Second
	// meshSyncInterval is how often a manager reads the gossip keys and peers
	// from its store, and every node rejoins the gossip if it is alone.
	meshSyncInterval = time.Second
)

func (c MeshConfig) validate() error {
	if c.Disabled {
		return nil
	}
	for _, f := range []struct{ name, v string }{{"Mesh.GossipAddr", c.GossipAddr}, {"Mesh.GossipAdvertiseAddr", c.GossipAdvertiseAddr}} {
		if f.v == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(f.v); err != nil {
			return configError(f.name, "%q must be host:port", f.v)
		}
	}
	if c.Balancer < BalancerUserspace || c.Balancer > BalancerNone {
		return configError("Mesh.Balancer", "must be BalancerUserspace, BalancerNFTables, BalancerIPVS or BalancerNone, got %d", int(c.Balancer))
	}
	if c.DrainDelay < 0 {
		return configError("Mesh.DrainDelay", "must be >= 0")
	}
	if c.DrainTimeout < 0 {
		return configError("Mesh.DrainTimeout", "must be >= 0")
	}
	if c.KeyRotationGrace < 0 {
		return configError("Mesh.KeyRotationGrace", "must be >= 0")
	}
	return nil
}

// mesh is a node's routing-mesh part: its gossip member, balancer and the
// loop that feeds one into the other.
type mesh struct {
	n      *Node
	g      *gossip.Node
	bal    ingress.Balancer
	epAddr netip.Addr

	mu      sync.Mutex
	keys    [][]byte // last applied
	peers   []string // last known gossip addresses of other nodes
	stopped bool

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// startMesh starts the node's gossip member (on a throwaway key until the
// cluster's keys arrive through the session or the store) and balancer.
func (n *Node) startMesh(ctx context.Context) error {
	mc := n.cfg.Mesh
	if mc.Disabled {
		return nil
	}
	gc := gossip.DefaultConfig()
	if mc.Gossip != nil {
		mc.Gossip(&gc)
	}
	gc.NodeID = n.ident.NodeID
	gc.Logger = n.log.With("component", "gossip")
	gc.Transport = mc.GossipTransport
	host, _, err := net.SplitHostPort(n.Addr())
	if err != nil {
		return fmt.Errorf("mesh: node address %q: %w", n.Addr(), err)
	}
	gc.BindAddr = mc.GossipAddr
	if gc.BindAddr == "" {
		port := defaultGossipPort
		if _, lp, err := net.SplitHostPort(n.cfg.ListenAddr); err == nil && lp == "0" && n.cfg.Listener == nil {
			port = "0" // a node on any free port gossips on any free port too
		}
		gc.BindAddr = net.JoinHostPort(host, port)
	}
	gc.AdvertiseAddr = mc.GossipAdvertiseAddr
	// Until the cluster's keys arrive, a random key: the member can talk to
	// nobody, which is right for a node that does not know the cluster's.
	throwaway, err := controlapi.NewGossipKeys(time.Now())
	if err != nil {
		return err
	}
	gc.Keys = throwaway.Keys
	g, err := gossip.New(gc)
	if err != nil {
		return fmt.Errorf("mesh: %w", err)
	}
	if err := g.Start(ctx); err != nil {
		return fmt.Errorf("mesh: starting the gossip member on %s: %w", gc.BindAddr, err)
	}
	m := &mesh{n: n, g: g}
	m.epAddr = mc.EndpointAddr
	if !m.epAddr.IsValid() {
		ghost, _, _ := net.SplitHostPort(g.Addr())
		if a, err := netip.ParseAddr(ghost); err == nil {
			m.epAddr = a
		} else if a, err := netip.ParseAddr(host); err == nil {
			m.epAddr = a
		}
	}
	if m.bal, err = n.newBalancer(m.epAddr); err != nil {
		_ = g.Stop(ctx)
		return err
	}
	lctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	m.wg.Add(2)
	go m.applyLoop(lctx)
	go m.syncLoop(lctx)
	n.mesh = m
	return nil
}

func (n *Node) newBalancer(ep netip.Addr) (ingress.Balancer, error) {
	mc := n.cfg.Mesh
	if mc.CustomBalancer != nil {
		return mc.CustomBalancer, nil
	}
	log := n.log.With("component", "ingress")
	switch mc.Balancer {
	case BalancerNFTables:
		c := nft.DefaultConfig()
		c.Logger = log
		return nft.New(c)
	case BalancerIPVS:
		c := ipvs.DefaultConfig()
		c.VIP = mc.VIP
		if !c.VIP.IsValid() {
			c.VIP = ep
		}
		c.Logger = log
		return ipvs.New(c)
	case BalancerNone:
		return nil, nil
	}
	c := ingress.DefaultConfig()
	if mc.ListenAddr.IsValid() {
		c.ListenAddr = mc.ListenAddr
	}
	c.Logger = log
	c.Registerer = n.cfg.Metrics
	return ingress.New(c)
}

// gossipAddr is the gossip member's address ("" without a mesh).
func (n *Node) gossipAddr() string {
	if n.mesh == nil {
		return ""
	}
	return n.mesh.g.Addr()
}

// update applies keys and peers learned from a session or the store: the
// keyring follows the cluster's keys, and a member that is alone joins the
// peers.
func (m *mesh) update(keys [][]byte, peers []string) {
	m.mu.Lock()
	if m.stopped {
		m.mu.Unlock()
		return
	}
	var setKeys [][]byte
	if len(keys) > 0 && !slices.EqualFunc(keys, m.keys, bytes.Equal) {
		setKeys = keys
	}
	if len(peers) > 0 {
		m.peers = slices.Clone(peers)
	}
	m.mu.Unlock()
	if setKeys != nil {
		if err := m.g.SetKeys(setKeys); err != nil {
			m.n.log.Warn("mesh: applying the cluster's gossip keys", "err", err)
		} else {
			m.mu.Lock()
			m.keys = setKeys
			m.mu.Unlock()
			m.n.log.Debug("mesh: gossip keys applied", "keys", len(setKeys))
		}
	}
	m.joinIfAlone()
}

// joinIfAlone joins the known peers when this member has the cluster's keys
// and sees no other member.
func (m *mesh) joinIfAlone() {
	m.mu.Lock()
	peers := slices.DeleteFunc(slices.Clone(m.peers), func(p string) bool { return p == m.g.Addr() })
	ready := len(m.keys) > 0 && !m.stopped
	m.mu.Unlock()
	if !ready || len(peers) == 0 || len(m.g.Members()) > 1 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := m.g.Join(ctx, peers); err != nil {
		m.n.log.Debug("mesh: joining the gossip", "peers", peers, "err", err)
	}
}

// onEndpoints publishes the node's running tasks' ingress endpoints.
func (m *mesh) onEndpoints(eps []dispatch.PublishedEndpoint) {
	out := make([]gossip.Endpoint, 0, len(eps))
	for _, e := range eps {
		addr := e.Addr
		if !addr.Addr().IsValid() || addr.Addr().IsUnspecified() {
			addr = netip.AddrPortFrom(m.epAddr, addr.Port())
		}
		out = append(out, gossip.Endpoint{Service: e.ServiceID, Task: e.TaskID, Port: uint32(e.PublishedPort),
			Protocol: e.Protocol, Addr: addr})
	}
	m.g.SetLocal(out)
}

// confirmWithdrawal returns once every gossip member's table holds this
// node's current endpoint set: the agent calls it after withdrawing a
// stopping task's endpoints. Each member's balancer applies its table right
// after the table changes.
func (m *mesh) confirmWithdrawal(ctx context.Context) error { return m.g.Confirm(ctx) }

// applyLoop hands every change of the gossip table to the balancer.
func (m *mesh) applyLoop(ctx context.Context) {
	defer m.wg.Done()
	if m.bal == nil {
		return
	}
	ch, cancel := m.g.Watch()
	defer cancel()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	for {
		t := meshTable(m.g.Table())
		actx, acancel := context.WithTimeout(ctx, 30*time.Second)
		err := m.bal.Apply(actx, t)
		acancel()
		if err != nil && ctx.Err() == nil {
			m.n.log.Warn("mesh: applying the endpoint table", "err", err)
			var pe *ingress.PortError
			if !errors.As(err, &pe) {
				retry.Reset(time.Second) // not a port's own problem: try again
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-ch:
		case <-retry.C:
		}
	}
}

// meshTable turns the gossip table into the balancer's.
func meshTable(eps []gossip.Endpoint) ingress.Table {
	t := ingress.Table{}
	for _, e := range eps {
		proto := ingress.TCP
		if e.Protocol == "udp" {
			proto = ingress.UDP
		}
		if e.Port == 0 || e.Port > 65535 {
			continue
		}
		p := ingress.Port{Service: e.Service, Protocol: proto, Published: uint16(e.Port)}
		t[p] = append(t[p], ingress.Endpoint{Service: e.Service, Task: e.Task, Addr: e.Addr})
	}
	return t
}

// syncLoop, on a manager, follows the store's gossip keys and the nodes'
// gossip addresses; on every node it rejoins the gossip when alone.
func (m *mesh) syncLoop(ctx context.Context) {
	defer m.wg.Done()
	t := time.NewTicker(meshSyncInterval)
	defer t.Stop()
	for {
		if mg := m.n.mgr.Load(); mg != nil {
			keys, peers := mg.meshState()
			m.update(keys, peers)
		} else {
			m.joinIfAlone()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// meshState reads the cluster's gossip keys from the store, and the gossip
// addresses of up to dispatch.MaxGossipPeers other nodes, chosen as the
// dispatcher chooses them for workers' sessions.
func (mg *managerPart) meshState() (keys [][]byte, peers []string) {
	mg.store.ViewShared(func(tx state.ReadTx) {
		if c := tx.GetCluster(mg.clusterID); c != nil {
			keys = c.GetGossip().GetKeys()
		}
		nodes, _ := tx.FindNodes(state.All()) // by ID
		peers = dispatch.GossipPeers(mg.nodeID, nodes, dispatch.MaxGossipPeers)
	})
	return slices.Clone(keys), peers
}

// stop leaves the gossip gracefully (other nodes drop this node's endpoints
// at once) and removes the balancer's ports.
func (m *mesh) stop(ctx context.Context) error {
	m.mu.Lock()
	m.stopped = true
	m.mu.Unlock()
	m.cancel()
	m.wg.Wait()
	var errs []error
	if m.bal != nil {
		errs = append(errs, m.bal.Stop(ctx))
	}
	errs = append(errs, m.g.Stop(ctx))
	return errors.Join(errs...)
}

// gossipKeyLoop runs on the leader: it moves a gossip key rotation from
// phase to phase once each has lasted the grace, and gives a cluster without
// gossip keys its first.
func (mg *managerPart) gossipKeyLoop(ctx context.Context, wg *sync.WaitGroup) {
	defer wg.Done()
	grace := mg.n.cfg.Mesh.KeyRotationGrace
	t := time.NewTicker(min(meshSyncInterval, max(grace/4, 10*time.Millisecond)))
	defer t.Stop()
	for {
		var due bool
		mg.store.ViewShared(func(tx state.ReadTx) {
			if c := tx.GetCluster(mg.clusterID); c != nil {
				_, due, _ = controlapi.NextGossipKeyPhase(c.GetGossip(), time.Now(), grace)
			}
		})
		if due {
			err := mg.store.Update(ctx, func(tx state.WriteTx) error {
				c := tx.GetCluster(mg.clusterID)
				if c == nil {
					return nil
				}
				next, changed, err := controlapi.NextGossipKeyPhase(c.GetGossip(), time.Now(), grace)
				if err != nil || !changed {
					return err
				}
				c.Gossip = next
				mg.n.log.Info("gossip key rotation", "phase", next.GetRotationPhase(), "keys", len(next.GetKeys()))
				return tx.UpdateCluster(c)
			})
			if err != nil && ctx.Err() == nil {
				mg.n.log.Debug("gossip key rotation step", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
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

// MeshEndpoints returns this node's current view of the routing mesh: every
// endpoint its balancer spreads published ports across, sorted by service,
// port, protocol, node and task. Empty when the mesh is disabled. Call it
// once Start (or Init, Join) has returned.
func (n *Node) MeshEndpoints() []MeshEndpoint {
	if n.mesh == nil {
		return nil
	}
	tbl := n.mesh.g.Table()
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
