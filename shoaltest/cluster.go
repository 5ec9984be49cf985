package shoaltest

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoalhq/shoal"
	"github.com/shoalhq/shoal/gossip"
	"github.com/shoalhq/shoal/gossip/gossiptest"
	"github.com/shoalhq/shoal/internal/testhook"
	"github.com/shoalhq/shoal/runtime"
	"github.com/shoalhq/shoal/runtime/runtimetest"
)

// Options shapes a test cluster. Zero fields take the defaults noted.
type Options struct {
	// Managers is the number of managers; default 1. The first one Inits the
	// cluster, the others join with the manager token; Start returns once
	// every manager votes.
	Managers int
	// Workers is the number of worker nodes; default 0.
	Workers int
	// HeartbeatPeriod is the cluster's heartbeat period; default 100ms, so a
	// stopped worker is noticed in about 300ms. Under the race detector
	// this and the cluster's other short timings are 2.5 times longer: it
	// slows everything several times, and a healthy node whose heartbeat is
	// late is marked DOWN and its tasks replaced.
	HeartbeatPeriod time.Duration
	// RestartDelay is the default delay before a task is replaced; default
	// 10ms, so tests of rescheduling run fast.
	RestartDelay time.Duration
	// ManagersRunTasks lets managers run tasks; default false, so that
	// placement assertions in tests only involve the workers.
	ManagersRunTasks bool
	// Runtime makes each node's runtime; default a new runtimetest fake per
	// node.
	Runtime func(name string) runtime.Runtime
	// Labels gives nodes their initial labels, by node name ("w1").
	Labels map[string]map[string]string
	// Resources gives nodes their capacity, by node name; default 4 CPUs and
	// 8 GiB, so tests do not depend on the machine.
	Resources map[string]shoal.Resources
	// Configure, if set, edits each node's Config before it starts.
	Configure func(name string, cfg *shoal.Config)
	// RaftFault, if set, is asked about every Raft message a manager sends
	// (from and to are Raft member IDs): drop it, or deliver it after delay.
	// It is called concurrently from the managers' transports and must not
	// block.
	RaftFault func(from, to uint64) (drop bool, delay time.Duration)
	// Logger receives every node's logs. By default the cluster keeps the
	// newest few hundred records at level Info and above and prints them,
	// with every node's and task's state, only if the test fails.
	Logger *slog.Logger
	// Timeout bounds each start, join and stop; default 30s.
	Timeout time.Duration
	// Mesh runs the routing mesh on every node, as in production: a gossip
	// member on the cluster's in-memory gossip network (GossipNetwork) and a
	// userspace balancer bound to the node's own loopback address (Node.IP),
	// so published ports answer on IP:port of every node. Default off, so
	// tests of other parts do not pay for the gossip's background work.
	Mesh bool
}

// Cluster is a Shoal cluster running in the test process, on an in-memory
// network with fault injection. Make one with Start; it stops itself when
// the test ends.
type Cluster struct {
	tb   testing.TB
	opts Options
	net  *Network
	dir  string
	// gossip is the nodes' gossip network; ipBase the first three bytes of
	// their loopback addresses (random per cluster, so clusters of
	// concurrent tests do not share published ports).
	gossip *gossiptest.MemNetwork
	ipBase [3]byte

	mu       sync.Mutex
	nodes    []*Node
	nextPort int
}

// Node is one member of a test cluster.
type Node struct {
	// Name is the node's name in the test ("m1", "w2") and its hostname.
	Name string
	// Addr is the node's address on the test network.
	Addr string
	// StateDir is the node's state directory; it survives Stop and Crash so
	// Restart brings the node back with its identity and state.
	StateDir string
	// Runtime is the node's runtime (a *runtimetest.Runtime by default; use
	// Fake).
	Runtime runtime.Runtime
	// Manager says whether the node was a manager when it last started or
	// stopped; IsManager follows promotions and demotions of a running node.
	Manager bool
	// IP is the node's own loopback address (127.x.y.z): its balancer binds
	// published ports there, and its tasks' endpoints carry it.
	IP netip.Addr
	// gossipAddr is the address of the node's current gossip transport.
	gossipAddr string

	// agentless: the node joined as a manager of a cluster whose managers run
	// no tasks; it keeps that setting across role changes and restarts.
	agentless bool
	c         *Cluster
	mu        sync.Mutex
	node      *shoal.Node
}

