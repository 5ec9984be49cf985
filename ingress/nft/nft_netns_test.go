package nft

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/ingress"
)

func ep(task, addr string) ingress.Endpoint {
	return ingress.Endpoint{Service: "web", Task: task, Addr: netip.MustParseAddrPort(addr)}
}

var (
	webTCP = ingress.Port{Service: "web", Protocol: ingress.TCP, Published: 30080}
	webUDP = ingress.Port{Service: "web", Protocol: ingress.UDP, Published: 30080}
	web1   = ep("t1", fmt.Sprintf("%s:%d", backend1Addr, appPort))
	web2   = ep("t2", fmt.Sprintf("%s:%d", backend2Addr, appPort))
)

// TestNamespaceRoundRobin programs a balancer in the node namespace and
// checks, with real traffic forwarded by the kernel, round robin for TCP and
// UDP, masquerade, locally originated connections, updates, idempotence,
// an endpointless port, and Stop.
func TestNamespaceRoundRobin(t *testing.T) {
	l := newLab(t)
	l.startBackends()
	ctx := context.Background()
	const table = "shoal-test"

	b, err := New(Config{TableName: table, NetNS: l.path("node")})
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Stop(context.Background()) })

	published := fmt.Sprintf("%s:%d", nodeAddr, webTCP.Published)
	require.NoError(t, b.Apply(ctx, ingress.Table{webTCP: {web1, web2}, webUDP: {web1, web2}}))

	// TCP: new connections alternate between the two backends, and each
	// backend sees the node's address on its link (masquerade), so replies
	// return through the node.
	var names []string
	for i := range 10 {
		name, from, err := l.ask("client", published)
		require.NoError(t, err, "connection %d", i)
		names = append(names, name)
		want := map[string]string{"backend1": nodeB1Addr, "backend2": nodeB2Addr}[name]
		require.NotEmpty(t, want, "unexpected answer %q", name)
		assert.True(t, strings.HasPrefix(from, want+":"), "backend %s saw source %s, want the node's %s", name, from, want)
	}
	assertRoundRobin(t, names, "backend1", "backend2")

	// UDP: each new flow goes to the next backend.
	names = nil
	for i := range 6 {
		name, _, err := l.askUDP("client", published)
		require.NoError(t, err, "flow %d", i)
		names = append(names, name)
	}
	assertRoundRobin(t, names, "backend1", "backend2")

	// Connections the node itself opens to its published port are
	// balanced too (the output chain).
	names = nil
	for range 4 {
		name, _, err := l.ask("node", published)
		require.NoError(t, err)
		names = append(names, name)
	}
	assertRoundRobin(t, names, "backend1", "backend2")

	// Applying the same table again changes nothing: same rule handles.
	before := l.nft("node", "-a", "list", "table", "inet", table)
	require.NoError(t, b.Apply(ctx, ingress.Table{webTCP: {web1, web2}, webUDP: {web1, web2}}))
	assert.Equal(t, before, l.nft("node", "-a", "list", "table", "inet", table))

	// Remove backend2: new connections go only to backend1.
	require.NoError(t, b.Apply(ctx, ingress.Table{webTCP: {web1}}))
	for i := range 6 {
		name, _, err := l.ask("client", published)
		require.NoError(t, err, "connection %d", i)
		assert.Equal(t, "backend1", name)
	}
	// The UDP port is gone from the table: nothing answers for it now.
	assert.NotContains(t, l.nft("node", "list", "table", "inet", table), "udp")

	// A published port without endpoints drops its packets.
	require.NoError(t, b.Apply(ctx, ingress.Table{webTCP: nil}))
	c, err := l.dial("client", "tcp4", published, 1500*time.Millisecond)
	if err == nil {
		c.Close()
	}
	require.Error(t, err, "a port with no endpoints must not accept connections")

	// Stop removes the table; the port is no longer balanced, so the
	// node, with nothing listening there, refuses the connection.
	require.NoError(t, b.Apply(ctx, ingress.Table{webTCP: {web1, web2}}))
	require.Contains(t, l.nft("node", "list", "tables"), table)
	require.NoError(t, b.Stop(ctx))
	assert.NotContains(t, l.nft("node", "list", "tables"), table)
	_, _, err = l.ask("client", published)
	require.Error(t, err)
	require.NoError(t, b.Stop(ctx), "Stop is idempotent")
	require.ErrorIs(t, b.Apply(ctx, ingress.Table{}), ingress.ErrStopped)
}

// TestNamespaceRecreatesVanishedTable checks that an Apply of an unchanged
// table puts the ruleset back when someone deleted the table meanwhile, and
// that two balancers with their own tables coexist in one namespace.
func TestNamespaceRecreatesVanishedTable(t *testing.T) {
	l := newLab(t)
	l.startBackends()
	ctx := context.Background()
	b, err := New(Config{TableName: "shoal-a", NetNS: l.path("node")})
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Stop(context.Background()) })
	other, err := New(Config{TableName: "shoal-b", NetNS: l.path("node")})
	require.NoError(t, err)
	t.Cleanup(func() { _ = other.Stop(context.Background()) })

	tbl := ingress.Table{webTCP: {web1}}
	require.NoError(t, b.Apply(ctx, tbl))
	other31 := ingress.Port{Service: "api", Protocol: ingress.TCP, Published: 31000}
	require.NoError(t, other.Apply(ctx, ingress.Table{other31: {web2}}))

	l.nft("node", "delete", "table", "inet", "shoal-a")
	require.NoError(t, b.Apply(ctx, tbl))
	name, _, err := l.ask("client", fmt.Sprintf("%s:%d", nodeAddr, webTCP.Published))
	require.NoError(t, err)
	assert.Equal(t, "backend1", name)
	name, _, err = l.ask("client", fmt.Sprintf("%s:%d", nodeAddr, 31000))
	require.NoError(t, err)
	assert.Equal(t, "backend2", name)

	require.NoError(t, b.Stop(ctx))
	tables := l.nft("node", "list", "tables")
	assert.NotContains(t, tables, "shoal-a")
	assert.Contains(t, tables, "shoal-b", "Stop removes only the balancer's own table")
}

// assertRoundRobin checks that names cycle through want in order, from
// whichever of them comes first.
func assertRoundRobin(t *testing.T, names []string, want ...string) {
	t.Helper()
	require.NotEmpty(t, names)
	start := -1
	for i, w := range want {
		if names[0] == w {
			start = i
		}
	}
	require.GreaterOrEqual(t, start, 0, "first answer %q is none of %v", names[0], want)
	for i, n := range names {
		assert.Equal(t, want[(start+i)%len(want)], n, "answer %d of %v", i, names)
	}
}
