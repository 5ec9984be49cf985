package ingress

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestTCPRoundRobin(t *testing.T) {
	a, b, c := startTCPBackend(t, "a"), startTCPBackend(t, "b"), startTCPBackend(t, "c")
	u := newTestBalancer(t, nil)
	port := freePort(t, "tcp")
	apply(t, u, Table{{Service: "web", Protocol: TCP, Published: port}: {a.endpoint(), b.endpoint(), c.endpoint()}})

	got := countBackends(t, port, 30)
	assert.Equal(t, map[string]int{"a": 10, "b": 10, "c": 10}, got)
}

func TestTCPSkipsRefusingEndpoint(t *testing.T) {
	reg := prometheus.NewRegistry()
	a, b := startTCPBackend(t, "a"), startTCPBackend(t, "b")
	dead := Endpoint{Service: "web", Task: "dead", Addr: refusingAddr(t, "tcp")}
	u := newTestBalancer(t, func(c *Config) { c.Registerer = reg })
	port := freePort(t, "tcp")
	apply(t, u, Table{{Service: "web", Protocol: TCP, Published: port}: {dead, a.endpoint(), b.endpoint()}})

	got := countBackends(t, port, 12) // connect fails the test on any client error
	assert.Zero(t, got["dead"])
	assert.Equal(t, 12, got["a"]+got["b"])
	assert.Positive(t, got["a"])
	assert.Positive(t, got["b"])
	labels := map[string]string{"protocol": "tcp", "port": strconv.Itoa(int(port))}
	assert.Equal(t, 4.0, metricValue(t, reg, "shoal_ingress_endpoint_failures_total", labels), "every third connection starts at the dead endpoint")
	assert.Equal(t, 12.0, metricValue(t, reg, "shoal_ingress_balanced_total", labels))
}

func TestTCPAllEndpointsRefuse(t *testing.T) {
	u := newTestBalancer(t, nil)
	port := freePort(t, "tcp")
	apply(t, u, Table{{Service: "web", Protocol: TCP, Published: port}: {
		{Task: "x", Addr: refusingAddr(t, "tcp")}, {Task: "y", Addr: refusingAddr(t, "tcp")},
	}})
	c, err := net.DialTimeout("tcp", netip.AddrPortFrom(loopback, port).String(), ioTimeout)
	require.NoError(t, err, "the published port answers even when no endpoint does")
	defer c.Close()
	requireClosed(t, c, c, "no endpoint answers")
}

func TestTCPNoEndpoints(t *testing.T) {
	u := newTestBalancer(t, nil)
	port := freePort(t, "tcp")
	apply(t, u, Table{{Service: "web", Protocol: TCP, Published: port}: nil})
	c, err := net.DialTimeout("tcp", netip.AddrPortFrom(loopback, port).String(), ioTimeout)
	require.NoError(t, err, "the published port answers even without endpoints")
	defer c.Close()
	requireClosed(t, c, c, "a port without endpoints")
}

func TestTCPRemovedEndpointDrains(t *testing.T) {
	a, b := startTCPBackend(t, "a"), startTCPBackend(t, "b")
	u := newTestBalancer(t, nil)
	p := Port{Service: "web", Protocol: TCP, Published: freePort(t, "tcp")}
	apply(t, u, Table{p: {a.endpoint(), b.endpoint()}})

	established := connect(t, p.Published)
	require.Equal(t, "a", established.backend)
	established.echo(t, "before")

	apply(t, u, Table{p: {b.endpoint()}})
	got := countBackends(t, p.Published, 10)
	assert.Equal(t, map[string]int{"b": 10}, got, "no new connection goes to the removed endpoint")
	established.echo(t, "after removal") // the established one keeps working
	established.echo(t, "and again")
}

func TestTCPAddEndpoints(t *testing.T) {
	a, b, c := startTCPBackend(t, "a"), startTCPBackend(t, "b"), startTCPBackend(t, "c")
	u := newTestBalancer(t, nil)
	p := Port{Service: "web", Protocol: TCP, Published: freePort(t, "tcp")}
	apply(t, u, Table{p: {a.endpoint()}})
	assert.Equal(t, map[string]int{"a": 3}, countBackends(t, p.Published, 3))

	apply(t, u, Table{p: {a.endpoint(), b.endpoint(), c.endpoint()}})
	assert.Equal(t, map[string]int{"a": 10, "b": 10, "c": 10}, countBackends(t, p.Published, 30))
}

func TestTCPRemovePortClosesListenerAndConnections(t *testing.T) {
	a, b := startTCPBackend(t, "a"), startTCPBackend(t, "b")
	u := newTestBalancer(t, nil)
	gone := Port{Service: "web", Protocol: TCP, Published: freePort(t, "tcp")}
	kept := Port{Service: "api", Protocol: TCP, Published: freePort(t, "tcp")}
	apply(t, u, Table{gone: {a.endpoint()}, kept: {b.endpoint()}})
	established := connect(t, gone.Published)
	keptConn := connect(t, kept.Published)

	apply(t, u, Table{kept: {b.endpoint()}})

	_, err := net.DialTimeout("tcp", netip.AddrPortFrom(loopback, gone.Published).String(), ioTimeout)
	assert.Error(t, err, "the removed port no longer listens")
	require.NoError(t, established.SetDeadline(time.Now().Add(ioTimeout)))
	if _, err := io.WriteString(established, "x"); err == nil { // a write error: closed already
		requireClosed(t, established, established.r, "connections of a removed port are closed")
	}
	keptConn.echo(t, "other ports are untouched")
	assert.Equal(t, "b", connect(t, kept.Published).backend)
}