// scaled returns d stretched for the race detector (see slow).
func scaled(d time.Duration) time.Duration { return d * slow / 2 }

// Start starts a cluster of opts.Managers managers and opts.Workers workers
// and waits until every node is READY. It fails the test on error.
func Start(tb testing.TB, opts Options) *Cluster {
	tb.Helper()
	if opts.Managers == 0 {
		opts.Managers = 1
	}
	if opts.HeartbeatPeriod == 0 {
		opts.HeartbeatPeriod = scaled(100 * time.Millisecond)
	}
	if opts.RestartDelay == 0 {
		opts.RestartDelay = 10 * time.Millisecond
	}
	if opts.Runtime == nil {
		opts.Runtime = func(string) runtime.Runtime { return runtimetest.New() }
	}
	var rec *recorder
	if opts.Logger == nil {
		rec = newRecorder()
		opts.Logger = slog.New(rec)
	}
	if opts.Timeout == 0 {
		opts.Timeout = 30 * time.Second
	}
	c := &Cluster{tb: tb, opts: opts, net: NewNetwork(), dir: tb.TempDir(), nextPort: 4242,
		gossip: gossiptest.NewMemNetwork(rand.Uint64())}
	c.ipBase = [3]byte{127, byte(1 + rand.IntN(254)), byte(rand.IntN(256))}
	tb.Cleanup(c.Stop)
	// Cleanups run last first: the report sees the cluster before Stop.
	tb.Cleanup(func() { c.reportFailure(rec) })
	for i := 0; i < opts.Managers; i++ {
		if _, err := c.AddManager(); err != nil {
			tb.Fatalf("shoaltest: start manager: %v", err)
		}
	}
	c.WaitFor("every manager votes", func() bool {
		ctx, cancel := c.ctx()
		defer cancel()
		l := c.Leader()
		if l == nil {
			return false
		}
		voters, learners, err := l.Shoal().RaftMembers(ctx)
		return err == nil && voters == opts.Managers && learners == 0
	})
	for i := 0; i < opts.Workers; i++ {
		if _, err := c.AddWorker(); err != nil {
			tb.Fatalf("shoaltest: start worker: %v", err)
		}
	}
	c.WaitFor("all nodes ready", func() bool {
		ctx, cancel := c.ctx()
		defer cancel()
		nodes, err := c.Client().ListNodes(ctx)
		if err != nil {
			return false
		}
		ready := 0
		for _, n := range nodes {
			if n.State == shoal.NodeReady || (n.Role == shoal.Manager && !opts.ManagersRunTasks) {
				ready++
			}
		}
		return ready == len(c.Nodes())
	})
	return c
}

// ctx bounds one start, join or stop, and carries the cluster's
// fault-injection hooks to the nodes it starts.
func (c *Cluster) ctx() (context.Context, context.CancelFunc) {
	ctx := context.Background()
	if c.opts.RaftFault != nil {
		ctx = testhook.With(ctx, testhook.Hooks{RaftFault: c.opts.RaftFault})
	}
	return context.WithTimeout(ctx, c.opts.Timeout)
}

// Network returns the cluster's network, for fine-grained faults.
func (c *Cluster) Network() *Network { return c.net }

// GossipNetwork returns the nodes' gossip network (nil without Mesh),
// for loss and isolation.
func (c *Cluster) GossipNetwork() *gossiptest.MemNetwork {
	if !c.opts.Mesh {
		return nil
	}
	return c.gossip
}

