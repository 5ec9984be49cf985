package ingress

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var loopback = netip.MustParseAddr("127.0.0.1")

// ioTimeout bounds every blocking read or write of the tests: generous, so
// a loaded machine never trips it; it only turns a hang into a failure.
const ioTimeout = 10 * time.Second

// closeBound is how soon a connection the balancer closes must end on the
// client's side: far beyond a loaded machine's scheduling delays, and well
// below ioTimeout, so a connection left open until the read deadline fails.
const closeBound = ioTimeout / 2

// requireClosed reads c (through r, which may hold buffered data) until it
// ends, and requires that it ends by the balancer closing it (EOF, or a
// reset when the client's data was unread) within closeBound: a
// connection left open until the read deadline fails.
func requireClosed(t *testing.T, c net.Conn, r io.Reader, what string) {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(ioTimeout)))
	start := time.Now()
	buf := make([]byte, 256)
	var err error
	for err == nil {
		_, err = r.Read(buf)
	}
	took := time.Since(start)
	require.NotErrorIs(t, err, os.ErrDeadlineExceeded, "%s: the connection stayed open until the read deadline", what)
	require.True(t, errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET),
		"%s: the connection must be closed (EOF or reset), got %v", what, err)
	require.Less(t, took, closeBound, "%s: the connection was closed only after %v", what, took)
}

// tcpBackend is a test endpoint: it greets each connection with its name
// and a newline, then echoes until EOF, then writes "bye" and closes.
type tcpBackend struct {
	name string
	ln   net.Listener
	wg   sync.WaitGroup
	mu   sync.Mutex
	conn []net.Conn
}

func startTCPBackend(t *testing.T, name string) *tcpBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	b := &tcpBackend{name: name, ln: ln}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.conn = append(b.conn, c)
			b.mu.Unlock()
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				defer c.Close()
				if _, err := io.WriteString(c, b.name+"\n"); err != nil {
					return
				}
				if _, err := io.Copy(c, c); err != nil {
					return
				}
				_, _ = io.WriteString(c, "bye")
			}()
		}
	}()
	t.Cleanup(b.close)
	return b
}

func (b *tcpBackend) close() {
	_ = b.ln.Close()
	b.mu.Lock()
	for _, c := range b.conn {
		_ = c.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
}

func (b *tcpBackend) addr() netip.AddrPort {
	return b.ln.Addr().(*net.TCPAddr).AddrPort()
}

func (b *tcpBackend) endpoint() Endpoint {
	return Endpoint{Service: "web", Task: b.name, Addr: b.addr()}
}

// refusingAddr returns a loopback address where nothing listens.
func refusingAddr(t testing.TB, network string) netip.AddrPort {
	t.Helper()
	switch network {
	case "tcp":
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		a := ln.Addr().(*net.TCPAddr).AddrPort()
		require.NoError(t, ln.Close())
		return a
	default:
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		require.NoError(t, err)
		a := pc.LocalAddr().(*net.UDPAddr).AddrPort()
		require.NoError(t, pc.Close())
		return a
	}
}

// freePort returns a port number that is free on 127.0.0.1 for network.
func freePort(t testing.TB, network string) uint16 {
	return refusingAddr(t, network).Port()
}

func newTestBalancer(t *testing.T, mod func(*Config)) *Userspace {
	t.Helper()
	cfg := DefaultConfig()
	cfg.ListenAddr = loopback
	cfg.DialTimeout = ioTimeout
	if mod != nil {
		mod(&cfg)
	}
	u, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
		defer cancel()
		require.NoError(t, u.Stop(ctx))
	})
	return u
}

func apply(t *testing.T, u *Userspace, tab Table) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	require.NoError(t, u.Apply(ctx, tab))
}

// clientConn is a connection through the balancer with its greeting read.
type clientConn struct {
	net.Conn
	r       *bufio.Reader
	backend string
}

// connect dials the published port and returns the backend's name.
func connect(t *testing.T, port uint16) *clientConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", netip.AddrPortFrom(loopback, port).String(), ioTimeout)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	require.NoError(t, c.SetDeadline(time.Now().Add(ioTimeout)))
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	require.NoError(t, err, "reading the backend's greeting")
	return &clientConn{Conn: c, r: r, backend: strings.TrimSuffix(line, "\n")}
}

// echo sends msg and checks it comes back.
func (c *clientConn) echo(t *testing.T, msg string) {
	t.Helper()
	require.NoError(t, c.SetDeadline(time.Now().Add(ioTimeout)))
	_, err := io.WriteString(c, msg)
	require.NoError(t, err)
	buf := make([]byte, len(msg))
	_, err = io.ReadFull(c.r, buf)
	require.NoError(t, err)
	require.Equal(t, msg, string(buf))
}

// countBackends makes n sequential connections and counts where they went.
func countBackends(t *testing.T, port uint16, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range n {
		c := connect(t, port)
		got[c.backend]++
		require.NoError(t, c.Close())
	}
	return got
}

// udpBackend answers each datagram with "name:payload".
type udpBackend struct {
	name string
	pc   net.PacketConn
	done chan struct{}
}

func startUDPBackend(t *testing.T, name string) *udpBackend {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	b := &udpBackend{name: name, pc: pc, done: make(chan struct{})}
	go func() {
		defer close(b.done)
		buf := make([]byte, maxDatagram)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			_, _ = pc.WriteTo([]byte(b.name+":"+string(buf[:n])), from)
		}
	}()
	t.Cleanup(func() {
		_ = pc.Close()
		<-b.done
	})
	return b
}

func (b *udpBackend) endpoint() Endpoint {
	return Endpoint{Service: "dns", Task: b.name, Addr: b.pc.LocalAddr().(*net.UDPAddr).AddrPort()}
}

// udpClient is one flow: a socket with its own source port.
func udpClient(t *testing.T, port uint16) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(loopback, port)))
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// udpAsk sends msg and returns the reply, or an error if none came within
// wait.
func udpAsk(c *net.UDPConn, msg string, wait time.Duration) (string, error) {
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", err
	}
	if err := c.SetReadDeadline(time.Now().Add(wait)); err != nil {
		return "", err
	}
	buf := make([]byte, maxDatagram)
	n, err := c.Read(buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// metricValue returns the value of the series of name with labels, or 0.
func metricValue(t *testing.T, g prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue next
				}
			}
			return value(m)
		}
	}
	return 0
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	return 0
}

func udpListen(port uint16) (net.PacketConn, error) {
	return net.ListenPacket("udp", netip.AddrPortFrom(loopback, port).String())
}
