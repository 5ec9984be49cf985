package mesh

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/shoalhq/shoal/dispatch"
	"github.com/shoalhq/shoal/gossip"
	"github.com/shoalhq/shoal/ingress"
	"github.com/shoalhq/shoal/ingress/ipvs"
	"github.com/shoalhq/shoal/ingress/nft"
	"github.com/shoalhq/shoal/internal/clock"
	"github.com/shoalhq/shoal/internal/gossipkeys"
)

// BalancerKind chooses the balancer.
type BalancerKind int

// The balancers.
const (
	Userspace BalancerKind = iota
	NFTables
	IPVS
	None
)

// DefaultGossipPort is serf's customary port.
const DefaultGossipPort = "7946"

// Config configures a node's mesh.
type Config struct {
	// NodeID names the gossip member. Required.
	NodeID string
	// NodeAddr is the node's advertised host:port; its host is the gossip
	// member's default bind host. Required.
	NodeAddr string
	// AnyPort makes the default gossip bind address take any free port (the
	// node itself listens on one).
	AnyPort bool
	// GossipAddr, GossipAdvertiseAddr, GossipTransport and Gossip are
	// shoal.MeshConfig's fields of those names.
	GossipAddr          string
	GossipAdvertiseAddr string
	GossipTransport     memberlist.Transport
	Gossip              func(*gossip.Config)
	// Balancer, CustomBalancer, ListenAddr, EndpointAddr and VIP are
	// shoal.MeshConfig's fields of those names.
	Balancer       BalancerKind
	CustomBalancer ingress.Balancer
	ListenAddr     netip.Addr
	EndpointAddr   netip.Addr
	VIP            netip.Addr
	// SyncInterval is how often the sync loop reads Source and rejoins the
	// gossip when alone.
	SyncInterval time.Duration
	// Source, on a manager, returns the cluster's gossip keys and the
	// gossip addresses of some other nodes from the store; ok is false when
	// the node has no store (a worker, whose keys and peers come through
	// Update). Called from the sync loop; must not block for long.
	Source func() (keys [][]byte, peers []string, ok bool)
	// Clock times the mesh's own loops (sync, apply retries); nil means
	// clock.Real(). The gossip member's loops take gossip.Config.Clock, which
	// the Gossip hook may set.
	Clock clock.Clock
	// Logger and Metrics are the node's.
	Logger  *slog.Logger
	Metrics prometheus.Registerer
}

