package shoal_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal"
	"github.com/shoalhq/shoal/runtime"
	"github.com/shoalhq/shoal/shoaltest"
)

// meshCluster starts a cluster whose nodes run echo tasks on their own
// loopback addresses, and returns the runtimes by node name.
func meshCluster(t testing.TB, opts shoaltest.Options) (*shoaltest.Cluster, map[string]*echoRuntime) {
	t.Helper()
	var mu sync.Mutex
	rts := map[string]*echoRuntime{}
	opts.Mesh = true
	opts.Runtime = func(name string) runtime.Runtime {
		mu.Lock()
		defer mu.Unlock()
		r := newEchoRuntime()
		rts[name] = r
		return r
	}
	c := shoaltest.Start(t, opts)
	for _, n := range c.Nodes() {
		rts[n.Name].setIP(n.IP)
	}
	return c, rts
}

// askTCP connects to addr and returns what the server sent (a task ID).
func askTCP(addr netip.AddrPort) (string, error) {
	conn, err := net.DialTimeout("tcp", addr.String(), 2*time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
	b, err := io.ReadAll(conn)
	if err != nil {
		return "", err
	}
	if len(b) == 0 {
		return "", errors.New("empty reply")
	}
	return string(b), nil
}

// askUDP sends one datagram to addr and returns the reply (a task ID).
func askUDP(addr netip.AddrPort) (string, error) {
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("hi")); err != nil {
		return "", err
	}
	buf := make([]byte, 256)
	n, err := conn.Read(buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// runningTaskIDs returns the IDs of the service's running tasks, sorted.
func runningTaskIDs(c *shoaltest.Cluster, service string) []string {
	var ids []string
	for _, tk := range c.Tasks(service) {
		if tk.Status.State == shoal.TaskRunning && tk.DesiredState == shoal.TaskRunning {
			ids = append(ids, tk.ID)
		}
	}
	sort.Strings(ids)
	return ids
}

// publishedPort returns the service's published port for target.
func publishedPort(t testing.TB, c *shoaltest.Cluster, service string, target uint16, proto shoal.Protocol) uint16 {
	t.Helper()
	s, err := c.Client().GetService(ctxT(t), service)
	require.NoError(t, err)
	for _, p := range s.Ports {
		if p.Target == target && p.Protocol == proto {
			require.NotZero(t, p.Published)
			return p.Published
		}
	}
	t.Fatalf("service %s publishes no %d/%s", service, target, proto)
	return 0
}

// repliesFrom asks addr n times and returns the distinct replies (sorted)
// and the number of failed requests.
func repliesFrom(ask func(netip.AddrPort) (string, error), addr netip.AddrPort, n int) ([]string, int) {
	seen := map[string]bool{}
	failed := 0
	for i := 0; i < n; i++ {
		r, err := ask(addr)
		if err != nil {
			failed++
			continue
		}
		seen[r] = true
	}
	out := make([]string, 0, len(seen))
	for r := range seen {
		out = append(out, r)
	}
	sort.Strings(out)
	return out, failed
}

// waitMeshServes waits until, on every node, port answers from exactly the
// service's running tasks (want of them) and from nothing else.
func waitMeshServes(t testing.TB, c *shoaltest.Cluster, service string, port uint16, want int,
	ask func(netip.AddrPort) (string, error)) {
	t.Helper()
	c.WaitFor(fmt.Sprintf("every node's port %d answers from the %d running tasks", port, want), func() bool {
		ids := runningTaskIDs(c, service)
		if len(ids) != want {
			return false
		}
		for _, n := range c.Nodes() {
			got, failed := repliesFrom(ask, netip.AddrPortFrom(n.IP, port), 4*want)
			if failed > 0 || !slices.Equal(got, ids) {
				return false
			}
		}
		return true
	})
}

// startPublished creates a service of replicas tasks publishing pc in
// ingress mode and waits until every node's published port answers from all
// of them; it returns the service and its published port.
func startPublished(t testing.TB, c *shoaltest.Cluster, name string, replicas int, pc shoal.PortConfig,
	ask func(netip.AddrPort) (string, error)) (*shoal.Service, uint16) {
	t.Helper()
	spec := webSpec(name, replicas)
	spec.Ports = []shoal.PortConfig{pc}
	svc, err := c.Client().CreateService(ctxT(t), spec)
	require.NoError(t, err)
	c.WaitRunning(svc.ID, replicas)
	port := publishedPort(t, c, name, pc.Target, pc.Protocol)
	waitMeshServes(t, c, svc.ID, port, replicas, ask)
	return svc, port
}

// inSomeTable reports whether the mesh table of a node other than n still
// lists an endpoint on n.
func inSomeTable(c *shoaltest.Cluster, n *shoaltest.Node) bool {
	for _, o := range c.Nodes() {
		if o == n {
			continue
		}
		for _, e := range o.Shoal().MeshEndpoints() {
			if e.NodeID == n.ID() {
				return true
			}
		}
	}
	return false
}

// A service of 6 replicas published in ingress mode answers on every node's
// port (the managers' too, which run no tasks) with replies from all 6 tasks.
func TestMeshIngressAnswersOnEveryNode(t *testing.T) {
	c, _ := meshCluster(t, shoaltest.Options{Managers: 1, Workers: 3})
	_, port := startPublished(t, c, "web", 6, shoal.PortConfig{Target: 80}, askTCP)

	// Every node's table lists the 6 endpoints, each at its task's node.
	nodeIPs := map[string]netip.Addr{}
	for _, n := range c.Nodes() {
		nodeIPs[n.ID()] = n.IP
	}
	for _, n := range c.Nodes() {
		eps := n.Shoal().MeshEndpoints()
		assert.Lenf(t, eps, 6, "node %s", n.Name)
		for _, e := range eps {
			assert.Equal(t, port, e.Published)
			assert.Equal(t, shoal.TCP, e.Protocol)
			assert.Equal(t, nodeIPs[e.NodeID], e.Addr.Addr(), "an endpoint is its task's node address")
		}
	}
}

func TestMeshUDP(t *testing.T) {
	c, _ := meshCluster(t, shoaltest.Options{Managers: 1, Workers: 2})
	// Each askUDP is a new flow (a new client port): flows are balanced
	// round robin, so every task answers.
	startPublished(t, c, "dns", 3, shoal.PortConfig{Target: 53, Protocol: shoal.UDP}, askUDP)
}

// loadGen sends requests to the nodes' port in turn until stopped, and
// counts failures and replies by task.
type loadGen struct {
	stop     chan struct{}
	done     chan struct{}
	ok, fail atomic.Int64
	mu       sync.Mutex
	errs     []string
}

func startLoad(c *shoaltest.Cluster, port uint16) *loadGen {
	g := &loadGen{stop: make(chan struct{}), done: make(chan struct{})}
	nodes := c.Nodes()
	go func() {
		defer close(g.done)
		for i := 0; i < 200000; i++ {
			select {
			case <-g.stop:
				return
			default:
			}
			n := nodes[i%len(nodes)]
			if _, err := askTCP(netip.AddrPortFrom(n.IP, port)); err != nil {
				g.fail.Add(1)
				g.mu.Lock()
				if len(g.errs) < 10 {
					g.errs = append(g.errs, fmt.Sprintf("via %s: %v", n.Name, err))
				}
				g.mu.Unlock()
				continue
			}
			g.ok.Add(1)
		}
	}()
	return g
}

func (g *loadGen) halt() {
	select {
	case <-g.stop:
	default:
		close(g.stop)
	}
	<-g.done
}

// Scale-down and a rolling update under load: endpoints leave every balancer
// before their tasks stop, so no request fails and none reaches a task that
// is stopping; afterwards replies come only from the running tasks.
func TestMeshDrainsBeforeStop(t *testing.T) {
	c, rts := meshCluster(t, shoaltest.Options{Managers: 1, Workers: 3})
	ctx := ctxT(t)
	svc, port := startPublished(t, c, "web", 6, shoal.PortConfig{Target: 80}, askTCP)

	load := startLoad(c, port)
	defer load.halt()
	_, err := c.Client().ScaleService(ctx, svc.ID, 3)
	require.NoError(t, err)
	waitMeshServes(t, c, svc.ID, port, 3, askTCP)

	s, err := c.Client().GetService(ctx, svc.ID)
	require.NoError(t, err)
	spec := s.Spec
	spec.Task.Env = []string{"VERSION=2"}
	_, err = c.Client().UpdateService(ctx, svc.ID, s.Version, spec)
	require.NoError(t, err)
	c.WaitFor("update done", func() bool {
		n := 0
		for _, tk := range c.Tasks(svc.ID) {
			if tk.Status.State == shoal.TaskRunning && tk.DesiredState == shoal.TaskRunning && slices.Contains(tk.Spec.Env, "VERSION=2") {
				n++
			}
		}
		return n == 3
	})
	waitMeshServes(t, c, svc.ID, port, 3, askTCP)
	load.halt()

	assert.Positive(t, load.ok.Load())
	load.mu.Lock()
	assert.Zero(t, load.fail.Load(), "requests failed during scale-down and update: %v", load.errs)
	load.mu.Unlock()
	var dead int64
	for _, r := range rts {
		dead += r.deadHits()
	}
	assert.Zero(t, dead, "requests reached tasks that were stopping")
	t.Logf("%d requests through the mesh during scale-down and update", load.ok.Load())
}

// A task killed on its node is replaced; once the table converges no
// request reaches the dead endpoint.
func TestMeshKilledTaskLeavesRotation(t *testing.T) {
	c, rts := meshCluster(t, shoaltest.Options{Managers: 1, Workers: 2})
	svc, port := startPublished(t, c, "web", 4, shoal.PortConfig{Target: 80}, askTCP)

	var victim *shoal.Task
	for _, tk := range c.Tasks(svc.ID) {
		if tk.Status.State == shoal.TaskRunning {
			victim = tk
			break
		}
	}
	require.NotNil(t, victim)
	killed := false
	for _, r := range rts {
		if r.kill(victim.ID) {
			killed = true
		}
	}
	require.Truef(t, killed, "task %s is in no runtime", victim.ID)
	c.WaitFor("the killed task's endpoint leaves every table", func() bool {
		for _, n := range c.Nodes() {
			for _, e := range n.Shoal().MeshEndpoints() {
				if e.TaskID == victim.ID {
					return false
				}
			}
		}
		return true
	})
	waitMeshServes(t, c, svc.ID, port, 4, askTCP)
	got, failed := repliesFrom(askTCP, netip.AddrPortFrom(c.Manager().IP, port), 40)
	assert.Zero(t, failed)
	assert.NotContains(t, got, victim.ID)
}

// A node that dies without a word has its endpoints dropped from every other
// node's table by the gossip's failure detection.
func TestMeshKilledNodeEndpointsLeaveEveryBalancer(t *testing.T) {
	c, _ := meshCluster(t, shoaltest.Options{Managers: 1, Workers: 3,
		// A long heartbeat: the gossip, not the managers, must notice.
		HeartbeatPeriod: 10 * time.Second})
	ctx := ctxT(t)
	_, port := startPublished(t, c, "web", 6, shoal.PortConfig{Target: 80}, askTCP)

	victim := c.Workers()[0]
	start := time.Now()
	require.NoError(t, victim.Crash())
	c.WaitFor("the dead node's endpoints leave every live node's table", func() bool {
		return !inSomeTable(c, victim)
	})
	t.Logf("endpoints of the dead node left every table after %v", time.Since(start).Round(time.Millisecond))
	// The managers have not marked it down yet (30 s heartbeat timeout).
	nd, err := c.Client().GetNode(ctx, victim.ID())
	require.NoError(t, err)
	assert.NotEqual(t, shoal.NodeDown, nd.State, "the gossip noticed before the heartbeat timeout")
	for _, n := range c.Nodes() {
		if n == victim {
			continue
		}
		got, failed := repliesFrom(askTCP, netip.AddrPortFrom(n.IP, port), 20)
		assert.Zero(t, failed)
		assert.NotEmpty(t, got)
	}
}

// Host mode binds the published port only on the nodes that run a task, and
// the balancers leave it alone.
func TestMeshHostModeBindsOnlyWhereTasksRun(t *testing.T) {
	c, _ := meshCluster(t, shoaltest.Options{Managers: 1, Workers: 3})
	ctx := ctxT(t)
	hostPort := uint16(20000 + time.Now().UnixNano()%5000)
	spec := webSpec("edge", 2)
	spec.Ports = []shoal.PortConfig{{Target: 80, Published: hostPort, Mode: shoal.Host}}
	svc, err := c.Client().CreateService(ctx, spec)
	require.NoError(t, err)
	per := c.WaitRunning(svc.ID, 2)
	require.Len(t, per, 2, "one task per node: host ports conflict")
	for _, n := range c.Nodes() {
		_, err := askTCP(netip.AddrPortFrom(n.IP, hostPort))
		if per[n.ID()] > 0 {
			assert.NoErrorf(t, err, "node %s runs a task: its host port answers", n.Name)
		} else {
			assert.Errorf(t, err, "node %s runs no task: nothing listens on its host port", n.Name)
		}
		assert.Empty(t, n.Shoal().MeshEndpoints(), "host-mode ports are not in the mesh")
	}
}

// The gossip key rotates through its phases while endpoints keep spreading.
func TestMeshGossipKeyRotation(t *testing.T) {
	c, _ := meshCluster(t, shoaltest.Options{Managers: 1, Workers: 2})
	ctx := ctxT(t)
	svc, port := startPublished(t, c, "web", 2, shoal.PortConfig{Target: 80}, askTCP)

	_, err := c.Client().UpdateCluster(ctx, shoal.ClusterUpdate{RotateGossipKey: true})
	require.NoError(t, err)
	ci, err := c.Client().Cluster(ctx)
	require.NoError(t, err)
	assert.True(t, ci.GossipKeyRotating)
	_, err = c.Client().UpdateCluster(ctx, shoal.ClusterUpdate{RotateGossipKey: true})
	require.ErrorIs(t, err, shoal.ErrInvalidSpec, "a second rotation during the first is refused")
	c.WaitFor("rotation ends", func() bool {
		ci, err := c.Client().Cluster(ctx)
		return err == nil && !ci.GossipKeyRotating
	})
	// The gossip still works on the new key: a scale-up spreads.
	_, err = c.Client().ScaleService(ctx, svc.ID, 4)
	require.NoError(t, err)
	waitMeshServes(t, c, svc.ID, port, 4, askTCP)
}

// A start-first update under continuous load through the mesh: every slot
// keeps a serving task, and no request fails.
func TestMeshStartFirstUpdateDropsNothing(t *testing.T) {
	c, rts := meshCluster(t, shoaltest.Options{Managers: 1, Workers: 2})
	ctx := ctxT(t)
	svc, port := startPublished(t, c, "web", 3, shoal.PortConfig{Target: 80}, askTCP)
	load := startLoad(c, port)
	defer load.halt()

	s, err := c.Client().GetService(ctx, svc.ID)
	require.NoError(t, err)
	spec := s.Spec
	spec.Task.Env = []string{"VERSION=2"}
	spec.Update = shoal.UpdatePolicy{Parallelism: 1, Order: shoal.StartFirst}
	_, err = c.Client().UpdateService(ctx, svc.ID, s.Version, spec)
	require.NoError(t, err)
	minServing := 3
	c.WaitFor("update done", func() bool {
		n, updated := 0, 0
		for _, tk := range c.Tasks(svc.ID) {
			if tk.Status.State == shoal.TaskRunning && tk.DesiredState == shoal.TaskRunning {
				n++
				if slices.Contains(tk.Spec.Env, "VERSION=2") {
					updated++
				}
			}
		}
		minServing = min(minServing, n)
		return updated == 3 && n == 3
	})
	waitMeshServes(t, c, svc.ID, port, 3, askTCP)
	load.halt()

	assert.GreaterOrEqual(t, minServing, 3, "a start-first update keeps every slot serving")
	assert.Positive(t, load.ok.Load())
	load.mu.Lock()
	assert.Zero(t, load.fail.Load(), "requests failed during the start-first update: %v", load.errs)
	load.mu.Unlock()
	var dead int64
	for _, r := range rts {
		dead += r.deadHits()
	}
	assert.Zero(t, dead, "requests reached tasks that were stopping")
	t.Logf("%d requests through the mesh during the start-first update", load.ok.Load())
}
