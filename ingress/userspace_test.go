package ingress

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestConfigDefaultsAndValidation(t *testing.T) {
	u, err := New(Config{})
	require.NoError(t, err)
	assert.Equal(t, DefaultConfig().DialTimeout, u.cfg.DialTimeout)
	assert.Equal(t, netip.IPv4Unspecified(), u.cfg.ListenAddr)
	assert.NotNil(t, u.cfg.Logger)

	cases := []struct {
		name  string
		mod   func(*Config)
		field string
	}{
		{"negative dial timeout", func(c *Config) { c.DialTimeout = -time.Second }, "Config.DialTimeout"},
		{"tiny idle timeout", func(c *Config) { c.UDPFlowIdleTimeout = time.Microsecond }, "Config.UDPFlowIdleTimeout"},
		{"negative max conns", func(c *Config) { c.MaxConnsPerPort = -1 }, "Config.MaxConnsPerPort"},
		{"negative max flows", func(c *Config) { c.MaxUDPFlowsPerPort = -1 }, "Config.MaxUDPFlowsPerPort"},
		{"zoned listen address", func(c *Config) { c.ListenAddr = netip.MustParseAddr("fe80::1%eth0") }, "Config.ListenAddr"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tc.mod(&cfg)
			before := cfg
			_, err := New(cfg)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.field)
			assert.Equal(t, before.DialTimeout, cfg.DialTimeout, "the caller's struct is not changed")
		})
	}
}

func TestApplyIsIdempotent(t *testing.T) {
	a, b := startTCPBackend(t, "a"), startTCPBackend(t, "b")
	ua, ub := startUDPBackend(t, "ua"), startUDPBackend(t, "ub")
	u := newTestBalancer(t, nil)
	tp := Port{Service: "web", Protocol: TCP, Published: freePort(t, "tcp")}
	up := Port{Service: "dns", Protocol: UDP, Published: freePort(t, "udp")}
	table := func() Table {
		return Table{tp: {a.endpoint(), b.endpoint()}, up: {ua.endpoint(), ub.endpoint()}}
	}
	apply(t, u, table())
	tcpBefore, udpBefore := u.ports[keyOf(tp)].(*tcpPort), u.ports[keyOf(up)].(*udpPort)

	established := connect(t, tp.Published)
	flow := udpClient(t, up.Published)
	first, err := udpAsk(flow, "q", ioTimeout)
	require.NoError(t, err)

	for range 5 {
		apply(t, u, table()) // equal content, fresh slices
	}

	assert.Same(t, tcpBefore, u.ports[keyOf(tp)], "same TCP listener")
	assert.Same(t, udpBefore, u.ports[keyOf(up)], "same UDP socket")
	established.echo(t, "still here")
	again, err := udpAsk(flow, "q", ioTimeout)
	require.NoError(t, err)
	assert.Equal(t, first, again, "the UDP flow keeps its endpoint")
	// Round robin goes on where it was: the first connection went to a.
	assert.Equal(t, map[string]int{"a": 2, "b": 2}, countBackends(t, tp.Published, 4))
}

func TestApplyCopiesTable(t *testing.T) {
	a, b := startTCPBackend(t, "a"), startTCPBackend(t, "b")
	u := newTestBalancer(t, nil)
	p := Port{Service: "web", Protocol: TCP, Published: freePort(t, "tcp")}
	eps := []Endpoint{a.endpoint()}
	apply(t, u, Table{p: eps})
	eps[0] = b.endpoint() // the caller reuses its slice
	assert.Equal(t, map[string]int{"a": 2}, countBackends(t, p.Published, 2))
}

func TestApplyBindConflictNamesPort(t *testing.T) {
	a := startTCPBackend(t, "a")
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer busy.Close()
	busyPort := uint16(busy.Addr().(*net.TCPAddr).Port)

	u := newTestBalancer(t, nil)
	bad := Port{Service: "web", Protocol: TCP, Published: busyPort}
	good := Port{Service: "api", Protocol: TCP, Published: freePort(t, "tcp")}
	err = u.Apply(context.Background(), Table{bad: {a.endpoint()}, good: {a.endpoint()}})
	require.Error(t, err)
	var pe *PortError
	require.ErrorAs(t, err, &pe)
	assert.Equal(t, bad, pe.Port)
	assert.Contains(t, err.Error(), "tcp/"+strconv.Itoa(int(busyPort)))
	assert.Contains(t, err.Error(), "web")
	assert.Equal(t, "a", connect(t, good.Published).backend, "the other port is still applied")

	// Once the port is free, the next Apply takes it.
	require.NoError(t, busy.Close())
	apply(t, u, Table{bad: {a.endpoint()}, good: {a.endpoint()}})
	assert.Equal(t, "a", connect(t, busyPort).backend)
}

