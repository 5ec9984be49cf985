package nft

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// The test topology: one namespace per host, joined by veth pairs, with
// the node routing between its links.
//
//	client 10.201.0.2 ── 10.201.0.1 node 10.201.1.1 ── 10.201.1.2 backend1
//	                                     10.201.2.1 ── 10.201.2.2 backend2
const (
	clientAddr   = "10.201.0.2"
	nodeAddr     = "10.201.0.1" // the node's address on the client's link
	backend1Addr = "10.201.1.2"
	backend2Addr = "10.201.2.2"
	nodeB1Addr   = "10.201.1.1" // the node's address on backend1's link
	nodeB2Addr   = "10.201.2.1"
	appPort      = 8080 // backends' TCP "name" and UDP "name" servers
	httpPort     = 8081 // backends' HTTP server
	sinkPort     = 8082 // backends' bulk TCP sink
)

// lab is a set of network namespaces made for one test or benchmark.
type lab struct {
	tb   testing.TB
	name map[string]string // role -> namespace name
}

var labSeq atomic.Uint64

// requireNetNS skips tb with a sentence saying what is missing unless the
// process is root with ip(8), nft(8) and nftables over netlink.
func requireNetNS(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("nftables namespace tests need root (to create network namespaces and program nftables); run as root")
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			tb.Skipf("nftables namespace tests need %s(8) on PATH (iproute2 / nftables packages): %v", tool, err)
		}
	}
	c, err := nftables.New()
	if err == nil {
		_, err = c.ListTables()
	}
	if err != nil {
		tb.Skipf("nftables netlink is unavailable in this kernel or sandbox: %v", err)
	}
}

func run(tb testing.TB, args ...string) string {
	tb.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	require.NoError(tb, err, "%s: %s", strings.Join(args, " "), out)
	return string(out)
}

// newLab creates the client, node, backend1 and backend2 namespaces, wires
// them and registers their deletion with tb.Cleanup.
func newLab(tb testing.TB) *lab {
	tb.Helper()
	requireNetNS(tb)
	l := &lab{tb: tb, name: map[string]string{}}
	l.addNamespaces("client", "node", "backend1", "backend2")
	ipn := func(role string, args ...string) { run(tb, append([]string{"ip", "-n", l.name[role]}, args...)...) }
	link := func(a, aIf, aAddr, b, bIf, bAddr string) {
		ipn(a, "link", "add", aIf, "type", "veth", "peer", "name", bIf, "netns", l.name[b])
		ipn(a, "addr", "add", aAddr+"/24", "dev", aIf)
		ipn(b, "addr", "add", bAddr+"/24", "dev", bIf)
		ipn(a, "link", "set", aIf, "up")
		ipn(b, "link", "set", bIf, "up")
	}
	for role := range l.name {
		ipn(role, "link", "set", "lo", "up")
	}
	link("node", "toclient", nodeAddr, "client", "eth0", clientAddr)
	link("node", "tob1", nodeB1Addr, "backend1", "eth0", backend1Addr)
	link("node", "tob2", nodeB2Addr, "backend2", "eth0", backend2Addr)
	ipn("client", "route", "add", "default", "via", nodeAddr)
	ipn("backend1", "route", "add", "default", "via", nodeB1Addr)
	ipn("backend2", "route", "add", "default", "via", nodeB2Addr)
	run(tb, "ip", "netns", "exec", l.name["node"], "sysctl", "-qw", "net.ipv4.ip_forward=1")
	return l
}

// addNamespaces creates one namespace per role, with a name unique to this
// lab, and registers their deletion with tb.Cleanup.
func (l *lab) addNamespaces(roles ...string) {
	prefix := fmt.Sprintf("shoalnft-%d-%d-", os.Getpid(), labSeq.Add(1))
	for _, role := range roles {
		ns := prefix + role
		if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
			l.tb.Skipf("cannot create network namespaces here (ip netns add: %v: %s)", err, out)
		}
		l.name[role] = ns
		l.tb.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	}
}

func (l *lab) path(role string) string { return "/var/run/netns/" + l.name[role] }

// nft runs nft(8) inside the namespace of role.
func (l *lab) nft(role string, args ...string) string {
	l.tb.Helper()
	return run(l.tb, append([]string{"ip", "netns", "exec", l.name[role], "nft"}, args...)...)
}