func (c *Cluster) config(n *Node) shoal.Config {
	lis, err := c.net.Listen(n.Addr)
	if err != nil {
		c.tb.Fatalf("shoaltest: %v", err)
	}
	res, ok := c.opts.Resources[n.Name]
	if !ok {
		res = shoal.Resources{NanoCPUs: 4e9, MemoryBytes: 8 << 30}
	}
	cfg := shoal.Config{
		StateDir:        n.StateDir,
		Listener:        lis,
		AdvertiseAddr:   n.Addr,
		Dial:            c.net.Dialer(n.Addr),
		Hostname:        n.Name,
		Labels:          c.opts.Labels[n.Name],
		Resources:       res,
		Runtime:         n.Runtime,
		DisableAgent:    n.agentless,
		HeartbeatPeriod: c.opts.HeartbeatPeriod,
		RestartDelay:    c.opts.RestartDelay,
		Logger:          c.opts.Logger.With("node", n.Name),
		Raft:            shoal.RaftConfig{TickInterval: scaled(10 * time.Millisecond)},
	}
	if !c.opts.Mesh {
		cfg.Mesh.Disabled = true
	} else {
		tr := c.gossip.NewTransport()
		n.mu.Lock()
		n.gossipAddr = tr.Addr()
		n.mu.Unlock()
		cfg.Mesh = shoal.MeshConfig{
			GossipTransport: tr,
			ListenAddr:      n.IP,
			EndpointAddr:    n.IP,
			// Endpoint changes reach a handful of in-memory members in well
			// under 100ms; tests of draining want it short.
			DrainDelay:       scaled(200 * time.Millisecond),
			KeyRotationGrace: scaled(300 * time.Millisecond),
			Gossip: func(g *gossip.Config) {
				// Failure detection in about a second, for tests of dead nodes.
				g.ProbeInterval = scaled(200 * time.Millisecond)
				g.ProbeTimeout = scaled(100 * time.Millisecond)
				g.GossipInterval = scaled(50 * time.Millisecond)
				g.PushPullInterval = 2 * time.Second
				// In-memory gossip spreads a leave in milliseconds; every
				// node's Stop would otherwise wait a second.
				g.LeavePropagateDelay = 50 * time.Millisecond
				g.LeaveTimeout = 50 * time.Millisecond
			},
		}
	}
	if c.opts.Configure != nil {
		c.opts.Configure(n.Name, &cfg)
	}
	return cfg
}

func (c *Cluster) addNode(manager bool) (*Node, error) {
	c.mu.Lock()
	prefix, count := "w", 0
	if manager {
		prefix = "m"
	}
	for _, n := range c.nodes {
		if strings.HasPrefix(n.Name, prefix) {
			count++
		}
	}
	name := fmt.Sprintf("%s%d", prefix, count+1)
	n := &Node{Name: name, Addr: fmt.Sprintf("127.0.0.1:%d", c.nextPort), StateDir: filepath.Join(c.dir, name),
		Runtime: c.opts.Runtime(name), Manager: manager, agentless: manager && !c.opts.ManagersRunTasks, c: c,
		IP: netip.AddrFrom4([4]byte{c.ipBase[0], c.ipBase[1], c.ipBase[2], byte(len(c.nodes) + 1)})}
	c.nextPort++
	c.mu.Unlock()
	cfg := c.config(n)
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.Timeout)
	defer cancel()
	var sn *shoal.Node
	var err error
	if manager && c.Manager() == nil {
		sn, err = shoal.Init(ctx, cfg)
	} else {
		var ci *shoal.ClusterInfo
		ci, err = c.Client().Cluster(ctx)
		if err == nil {
			token := ci.WorkerToken
			if manager {
				token = ci.ManagerToken
			}
			sn, err = shoal.Join(ctx, cfg, c.runningManager().Addr, token)
		}
	}
	if err != nil {
		_ = cfg.Listener.Close()
		return nil, err
	}
	n.node = sn
	c.mu.Lock()
	c.nodes = append(c.nodes, n)
	c.mu.Unlock()
	return n, nil
}

// AddManager adds a manager: the first one creates the cluster, later ones
// join with the manager token.
func (c *Cluster) AddManager() (*Node, error) { return c.addNode(true) }

// AddWorker joins a new worker with the cluster's worker token.
func (c *Cluster) AddWorker() (*Node, error) { return c.addNode(false) }

// Nodes returns every node, managers first.
func (c *Cluster) Nodes() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := append([]*Node(nil), c.nodes...)
	roles := make(map[*Node]bool, len(out))
	for _, n := range out {
		roles[n] = n.IsManager()
	}
	sort.SliceStable(out, func(i, j int) bool { return roles[out[i]] && !roles[out[j]] })
	return out
}