func TestApplyRejectsBadInput(t *testing.T) {
	a := startTCPBackend(t, "a")
	u := newTestBalancer(t, nil)
	num := freePort(t, "tcp")
	okPort := Port{Service: "a-first", Protocol: TCP, Published: num}
	table := Table{
		{Service: "web", Protocol: 9, Published: 80}:  nil,
		{Service: "web", Protocol: TCP, Published: 0}: nil,
		okPort: {a.endpoint(), {Task: "t-bad", Addr: netip.AddrPort{}}},
		{Service: "b-second", Protocol: TCP, Published: num}: {a.endpoint()},
	}
	err := u.Apply(context.Background(), table)
	require.Error(t, err)
	msg := err.Error()
	assert.Contains(t, msg, "Port.Protocol")
	assert.Contains(t, msg, "Port.Published")
	assert.Contains(t, msg, `endpoint "t-bad": Endpoint.Addr`)
	assert.Contains(t, msg, `already published by service "a-first"`)
	// The valid part is applied: the port with its valid endpoint.
	assert.Equal(t, map[string]int{"a": 3}, countBackends(t, num, 3))
}

func TestApplyCanceledContext(t *testing.T) {
	u := newTestBalancer(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := u.Apply(ctx, Table{{Service: "web", Protocol: TCP, Published: freePort(t, "tcp")}: nil})
	assert.ErrorIs(t, err, context.Canceled)
	assert.Empty(t, u.ports)
}

func TestConcurrentApplyAndTraffic(t *testing.T) {
	backends := []*tcpBackend{startTCPBackend(t, "a"), startTCPBackend(t, "b"), startTCPBackend(t, "c")}
	u := newTestBalancer(t, nil)
	p := Port{Service: "web", Protocol: TCP, Published: freePort(t, "tcp")}
	apply(t, u, Table{p: {backends[0].endpoint()}})

	var wg sync.WaitGroup
	errs := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range 50 {
			eps := []Endpoint{backends[i%3].endpoint(), backends[(i+1)%3].endpoint()}
			if err := u.Apply(context.Background(), Table{p: eps}); err != nil {
				select {
				case errs <- err:
				default:
				}
				return
			}
		}
	}()
	got := countBackends(t, p.Published, 50) // every connection must succeed
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	total := 0
	for _, n := range got {
		total += n
	}
	assert.Equal(t, 50, total)
}

func TestPortErrorUnwraps(t *testing.T) {
	inner := errors.New("boom")
	err := error(&PortError{Port: Port{Service: "s", Protocol: UDP, Published: 53}, Err: inner})
	assert.ErrorIs(t, err, inner)
	assert.Equal(t, "ingress: port udp/53 (service s): boom", err.Error())
}

func TestProtocol(t *testing.T) {
	for _, p := range []Protocol{TCP, UDP} {
		got, err := ParseProtocol(p.String())
		require.NoError(t, err)
		assert.Equal(t, p, got)
	}
	got, err := ParseProtocol("UDP")
	require.NoError(t, err)
	assert.Equal(t, UDP, got)
	_, err = ParseProtocol("sctp")
	assert.ErrorContains(t, err, "must be tcp or udp")
	assert.Equal(t, "protocol(9)", Protocol(9).String())

	// The values are shoal.Protocol's: the zero value is TCP.
	assert.Equal(t, Protocol(0), TCP)
	assert.Equal(t, Protocol(1), UDP)
	assert.True(t, Port{}.Protocol.valid())
	assert.False(t, Protocol(2).valid())
}

func FuzzParseProtocol(f *testing.F) {
	for _, s := range []string{"tcp", "udp", "TCP", "", "sctp", "tcp\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseProtocol(s)
		if err != nil {
			assert.Zero(t, p)
			return
		}
		assert.True(t, p.valid())
		again, err := ParseProtocol(p.String())
		require.NoError(t, err)
		assert.Equal(t, p, again)
	})
}
