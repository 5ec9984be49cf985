package nft

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/ingress"
)

// The routing-mesh topology: three node namespaces and a client namespace,
// each with an eth0 that is a veth pair to a port of one Linux bridge in a
// "switch" namespace, so all four share one L2 segment, 10.202.0.0/24 (and
// fd00:202::/64 when the lab is dual stack). Every node forwards and runs
// its own balancer; n1 runs no task, n2 runs task-a, n3 runs task-b and
// task-c.
//
//	                  switch: bridge br0 (no address)
//	     ┌───────────────┬──────┴────────┬───────────────┐
//	client .100       n1 .1            n2 .2           n3 .3
//	(::100)           (::1)            (::2)           (::3)
//	                (no task)     task-a :8080    task-b :8080
//	                                              task-c :8090
const meshPublished = 30080 // the published port, on every node

var meshNodes = []string{"n1", "n2", "n3"}

// meshFamily is the addressing of the mesh in one IP family.
type meshFamily struct {
	tcp, udp  string // network names for net.Dial
	prefixLen string
	client    netip.Addr
	node      map[string]netip.Addr
}

var (
	mesh4 = meshFamily{
		tcp: "tcp4", udp: "udp4", prefixLen: "24",
		client: netip.MustParseAddr("10.202.0.100"),
		node: map[string]netip.Addr{
			"n1": netip.MustParseAddr("10.202.0.1"),
			"n2": netip.MustParseAddr("10.202.0.2"),
			"n3": netip.MustParseAddr("10.202.0.3"),
		},
	}
	mesh6 = meshFamily{
		tcp: "tcp6", udp: "udp6", prefixLen: "64",
		client: netip.MustParseAddr("fd00:202::100"),
		node: map[string]netip.Addr{
			"n1": netip.MustParseAddr("fd00:202::1"),
			"n2": netip.MustParseAddr("fd00:202::2"),
			"n3": netip.MustParseAddr("fd00:202::3"),
		},
	}
)

// published is the published port on node, as host:port.
func (f meshFamily) published(node string) string {
	return netip.AddrPortFrom(f.node[node], meshPublished).String()
}

// meshTask is one task server: it listens on its node's address (in each
// family of the lab), on its own port, and answers with its name.
type meshTask struct {
	name, node string
	port       uint16
}

func (mt meshTask) endpoint(f meshFamily) ingress.Endpoint {
	return ingress.Endpoint{Service: "web", Task: mt.name, Addr: netip.AddrPortFrom(f.node[mt.node], mt.port)}
}

var (
	taskA = meshTask{"task-a", "n2", 8080}
	taskB = meshTask{"task-b", "n3", 8080}
	taskC = meshTask{"task-c", "n3", 8090}

	meshTasks = map[string]meshTask{taskA.name: taskA, taskB.name: taskB, taskC.name: taskC} // by name

	meshTCP = ingress.Port{Service: "web", Protocol: ingress.TCP, Published: meshPublished}
	meshUDP = ingress.Port{Service: "web", Protocol: ingress.UDP, Published: meshPublished}
)

// meshEndpoints is the endpoints of tasks in family f, in that (round-robin)
// order.
func meshEndpoints(f meshFamily, tasks ...meshTask) []ingress.Endpoint {
	var eps []ingress.Endpoint
	for _, mt := range tasks {
		eps = append(eps, mt.endpoint(f))
	}
	return eps
}

// meshTable publishes meshTCP and meshUDP over the IPv4 endpoints of tasks.
func meshTable(tasks ...meshTask) ingress.Table {
	return ingress.Table{meshTCP: meshEndpoints(mesh4, tasks...), meshUDP: meshEndpoints(mesh4, tasks...)}
}

// meshLab is a lab wired as the routing-mesh topology above.
type meshLab struct {
	*lab
	families []meshFamily
	// udpPort is the next client source port for a UDP flow. Each flow gets
	// its own, so none reuses the 5-tuple of an earlier flow whose conntrack
	// entry (30 s for UDP) would still pin it to that flow's endpoint, and a
	// new flow is always a new balancing decision. The range is below the
	// ephemeral one, where nothing else binds in the client namespace.
	udpPort uint16
}