func TestTCPPortChangesOwner(t *testing.T) {
	a, b := startTCPBackend(t, "a"), startTCPBackend(t, "b")
	u := newTestBalancer(t, nil)
	num := freePort(t, "tcp")
	apply(t, u, Table{{Service: "old", Protocol: TCP, Published: num}: {a.endpoint()}})
	old := connect(t, num)
	apply(t, u, Table{{Service: "new", Protocol: TCP, Published: num}: {b.endpoint()}})
	assert.Equal(t, "b", connect(t, num).backend)
	requireClosed(t, old, old.r, "the old service's connections are closed")
}

func TestTCPHalfClose(t *testing.T) {
	a := startTCPBackend(t, "a")
	u := newTestBalancer(t, nil)
	port := freePort(t, "tcp")
	apply(t, u, Table{{Service: "web", Protocol: TCP, Published: port}: {a.endpoint()}})

	c := connect(t, port)
	_, err := io.WriteString(c, "request")
	require.NoError(t, err)
	require.NoError(t, c.Conn.(*net.TCPConn).CloseWrite())
	// The backend sees EOF only if the balancer passed the half-close on;
	// it then answers "bye" on the still-open other direction.
	rest, err := io.ReadAll(c.r)
	require.NoError(t, err)
	assert.Equal(t, "requestbye", string(rest))
}

func TestTCPMaxConnsPerPort(t *testing.T) {
	a := startTCPBackend(t, "a")
	u := newTestBalancer(t, func(c *Config) { c.MaxConnsPerPort = 1 })
	port := freePort(t, "tcp")
	apply(t, u, Table{{Service: "web", Protocol: TCP, Published: port}: {a.endpoint()}})

	first := connect(t, port)
	second, err := net.DialTimeout("tcp", netip.AddrPortFrom(loopback, port).String(), ioTimeout)
	require.NoError(t, err, "the kernel backlog takes the connection")
	defer second.Close()
	require.NoError(t, second.SetReadDeadline(time.Now().Add(100*time.Millisecond)))
	_, err = second.Read(make([]byte, 1))
	var ne net.Error
	require.True(t, errors.As(err, &ne) && ne.Timeout(), "second connection must wait while the first holds the only slot, got %v", err)

	require.NoError(t, first.Close())
	require.NoError(t, second.SetReadDeadline(time.Now().Add(ioTimeout)))
	buf := make([]byte, 2)
	_, err = io.ReadFull(second, buf)
	require.NoError(t, err)
	assert.Equal(t, "a\n", string(buf))
}

func TestTCPBulkIntegrity(t *testing.T) {
	a := startTCPBackend(t, "a")
	u := newTestBalancer(t, nil)
	port := freePort(t, "tcp")
	apply(t, u, Table{{Service: "web", Protocol: TCP, Published: port}: {a.endpoint()}})

	c := connect(t, port)
	payload := make([]byte, 4<<20)
	for i := range payload {
		payload[i] = byte(i*7 + i>>8)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.Conn.(*net.TCPConn).CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(c.r)
	require.NoError(t, err)
	require.NoError(t, <-errc)
	require.Equal(t, len(payload)+3, len(got))
	assert.Equal(t, payload, got[:len(payload)])
	assert.Equal(t, "bye", string(got[len(payload):]))
}

func TestTCPStopLeavesNothing(t *testing.T) {
	a := startTCPBackend(t, "a")
	cfg := DefaultConfig()
	cfg.ListenAddr = loopback
	u, err := New(cfg)
	require.NoError(t, err)
	p1 := Port{Service: "web", Protocol: TCP, Published: freePort(t, "tcp")}
	p2 := Port{Service: "dns", Protocol: UDP, Published: freePort(t, "udp")}
	apply(t, u, Table{p1: {a.endpoint()}, p2: nil})
	established := connect(t, p1.Published)

	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	require.NoError(t, u.Stop(ctx))
	require.NoError(t, u.Stop(ctx), "Stop is idempotent")

	_, err = net.DialTimeout("tcp", netip.AddrPortFrom(loopback, p1.Published).String(), ioTimeout)
	assert.Error(t, err, "no listener after Stop")
	pc, err := net.ListenPacket("udp", netip.AddrPortFrom(loopback, p2.Published).String())
	require.NoError(t, err, "the UDP port is free again after Stop")
	require.NoError(t, pc.Close())
	requireClosed(t, established, established.r, "connections are closed by Stop")
	assert.ErrorIs(t, u.Apply(ctx, Table{}), ErrStopped)
}