// Workers returns the worker nodes.
func (c *Cluster) Workers() []*Node {
	var out []*Node
	for _, n := range c.Nodes() {
		if !n.IsManager() {
			out = append(out, n)
		}
	}
	return out
}

// Manager returns the first manager (running or not).
func (c *Cluster) Manager() *Node {
	for _, n := range c.Nodes() {
		if n.IsManager() {
			return n
		}
	}
	return nil
}

// Managers returns the managers.
func (c *Cluster) Managers() []*Node {
	var out []*Node
	for _, n := range c.Nodes() {
		if n.IsManager() {
			out = append(out, n)
		}
	}
	return out
}

// runningManager returns a running manager, the leader if there is one.
func (c *Cluster) runningManager() *Node {
	if l := c.Leader(); l != nil {
		return l
	}
	for _, n := range c.Managers() {
		if n.Shoal() != nil {
			return n
		}
	}
	return nil
}

// Leader returns the running manager that leads, or nil.
func (c *Cluster) Leader() *Node {
	for _, n := range c.Managers() {
		if sn := n.Shoal(); sn != nil && sn.IsLeader() {
			return n
		}
	}
	return nil
}

// NodeByName returns the node with that name, or nil.
func (c *Cluster) NodeByName(name string) *Node {
	for _, n := range c.Nodes() {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// NodeByID returns the node with that cluster node ID, or nil.
func (c *Cluster) NodeByID(id string) *Node {
	for _, n := range c.Nodes() {
		if n.ID() == id {
			return n
		}
	}
	return nil
}

// Client returns the control API client of a running manager (the leader
// if there is one; any manager serves the API).
func (c *Cluster) Client() *shoal.Client {
	m := c.runningManager()
	if m == nil {
		c.tb.Fatalf("shoaltest: no running manager")
	}
	return m.Shoal().Client()
}

// IsManager reports whether the node is a manager: its current role while
// it runs (promotions and demotions happen live), else its role when it
// stopped.
func (n *Node) IsManager() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.node != nil {
		return n.node.Role() == shoal.Manager
	}
	return n.Manager
}

// Shoal returns the running shoal.Node, or nil while the node is stopped.
func (n *Node) Shoal() *shoal.Node {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.node
}

// ID returns the node's cluster ID.
func (n *Node) ID() string {
	if sn := n.Shoal(); sn != nil {
		return sn.ID()
	}
	id, _ := readNodeID(n.StateDir)
	return id
}

func readNodeID(dir string) (string, error) {
	data, err := os.ReadFile(filepath.Join(dir, "node.json"))
	if err != nil {
		return "", err
	}
	var id struct {
		NodeID string `json:"node_id"`
	}
	if err := json.Unmarshal(data, &id); err != nil {
		return "", err
	}
	return id.NodeID, nil
}

// Fake returns the node's runtime as the runtimetest fake (nil if the test
// gave the node another runtime).
func (n *Node) Fake() *runtimetest.Runtime {
	f, _ := n.Runtime.(*runtimetest.Runtime)
	return f
}

// Stop stops the node gracefully: its tasks are shut down and reported.
func (n *Node) Stop() error {
	n.mu.Lock()
	sn := n.node
	n.node = nil
	if sn != nil {
		n.Manager = sn.Role() == shoal.Manager
	}
	n.mu.Unlock()
	if sn == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), n.c.opts.Timeout)
	defer cancel()
	return sn.Stop(ctx)
}

// Crash stops the node as if its machine died: it is cut off from every
// other node first, so nothing it does while going down reaches the cluster.
func (n *Node) Crash() error {
	for _, a := range n.c.net.Addrs() {
		if a != n.Addr {
			n.c.net.Cut(n.Addr, a)
		}
	}
	n.mu.Lock()
	ga := n.gossipAddr
	n.mu.Unlock()
	if ga != "" {
		// Its gossip member cannot say goodbye either: the others must find
		// out by probing, as when a machine dies.
		n.c.gossip.Isolate(ga, true)
		defer n.c.gossip.Isolate(ga, false)
	}
	err := n.Stop()
	for _, a := range n.c.net.Addrs() {
		if a != n.Addr {
			n.c.net.Heal(n.Addr, a)
		}
	}
	return err
}