// newMeshLab creates the switch, client and node namespaces, wires them
// with IPv4 and, if dualStack, IPv6 too, and registers their deletion with
// tb.Cleanup.
func newMeshLab(tb testing.TB, dualStack bool) *meshLab {
	tb.Helper()
	requireNetNS(tb)
	m := &meshLab{lab: &lab{tb: tb, name: map[string]string{}}, families: []meshFamily{mesh4}, udpPort: 20000}
	if dualStack {
		if _, err := os.Stat("/proc/sys/net/ipv6"); err != nil {
			tb.Skipf("the dual-stack mesh test needs IPv6 in the kernel: %v", err)
		}
		m.families = append(m.families, mesh6)
	}
	roles := append([]string{"switch", "client"}, meshNodes...)
	m.addNamespaces(roles...)
	ipn := func(role string, args ...string) { run(tb, append([]string{"ip", "-n", m.name[role]}, args...)...) }
	sysctl := func(role string, kv ...string) {
		run(tb, append([]string{"ip", "netns", "exec", m.name[role], "sysctl", "-qw"}, kv...)...)
	}
	for _, role := range roles {
		ipn(role, "link", "set", "lo", "up")
	}
	// forward_delay 0: with STP off, ports forward as soon as they are up.
	// No multicast snooping: IPv6 neighbour discovery is multicast, and
	// without a querier on the segment snooping only adds ways to lose it.
	if out, err := exec.Command("ip", "-n", m.name["switch"], "link", "add", "br0", "type", "bridge",
		"forward_delay", "0", "mcast_snooping", "0").CombinedOutput(); err != nil {
		tb.Skipf("the mesh tests need Linux bridges (CONFIG_BRIDGE) for the shared segment: %v: %s", err, out)
	}
	ipn("switch", "link", "set", "br0", "up")
	attach := func(role string, addrs ...string) {
		ipn("switch", "link", "add", role, "type", "veth", "peer", "name", "eth0", "netns", m.name[role])
		ipn("switch", "link", "set", role, "master", "br0")
		ipn("switch", "link", "set", role, "up")
		for _, a := range addrs {
			// nodad: the addresses are unique by construction, and usable
			// at once instead of after duplicate address detection.
			args := []string{"addr", "add", a, "dev", "eth0"}
			if strings.Contains(a, ":") {
				args = append(args, "nodad")
			}
			ipn(role, args...)
		}
		ipn(role, "link", "set", "eth0", "up")
	}
	addrs := func(of func(meshFamily) netip.Addr) []string {
		var out []string
		for _, f := range m.families {
			out = append(out, of(f).String()+"/"+f.prefixLen)
		}
		return out
	}
	attach("client", addrs(func(f meshFamily) netip.Addr { return f.client })...)
	for _, n := range meshNodes {
		attach(n, addrs(func(f meshFamily) netip.Addr { return f.node[n] })...)
		// A node forwards what it DNATs to another node out of the interface
		// it came in on; without redirects the client keeps sending to the
		// node it chose instead of being told to go to the task's node.
		sysctl(n, "net.ipv4.ip_forward=1",
			"net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.eth0.send_redirects=0")
		if dualStack {
			sysctl(n, "net.ipv6.conf.all.forwarding=1")
		}
	}
	return m
}

// startTasks starts, for each task and each family of the lab, a TCP and a
// UDP server on the task's address in its node's namespace, each answering
// "NAME REMOTEADDR\n" like the backends of startBackends.
func (m *meshLab) startTasks(tasks ...meshTask) {
	m.tb.Helper()
	bs := &backends{}
	m.tb.Cleanup(bs.close)
	for _, mt := range tasks {
		for _, f := range m.families {
			addr := mt.endpoint(f).Addr.String()
			var (
				ln net.Listener
				pc net.PacketConn
			)
			require.NoError(m.tb, m.in(mt.node, func() error {
				var err error
				if ln, err = net.Listen(f.tcp, addr); err != nil {
					return err
				}
				pc, err = net.ListenPacket(f.udp, addr)
				if err != nil {
					_ = ln.Close()
				}
				return err
			}), "task %s on %s", mt.name, addr)
			bs.closers = append(bs.closers, ln, pc)
			bs.serve(ln, func(c net.Conn) { _, _ = fmt.Fprintf(c, "%s %s\n", mt.name, c.RemoteAddr()) })
			bs.serveUDP(pc, mt.name)
		}
	}
}

// askTCP connects from role to addr over f and returns the answering task's
// name and the source it saw.
func (m *meshLab) askTCP(f meshFamily, role, addr string) (name, from string, err error) {
	c, err := m.dial(role, f.tcp, addr, 5*time.Second)
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	return readAnswer(c)
}

