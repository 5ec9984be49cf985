package ingress

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// backendOf returns the name in a "name:payload" reply.
func backendOf(reply string) string {
	name, _, _ := strings.Cut(reply, ":")
	return name
}

func TestUDPRoundRobinAcrossFlows(t *testing.T) {
	a, b, c := startUDPBackend(t, "a"), startUDPBackend(t, "b"), startUDPBackend(t, "c")
	u := newTestBalancer(t, nil)
	port := freePort(t, "udp")
	apply(t, u, Table{{Service: "dns", Protocol: UDP, Published: port}: {a.endpoint(), b.endpoint(), c.endpoint()}})

	got := map[string]int{}
	for i := range 9 {
		flow := udpClient(t, port)
		msg := "q" + strconv.Itoa(i)
		reply, err := udpAsk(flow, msg, ioTimeout)
		require.NoError(t, err)
		assert.Equal(t, msg, strings.SplitN(reply, ":", 2)[1], "the payload comes back intact")
		got[backendOf(reply)]++
		// Every later datagram of the flow goes to the same endpoint.
		for range 3 {
			again, err := udpAsk(flow, msg, ioTimeout)
			require.NoError(t, err)
			assert.Equal(t, backendOf(reply), backendOf(again))
		}
	}
	assert.Equal(t, map[string]int{"a": 3, "b": 3, "c": 3}, got)
}

func TestUDPFlowExpires(t *testing.T) {
	reg := prometheus.NewRegistry()
	a, b := startUDPBackend(t, "a"), startUDPBackend(t, "b")
	u := newTestBalancer(t, func(c *Config) {
		c.UDPFlowIdleTimeout = 50 * time.Millisecond
		c.Registerer = reg
	})
	port := freePort(t, "udp")
	apply(t, u, Table{{Service: "dns", Protocol: UDP, Published: port}: {a.endpoint(), b.endpoint()}})
	labels := map[string]string{"protocol": "udp", "port": strconv.Itoa(int(port))}
	up := u.ports[portKey{UDP, port}].(*udpPort)
	flows := func() int {
		up.mu.Lock()
		defer up.mu.Unlock()
		return len(up.flows)
	}

	flow := udpClient(t, port)
	reply, err := udpAsk(flow, "x", ioTimeout)
	require.NoError(t, err)
	assert.Equal(t, "a", backendOf(reply))
	assert.Equal(t, 1, flows())

	require.Eventually(t, func() bool { return flows() == 0 }, ioTimeout, 10*time.Millisecond, "idle flow expires")
	assert.Zero(t, metricValue(t, reg, "shoal_ingress_active", labels))

	// The same client address is a new flow now, so it is balanced again.
	reply, err = udpAsk(flow, "x", ioTimeout)
	require.NoError(t, err)
	assert.Equal(t, "b", backendOf(reply))
	assert.Equal(t, 2.0, metricValue(t, reg, "shoal_ingress_balanced_total", labels))
}

func TestUDPRemovedEndpointDrains(t *testing.T) {
	a, b := startUDPBackend(t, "a"), startUDPBackend(t, "b")
	u := newTestBalancer(t, nil)
	p := Port{Service: "dns", Protocol: UDP, Published: freePort(t, "udp")}
	apply(t, u, Table{p: {a.endpoint(), b.endpoint()}})
	old := udpClient(t, p.Published)
	reply, err := udpAsk(old, "x", ioTimeout)
	require.NoError(t, err)
	require.Equal(t, "a", backendOf(reply))

	apply(t, u, Table{p: {b.endpoint()}})
	for range 4 {
		reply, err := udpAsk(udpClient(t, p.Published), "y", ioTimeout)
		require.NoError(t, err)
		assert.Equal(t, "b", backendOf(reply), "new flows avoid the removed endpoint")
	}
	reply, err = udpAsk(old, "z", ioTimeout)
	require.NoError(t, err)
	assert.Equal(t, "a:z", reply, "the established flow keeps its endpoint")
}

func TestUDPSkipsRefusingEndpoint(t *testing.T) {
	a := startUDPBackend(t, "a")
	dead := Endpoint{Service: "dns", Task: "dead", Addr: refusingAddr(t, "udp")}
	u := newTestBalancer(t, nil)
	port := freePort(t, "udp")
	apply(t, u, Table{{Service: "dns", Protocol: UDP, Published: port}: {dead, a.endpoint()}})

	// The first datagram goes to the dead endpoint and is lost (UDP gives
	// no refusal until the ICMP error comes back); the client's retry must
	// reach the live endpoint.
	flow := udpClient(t, port)
	var reply string
	for range 50 {
		r, err := udpAsk(flow, "x", 200*time.Millisecond)
		if err == nil {
			reply = r
			break
		}
	}
	assert.Equal(t, "a:x", reply)
}

func TestUDPFlowTableBounded(t *testing.T) {
	reg := prometheus.NewRegistry()
	a := startUDPBackend(t, "a")
	u := newTestBalancer(t, func(c *Config) {
		c.MaxUDPFlowsPerPort = 2
		c.Registerer = reg
	})
	port := freePort(t, "udp")
	apply(t, u, Table{{Service: "dns", Protocol: UDP, Published: port}: {a.endpoint()}})
	f1, f2, f3 := udpClient(t, port), udpClient(t, port), udpClient(t, port)
	_, err := udpAsk(f1, "1", ioTimeout)
	require.NoError(t, err)
	_, err = udpAsk(f2, "2", ioTimeout)
	require.NoError(t, err)
	_, err = udpAsk(f3, "3", 100*time.Millisecond)
	assert.Error(t, err, "a third flow is dropped while the table is full")
	labels := map[string]string{"protocol": "udp", "port": strconv.Itoa(int(port)), "reason": "flow_table_full"}
	assert.Equal(t, 1.0, metricValue(t, reg, "shoal_ingress_rejected_total", labels))
	// Existing flows still work.
	reply, err := udpAsk(f1, "again", ioTimeout)
	require.NoError(t, err)
	assert.Equal(t, "a:again", reply)
}

func TestUDPRemovePortClosesSocket(t *testing.T) {
	a := startUDPBackend(t, "a")
	u := newTestBalancer(t, nil)
	p := Port{Service: "dns", Protocol: UDP, Published: freePort(t, "udp")}
	apply(t, u, Table{p: {a.endpoint()}})
	_, err := udpAsk(udpClient(t, p.Published), "x", ioTimeout)
	require.NoError(t, err)
	apply(t, u, Table{})
	assert.Empty(t, u.ports)
	// The port number is free again.
	pc, err := udpListen(p.Published)
	require.NoError(t, err)
	require.NoError(t, pc.Close())
}