// in runs f on an OS thread moved into the namespace of role. Sockets that
// f creates stay in that namespace and work from any goroutine afterwards.
func (l *lab) in(role string, f func() error) error {
	target, err := os.Open(l.path(role))
	if err != nil {
		return err
	}
	defer target.Close()
	runtime.LockOSThread()
	orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns %s: %w", role, err)
	}
	ferr := f()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: the runtime ends it with the goroutine
		// rather than reuse a thread in the wrong namespace.
		return errors.Join(ferr, fmt.Errorf("setns back: %w", err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// dial opens a connection from the namespace of role.
func (l *lab) dial(role, network, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := l.in(role, func() error {
		var err error
		c, err = net.DialTimeout(network, addr, timeout)
		return err
	})
	return c, err
}

// backends is the set of servers running in the backend namespaces.
type backends struct {
	wg      sync.WaitGroup
	closers []io.Closer
}

// startBackends starts, in each backend namespace, a TCP server on appPort
// that answers each connection with "NAME REMOTEADDR\n", a UDP server on
// appPort that answers each datagram the same way, an HTTP server on
// httpPort answering NAME, and a TCP sink on sinkPort that reads
// everything and answers the byte count.
func (l *lab) startBackends() *backends {
	l.tb.Helper()
	bs := &backends{}
	for _, role := range []string{"backend1", "backend2"} {
		var (
			ln, httpLn, sinkLn net.Listener
			pc                 net.PacketConn
		)
		require.NoError(l.tb, l.in(role, func() error {
			var err error
			if ln, err = net.Listen("tcp4", fmt.Sprintf(":%d", appPort)); err != nil {
				return err
			}
			if httpLn, err = net.Listen("tcp4", fmt.Sprintf(":%d", httpPort)); err != nil {
				return err
			}
			if sinkLn, err = net.Listen("tcp4", fmt.Sprintf(":%d", sinkPort)); err != nil {
				return err
			}
			pc, err = net.ListenPacket("udp4", fmt.Sprintf(":%d", appPort))
			return err
		}))
		srv := &http.Server{
			Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				_, _ = io.WriteString(w, role)
			}),
			ReadHeaderTimeout: 10 * time.Second,
		}
		bs.closers = append(bs.closers, ln, sinkLn, pc, srv)
		bs.serve(ln, func(c net.Conn) { _, _ = fmt.Fprintf(c, "%s %s\n", role, c.RemoteAddr()) })
		bs.serve(sinkLn, func(c net.Conn) {
			n, _ := io.Copy(io.Discard, c)
			_, _ = fmt.Fprintf(c, "%d\n", n)
		})
		bs.wg.Go(func() { _ = srv.Serve(httpLn) })
		bs.serveUDP(pc, role)
	}
	l.tb.Cleanup(bs.close)
	return bs
}

func (bs *backends) serve(ln net.Listener, handle func(net.Conn)) {
	bs.wg.Go(func() {
		var conns sync.WaitGroup
		defer conns.Wait()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Go(func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(time.Minute))
				handle(c)
			})
		}
	})
}

// serveUDP answers each datagram on pc with "NAME REMOTEADDR\n".
func (bs *backends) serveUDP(pc net.PacketConn, name string) {
	bs.wg.Go(func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(fmt.Appendf(nil, "%s %s\n", name, from), from)
		}
	})
}

func (bs *backends) close() {
	for _, c := range bs.closers {
		_ = c.Close()
	}
	bs.wg.Wait()
}

// ask connects from role to addr over TCP and returns the backend's answer
// line: its name and the source address it saw.
func (l *lab) ask(role, addr string) (name, from string, err error) {
	c, err := l.dial(role, "tcp4", addr, 5*time.Second)
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	return readAnswer(c)
}

// readAnswer reads a backend's answer line from c: its name and the source
// address it saw.
func readAnswer(c net.Conn) (name, from string, err error) {
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", "", err
	}
	name, from, _ = strings.Cut(strings.TrimSpace(line), " ")
	return name, from, nil
}

// askUDP sends one datagram from a new socket (a new flow) in role to addr
// and returns the answering backend's name and the source it saw.
func (l *lab) askUDP(role, addr string) (name, from string, err error) {
	c, err := l.dial(role, "udp4", addr, 5*time.Second)
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	return askFlow(c, 5, 2*time.Second)
}

// askFlow sends a datagram on the UDP flow c and returns the answering
// backend's name and the source it saw. Datagrams can be lost, so it tries
// up to tries times on the same flow, waiting up to wait for each answer; a
// retry is not a new flow and so not a new balancing decision.
func askFlow(c net.Conn, tries int, wait time.Duration) (name, from string, err error) {
	buf := make([]byte, 1500)
	for range tries {
		if _, err = c.Write([]byte("?")); err != nil {
			return "", "", err
		}
		_ = c.SetReadDeadline(time.Now().Add(wait))
		var n int
		if n, err = c.Read(buf); err == nil {
			name, from, _ = strings.Cut(strings.TrimSpace(string(buf[:n])), " ")
			return name, from, nil
		}
	}
	return "", "", err
}

// httpClient returns a client whose connections are dialed from role;
// keepAlive false makes every request a new connection.
func (l *lab) httpClient(role string, keepAlive bool) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return l.dial(role, network, addr, 5*time.Second)
		},
		DisableKeepAlives:   !keepAlive,
		MaxIdleConnsPerHost: 16,
	}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}