// askUDP sends a datagram over f from the client, from a source port no
// earlier flow used, to addr and returns the answering task's name and the
// source it saw, trying as askFlow does.
func (m *meshLab) askUDP(f meshFamily, addr string, tries int, wait time.Duration) (name, from string, err error) {
	local := net.UDPAddrFromAddrPort(netip.AddrPortFrom(f.client, m.udpPort))
	m.udpPort++
	raddr, err := net.ResolveUDPAddr(f.udp, addr)
	if err != nil {
		return "", "", err
	}
	var c *net.UDPConn
	if err := m.in("client", func() error {
		var err error
		c, err = net.DialUDP(f.udp, local, raddr)
		return err
	}); err != nil {
		return "", "", err
	}
	defer c.Close()
	return askFlow(c, tries, wait)
}

// tables lists the names of the inet tables in the namespace of role, read
// over netlink with the nftables library rather than through the balancer.
func (m *meshLab) tables(role string) []string {
	m.tb.Helper()
	f, err := os.Open(m.path(role))
	require.NoError(m.tb, err)
	defer f.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	require.NoError(m.tb, err)
	ts, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	require.NoError(m.tb, err)
	var names []string
	for _, tb := range ts {
		names = append(names, tb.Name)
	}
	return names
}

// checkSource checks the source address a task saw for a connection made
// to node over f. A task on another node sees that node's address: the
// node forwarded and masqueraded, so the reply comes back through it for
// conntrack to undo both translations. A task on the node itself gets the
// connection delivered locally, which no masquerade applies to, and sees
// the client.
func checkSource(t *testing.T, f meshFamily, node string, answered meshTask, from string) {
	t.Helper()
	src, err := netip.ParseAddrPort(from)
	if !assert.NoError(t, err, "task %s reported source %q", answered.name, from) {
		return
	}
	want := f.client
	if answered.node != node {
		want = f.node[node]
	}
	assert.Equal(t, want, src.Addr(),
		"connection to %s answered by %s on %s: source seen by the task", node, answered.name, answered.node)
}

// askAll makes count new connections (TCP) or flows (UDP) from the client
// to the published port of node over f, checks each answer's source and
// returns the answering tasks' names in order.
func (m *meshLab) askAll(t *testing.T, f meshFamily, udp bool, node string, count int) []string {
	t.Helper()
	var names []string
	for i := range count {
		var name, from string
		var err error
		if udp {
			name, from, err = m.askUDP(f, f.published(node), 5, 2*time.Second)
		} else {
			name, from, err = m.askTCP(f, "client", f.published(node))
		}
		require.NoError(t, err, "%s %s, udp %v, connection %d", f.tcp, node, udp, i)
		mt, ok := meshTasks[name]
		require.True(t, ok, "unexpected answer %q from %s", name, node)
		checkSource(t, f, node, mt, from)
		names = append(names, name)
	}
	return names
}

// startBalancers starts one balancer per node on table and registers their
// Stop with t.Cleanup.
func (m *meshLab) startBalancers(t *testing.T, table string) []*Balancer {
	t.Helper()
	bs := make([]*Balancer, len(meshNodes))
	for i, n := range meshNodes {
		b, err := New(Config{TableName: table, NetNS: m.path(n)})
		require.NoError(t, err)
		t.Cleanup(func() { _ = b.Stop(context.Background()) })
		bs[i] = b
	}
	return bs
}