// Restart starts a stopped node again from its StateDir, with its identity,
// and, for a manager, all its state.
func (n *Node) Restart() error { return n.RestartWith(nil) }

// RestartWith is Restart with edit applied to the node's Config first (for
// example to set ForceNewCluster).
func (n *Node) RestartWith(edit func(*shoal.Config)) error {
	n.mu.Lock()
	running := n.node != nil
	n.mu.Unlock()
	if running {
		return fmt.Errorf("shoaltest: %s is running", n.Name)
	}
	cfg := n.c.config(n)
	if edit != nil {
		edit(&cfg)
	}
	sn, err := shoal.New(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), n.c.opts.Timeout)
	defer cancel()
	if err := sn.Start(ctx); err != nil {
		_ = cfg.Listener.Close()
		return err
	}
	n.mu.Lock()
	n.node = sn
	n.mu.Unlock()
	return nil
}

// Partition cuts every link between the nodes of group a and those of b.
func (c *Cluster) Partition(a, b []*Node) {
	for _, x := range a {
		for _, y := range b {
			c.net.Cut(x.Addr, y.Addr)
		}
	}
}

// Isolate cuts n off from every other node.
func (c *Cluster) Isolate(n *Node) {
	var others []*Node
	for _, o := range c.Nodes() {
		if o != n {
			others = append(others, o)
		}
	}
	c.Partition([]*Node{n}, others)
}

// Heal removes every partition.
func (c *Cluster) Heal() { c.net.HealAll() }

// WaitFor polls cond until it holds, failing the test after the cluster's
// timeout with what.
func (c *Cluster) WaitFor(what string, cond func() bool) {
	c.tb.Helper()
	deadline := time.Now().Add(c.opts.Timeout)
	for !cond() {
		if time.Now().After(deadline) {
			c.tb.Fatalf("shoaltest: timed out after %v waiting for %s", c.opts.Timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Tasks returns the tasks of a service (by ID or name).
func (c *Cluster) Tasks(service string) []*shoal.Task {
	c.tb.Helper()
	ctx, cancel := c.ctx()
	defer cancel()
	ts, err := c.Client().ListTasks(ctx, shoal.TaskFilter{Service: service})
	if err != nil {
		c.tb.Fatalf("shoaltest: list tasks: %v", err)
	}
	return ts
}

// Running returns the service's tasks that are RUNNING and meant to run,
// counted by node ID.
func (c *Cluster) Running(service string) map[string]int {
	out := map[string]int{}
	for _, t := range c.Tasks(service) {
		if t.Status.State == shoal.TaskRunning && t.DesiredState == shoal.TaskRunning {
			out[t.NodeID]++
		}
	}
	return out
}

// WaitRunning waits until exactly n tasks of the service are RUNNING (and
// desired running), and no other task of it is still meant to run. It
// returns the running tasks counted by node ID.
func (c *Cluster) WaitRunning(service string, n int) map[string]int {
	c.tb.Helper()
	return c.WaitRunningWhere(service, n, nil)
}

// WaitRunningWhere is WaitRunning that also waits until ok accepts the
// running tasks counted by node ID (nil accepts any placement).
func (c *Cluster) WaitRunningWhere(service string, n int, ok func(perNode map[string]int) bool) map[string]int {
	c.tb.Helper()
	var last map[string]int
	c.WaitFor(fmt.Sprintf("%d running tasks of %s", n, service), func() bool {
		total, live := 0, 0
		last = map[string]int{}
		for _, t := range c.Tasks(service) {
			if t.DesiredState <= shoal.TaskRunning {
				live++
				if t.Status.State == shoal.TaskRunning {
					total++
					last[t.NodeID]++
				}
			}
		}
		return total == n && live == n && (ok == nil || ok(last))
	})
	return last
}

// Stop stops every node (workers first). It runs at the end of the test.
func (c *Cluster) Stop() {
	nodes := c.Nodes()
	var wg sync.WaitGroup
	for _, n := range nodes {
		if !n.IsManager() {
			wg.Add(1)
			go func() { defer wg.Done(); _ = n.Stop() }()
		}
	}
	wg.Wait()
	for _, n := range nodes {
		if n.IsManager() {
			_ = n.Stop()
		}
	}
}