// Mesh is a started mesh part.
type Mesh struct {
	cfg    Config
	clock  clock.Clock
	log    *slog.Logger
	g      *gossip.Node
	bal    ingress.Balancer // nil for None
	epAddr netip.Addr

	// keysMu is held from comparing keys with the last applied through
	// recording them, so that concurrent Updates leave keys equal to the
	// keyring. It is taken before mu.
	keysMu  sync.Mutex
	mu      sync.Mutex
	keys    [][]byte // last applied; guarded by mu
	peers   []string // last known gossip addresses of other nodes; guarded by mu
	stopped bool     // guarded by mu

	// ctx ends when Stop begins: it ends the loops and any wait for a join.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Start starts the gossip member (on a throwaway key until the cluster's
// keys arrive through Update or Source) and the balancer.
func Start(ctx context.Context, cfg Config) (*Mesh, error) {
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.SyncInterval <= 0 {
		cfg.SyncInterval = time.Second
	}
	gc := gossip.DefaultConfig()
	if cfg.Gossip != nil {
		cfg.Gossip(&gc)
	}
	gc.NodeID = cfg.NodeID
	gc.Logger = cfg.Logger.With("component", "gossip")
	gc.Transport = cfg.GossipTransport
	host, _, err := net.SplitHostPort(cfg.NodeAddr)
	if err != nil {
		return nil, fmt.Errorf("mesh: node address %q: %w", cfg.NodeAddr, err)
	}
	gc.BindAddr = cfg.GossipAddr
	if gc.BindAddr == "" {
		port := DefaultGossipPort
		if cfg.AnyPort {
			port = "0" // a node on any free port gossips on any free port too
		}
		gc.BindAddr = net.JoinHostPort(host, port)
	}
	gc.AdvertiseAddr = cfg.GossipAdvertiseAddr
	// Until the cluster's keys arrive, a random key: the member can talk to
	// nobody, which is right for a node that does not know the cluster's.
	throwaway, err := gossipkeys.NewKeys(cfg.Clock.Now())
	if err != nil {
		return nil, fmt.Errorf("mesh: %w", err)
	}
	gc.Keys = throwaway.Keys
	g, err := gossip.New(gc)
	if err != nil {
		return nil, fmt.Errorf("mesh: %w", err)
	}
	if err := g.Start(ctx); err != nil {
		return nil, fmt.Errorf("mesh: starting the gossip member on %s: %w", gc.BindAddr, err)
	}
	m := &Mesh{cfg: cfg, clock: cfg.Clock, log: cfg.Logger, g: g}
	m.epAddr = cfg.EndpointAddr
	if !m.epAddr.IsValid() {
		ghost, _, _ := net.SplitHostPort(g.Addr())
		if a, err := netip.ParseAddr(ghost); err == nil {
			m.epAddr = a
		} else if a, err := netip.ParseAddr(host); err == nil {
			m.epAddr = a
		}
	}
	if m.bal, err = m.newBalancer(); err != nil {
		_ = g.Stop(ctx)
		return nil, err
	}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	m.wg.Add(2)
	go m.applyLoop(m.ctx)
	go m.syncLoop(m.ctx)
	return m, nil
}

func (m *Mesh) newBalancer() (ingress.Balancer, error) {
	if m.cfg.CustomBalancer != nil {
		return m.cfg.CustomBalancer, nil
	}
	log := m.log.With("component", "ingress")
	switch m.cfg.Balancer {
	case NFTables:
		c := nft.DefaultConfig()
		c.Logger = log
		return nft.New(c)
	case IPVS:
		c := ipvs.DefaultConfig()
		c.VIP = m.cfg.VIP
		if !c.VIP.IsValid() {
			c.VIP = m.epAddr
		}
		c.Logger = log
		return ipvs.New(c)
	case None:
		return nil, nil
	}
	c := ingress.DefaultConfig()
	if m.cfg.ListenAddr.IsValid() {
		c.ListenAddr = m.cfg.ListenAddr
	}
	c.Logger = log
	c.Registerer = m.cfg.Metrics
	return ingress.New(c)
}

// GossipAddr is the gossip member's address.
func (m *Mesh) GossipAddr() string { return m.g.Addr() }

// Table is the node's current view of the endpoint table.
func (m *Mesh) Table() []gossip.Endpoint { return m.g.Table() }

// Update applies keys and peers learned from a session or the store: the
// keyring follows the cluster's keys, and a member that is alone joins the
// peers. It may block for a join's timeout (5s), or until Stop begins.
func (m *Mesh) Update(keys [][]byte, peers []string) {
	m.mu.Lock()
	if m.stopped {
		m.mu.Unlock()
		return
	}
	if len(peers) > 0 {
		m.peers = slices.Clone(peers)
	}
	m.mu.Unlock()
	if len(keys) > 0 {
		m.applyKeys(keys)
	}
	m.joinIfAlone()
}

// applyKeys sets the keyring to keys unless they are the last applied.
func (m *Mesh) applyKeys(keys [][]byte) {
	m.keysMu.Lock()
	defer m.keysMu.Unlock()
	m.mu.Lock()
	same := slices.EqualFunc(keys, m.keys, bytes.Equal)
	m.mu.Unlock()
	if same {
		return
	}
	if err := m.g.SetKeys(keys); err != nil {
		m.log.Warn("mesh: applying the cluster's gossip keys", "err", err)
		return
	}
	applied := make([][]byte, len(keys))
	for i, k := range keys {
		applied[i] = slices.Clone(k)
	}
	m.mu.Lock()
	m.keys = applied
	m.mu.Unlock()
	m.log.Debug("mesh: gossip keys applied", "keys", len(applied))
}

// joinIfAlone joins the known peers when this member has the cluster's keys
// and sees no other member.
func (m *Mesh) joinIfAlone() {
	m.mu.Lock()
	peers := slices.DeleteFunc(slices.Clone(m.peers), func(p string) bool { return p == m.g.Addr() })
	ready := len(m.keys) > 0 && !m.stopped
	m.mu.Unlock()
	if !ready || len(peers) == 0 || len(m.g.Members()) > 1 {
		return
	}
	ctx, cancel := context.WithTimeout(m.ctx, 5*time.Second)
	defer cancel()
	if _, err := m.g.Join(ctx, peers); err != nil {
		m.log.Debug("mesh: joining the gossip", "peers", peers, "err", err)
	}
}

// OnEndpoints publishes the node's running tasks' ingress endpoints (the
// agent's AgentConfig.OnEndpoints).
func (m *Mesh) OnEndpoints(eps []dispatch.PublishedEndpoint) {
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

// ConfirmWithdrawal returns once every gossip member's table holds this
// node's current endpoint set: the agent calls it after withdrawing a
// stopping task's endpoints. Each member's balancer applies its table right
// after the table changes.
func (m *Mesh) ConfirmWithdrawal(ctx context.Context) error { return m.g.Confirm(ctx) }

// applyLoop hands every change of the gossip table to the balancer.
func (m *Mesh) applyLoop(ctx context.Context) {
	defer m.wg.Done()
	if m.bal == nil {
		return
	}
	ch, cancel := m.g.Watch()
	defer cancel()
	retry := m.clock.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	for {
		t := Table(m.g.Table())
		actx, acancel := context.WithTimeout(ctx, 30*time.Second)
		err := m.bal.Apply(actx, t)
		acancel()
		if err != nil && ctx.Err() == nil {
			m.log.Warn("mesh: applying the endpoint table", "err", err)
			var pe *ingress.PortError
			if !errors.As(err, &pe) {
				retry.Reset(time.Second) // not a port's own problem: try again
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-ch:
		case <-retry.C():
		}
	}
}

// Table turns the gossip table into the balancer's.
func Table(eps []gossip.Endpoint) ingress.Table {
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
func (m *Mesh) syncLoop(ctx context.Context) {
	defer m.wg.Done()
	t := m.clock.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
		m.sync()
		t.Reset(m.cfg.SyncInterval)
	}
}

// sync is one round of the sync loop: the store's keys and peers on a
// manager (Update joins when alone), a rejoin when alone elsewhere.
func (m *Mesh) sync() {
	if m.cfg.Source != nil {
		if keys, peers, ok := m.cfg.Source(); ok {
			m.Update(keys, peers)
			return
		}
	}
	m.joinIfAlone()
}

// Stop leaves the gossip gracefully (other nodes drop this node's endpoints
// at once) and removes the balancer's ports.
func (m *Mesh) Stop(ctx context.Context) error {
	m.mu.Lock()
	if m.stopped {
		m.mu.Unlock()
		return nil
	}
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