// TestNamespaceMeshEveryNodeAnswers checks the routing mesh for real: three
// node namespaces each run a balancer with the same table, and the
// published port answers on every node - including n1, which runs no task -
// balancing round robin over all the service's tasks wherever they run,
// for TCP and UDP, with the kernel forwarding and masquerading across
// nodes. Removing an endpoint from the table on every node stops new
// connections to it everywhere, and stopping the balancers one by one takes
// the port down on each stopped node while the others keep answering.
func TestNamespaceMeshEveryNodeAnswers(t *testing.T) {
	m := newMeshLab(t, false)
	m.startTasks(taskA, taskB, taskC)
	ctx := context.Background()
	const table = "shoal-test-mesh"
	balancers := m.startBalancers(t, table)
	applyAll := func(tbl ingress.Table) {
		t.Helper()
		for i, b := range balancers {
			require.NoError(t, b.Apply(ctx, tbl), "Apply on %s", meshNodes[i])
		}
	}

	// The same table programs the same ruleset on every node: a node's
	// rules do not depend on which tasks it runs.
	applyAll(meshTable(taskA, taskB, taskC))
	ruleset := m.nft("n1", "list", "table", "inet", table)
	for _, n := range meshNodes[1:] {
		assert.Equal(t, ruleset, m.nft(n, "list", "table", "inet", table), "ruleset on %s", n)
	}

	// Every node answers and cycles through all three tasks in table
	// order: on n1 all of them are remote, on n2 one is local and two are
	// on n3, on n3 two are local and one is on n2. askAll checks who each
	// task saw as the source.
	for _, n := range meshNodes {
		assertRoundRobin(t, m.askAll(t, mesh4, false, n, 9), "task-a", "task-b", "task-c")
		assertRoundRobin(t, m.askAll(t, mesh4, true, n, 6), "task-a", "task-b", "task-c")
	}

	// A connection a node opens itself to its own published port is
	// balanced across the mesh too (the output chain), here from n1, which
	// runs none of the tasks: they all see n1's address.
	var names []string
	for i := range 3 {
		name, from, err := m.askTCP(mesh4, "n1", mesh4.published("n1"))
		require.NoError(t, err, "connection %d from n1", i)
		mt := meshTasks[name]
		require.NotEmpty(t, mt.name, "unexpected answer %q", name)
		checkSource(t, mesh4, "n1", mt, from)
		names = append(names, name)
	}
	assertRoundRobin(t, names, "task-a", "task-b", "task-c")

	// Remove task-b's endpoint on every node. task-b itself keeps running
	// (it answers when asked directly), so any connection the balancers
	// still sent there would show up; none does, on any node, and the
	// remaining two alternate. task-c, on task-b's node and address, stays:
	// removal is per endpoint, not per node.
	applyAll(meshTable(taskA, taskC))
	name, _, err := m.askTCP(mesh4, "client", taskB.endpoint(mesh4).Addr.String())
	require.NoError(t, err)
	require.Equal(t, "task-b", name, "task-b still runs, reachable directly")
	for _, n := range meshNodes {
		assertRoundRobin(t, m.askAll(t, mesh4, false, n, 6), "task-a", "task-c")
		assertRoundRobin(t, m.askAll(t, mesh4, true, n, 4), "task-a", "task-c")
	}

	// Stop the balancers one at a time. Stop deletes the node's table (read
	// back over netlink), after which the published port on that node is
	// just a port nothing listens on: the node itself refuses TCP, so the
	// connection was neither DNATed nor dropped, and UDP gets no answer.
	// Nodes not yet stopped still balance.
	for i, n := range meshNodes {
		require.Contains(t, m.tables(n), table)
		require.NoError(t, balancers[i].Stop(ctx), "Stop on %s", n)
		assert.NotContains(t, m.tables(n), table, "table on %s after Stop", n)

		c, err := m.dial("client", "tcp4", mesh4.published(n), 5*time.Second)
		if err == nil {
			c.Close()
		}
		assert.ErrorIs(t, err, syscall.ECONNREFUSED, "TCP to %s after its balancer stopped", n)
		name, _, err := m.askUDP(mesh4, mesh4.published(n), 1, time.Second)
		assert.Error(t, err, "UDP to %s after its balancer stopped answered %q", n, name)

		for _, other := range meshNodes[i+1:] {
			name, _, err := m.askTCP(mesh4, "client", mesh4.published(other))
			require.NoError(t, err, "%s after %s stopped", other, n)
			assert.Contains(t, []string{"task-a", "task-c"}, name, "%s after %s stopped", other, n)
		}
	}
}

// TestNamespaceMeshPartialTables checks that nodes whose tables disagree
// each balance by their own: a node's balancer never consults another's,
// so the mesh is only as consistent as the tables the nodes are given. A
// node given a port without endpoints drops its packets, even though a
// local process listens on that port, while the other nodes keep
// balancing it.
func TestNamespaceMeshPartialTables(t *testing.T) {
	m := newMeshLab(t, false)
	squatter := meshTask{"squatter", "n3", meshPublished} // listens on n3's published port
	m.startTasks(taskA, taskB, taskC, squatter)
	ctx := context.Background()
	balancers := m.startBalancers(t, "shoal-test-mesh-partial")
	perNode := []ingress.Table{
		meshTable(taskC),             // n1: only the task on n3
		meshTable(taskA, taskB),      // n2: the tasks on n2 and n3
		{meshTCP: nil, meshUDP: nil}, // n3: published, but nowhere to go
	}
	for i, b := range balancers {
		require.NoError(t, b.Apply(ctx, perNode[i]), "Apply on %s", meshNodes[i])
	}

	for i := range 4 {
		name, _, err := m.askTCP(mesh4, "client", mesh4.published("n1"))
		require.NoError(t, err, "n1 connection %d", i)
		assert.Equal(t, "task-c", name)
	}
	assertRoundRobin(t, m.askAll(t, mesh4, false, "n2", 4), "task-a", "task-b")
	assertRoundRobin(t, m.askAll(t, mesh4, true, "n2", 4), "task-a", "task-b")

	// On n3 neither the TCP handshake nor a UDP answer comes back: the
	// squatter would have answered both had the packets reached it.
	c, err := m.dial("client", "tcp4", mesh4.published("n3"), 1500*time.Millisecond)
	if err == nil {
		c.Close()
	}
	assert.True(t, isTimeout(err), "n3 must drop connections to a port without endpoints (a timeout), got %v", err)
	_, _, err = m.askUDP(mesh4, mesh4.published("n3"), 1, time.Second)
	assert.True(t, isTimeout(err), "n3 must drop datagrams to a port without endpoints (a timeout), got %v", err)

	// Once n3's balancer stops, the squatter gets them: it was the drop,
	// not a broken listener, that kept them away.
	require.NoError(t, balancers[2].Stop(ctx))
	name, _, err := m.askTCP(mesh4, "client", mesh4.published("n3"))
	require.NoError(t, err)
	assert.Equal(t, "squatter", name)
	name, _, err = m.askUDP(mesh4, mesh4.published("n3"), 5, 2*time.Second)
	require.NoError(t, err)
	assert.Equal(t, "squatter", name)
}

// TestNamespaceMeshDualStack runs the mesh over IPv4 and IPv6 at once: one
// table gives the published port endpoints of both families, and on every
// node a client of each family is balanced round robin over the tasks'
// endpoints of its own family, forwarded and masqueraded across nodes in
// IPv6 as in IPv4. A second port with IPv4 endpoints only is dropped for
// IPv6 clients on every node while still balancing IPv4 ones.
func TestNamespaceMeshDualStack(t *testing.T) {
	m := newMeshLab(t, true)
	m.startTasks(taskA, taskB, taskC)
	ctx := context.Background()
	v4only := ingress.Port{Service: "legacy", Protocol: ingress.TCP, Published: meshPublished + 1}
	both := func(tasks ...meshTask) []ingress.Endpoint {
		// Families interleaved in the table: each family's round robin
		// keeps the table's order among its own endpoints.
		var eps []ingress.Endpoint
		for _, mt := range tasks {
			eps = append(eps, mt.endpoint(mesh4), mt.endpoint(mesh6))
		}
		return eps
	}
	tbl := ingress.Table{
		meshTCP: both(taskA, taskB, taskC),
		meshUDP: both(taskA, taskB, taskC),
		v4only:  meshEndpoints(mesh4, taskB),
	}
	for i, b := range m.startBalancers(t, "shoal-test-mesh-dual") {
		require.NoError(t, b.Apply(ctx, tbl), "Apply on %s", meshNodes[i])
	}

	for _, f := range []meshFamily{mesh4, mesh6} {
		for _, n := range meshNodes {
			assertRoundRobin(t, m.askAll(t, f, false, n, 6), "task-a", "task-b", "task-c")
			assertRoundRobin(t, m.askAll(t, f, true, n, 3), "task-a", "task-b", "task-c")
		}
	}

	for _, n := range meshNodes {
		addr4 := netip.AddrPortFrom(mesh4.node[n], v4only.Published).String()
		name, _, err := m.askTCP(mesh4, "client", addr4)
		require.NoError(t, err, "IPv4 to %s on %s", v4only, n)
		assert.Equal(t, "task-b", name)

		addr6 := netip.AddrPortFrom(mesh6.node[n], v4only.Published).String()
		c, err := m.dial("client", "tcp6", addr6, time.Second)
		if err == nil {
			c.Close()
		}
		assert.True(t, isTimeout(err), "IPv6 to %s on %s must be dropped (a timeout, not a refusal): the port has no IPv6 endpoint; got %v", v4only, n, err)
	}
}

// isTimeout reports whether err is a timeout: what a client sees when its
// packets are dropped, as opposed to refused or answered.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
