package network

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// The test topology: the Bridge's host side lives in a namespace the test
// creates ("host"), never in the machine's own; a "client" namespace stands
// for the world outside the node, joined to the host by a veth pair.
//
//	client 10.99.0.2 ── 10.99.0.1 host ── bridge (pool) ── containers
const (
	hostLinkAddr   = "10.99.0.1"
	clientLinkAddr = "10.99.0.2"
	dialTimeout    = 3 * time.Second
)

var nsSeq atomic.Uint64

// requireRoot skips tb with a sentence saying what is missing unless the
// process can create network namespaces and program nftables.
func requireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("bridge network tests need root (to create network namespaces, veth pairs and nftables tables); run as root")
	}
	c, err := nftables.New()
	if err == nil {
		_, err = c.ListTables()
	}
	if err != nil {
		tb.Skipf("nftables over netlink is unavailable in this kernel or sandbox: %v", err)
	}
}

// newNS creates a named network namespace (under /run/netns) with lo up,
// deleted at cleanup, and returns its path.
func newNS(tb testing.TB, role string) string {
	tb.Helper()
	name := fmt.Sprintf("shoalnet-%d-%d-%s", os.Getpid(), nsSeq.Add(1), role)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		ns, err := netns.NewNamed(name)
		if err == nil {
			_ = ns.Close()
		}
		if serr := netns.Set(orig); serr != nil {
			errc <- errors.Join(err, serr) // the thread stays locked and ends
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	if err := <-errc; err != nil {
		tb.Skipf("cannot create network namespaces here (%v)", err)
	}
	tb.Cleanup(func() { _ = netns.DeleteNamed(name) })
	path := "/run/netns/" + name
	withHandle(tb, path, func(h *netlink.Handle) {
		lo, err := h.LinkByName("lo")
		require.NoError(tb, err)
		require.NoError(tb, h.LinkSetUp(lo))
	})
	return path
}

// withHandle runs f with a netlink handle in the namespace at path.
func withHandle(tb testing.TB, path string, f func(h *netlink.Handle)) {
	tb.Helper()
	ns, err := netns.GetFromPath(path)
	require.NoError(tb, err)
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	require.NoError(tb, err)
	defer h.Close()
	f(h)
}

// inNS runs f on a thread in the namespace at path.
func inNS(path string, f func() error) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return err
	}
	defer ns.Close()
	return runIn(ns, f)
}

// lab is one test's namespaces: host and client, wired together.
type lab struct {
	host, client string
}

func newLab(tb testing.TB) *lab {
	tb.Helper()
	requireRoot(tb)
	l := &lab{host: newNS(tb, "host"), client: newNS(tb, "client")}
	cns, err := netns.GetFromPath(l.client)
	require.NoError(tb, err)
	defer cns.Close()
	withHandle(tb, l.host, func(h *netlink.Handle) {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = "toclient"
		v := netlink.NewVeth(attrs)
		v.PeerName = "eth0"
		v.PeerNamespace = netlink.NsFd(cns)
		require.NoError(tb, h.LinkAdd(v))
		link, err := h.LinkByName("toclient")
		require.NoError(tb, err)
		require.NoError(tb, h.AddrAdd(link, mustAddr(hostLinkAddr+"/24")))
		require.NoError(tb, h.LinkSetUp(link))
	})
	withHandle(tb, l.client, func(h *netlink.Handle) {
		link, err := h.LinkByName("eth0")
		require.NoError(tb, err)
		require.NoError(tb, h.AddrAdd(link, mustAddr(clientLinkAddr+"/24")))
		require.NoError(tb, h.LinkSetUp(link))
	})
	return l
}

func mustAddr(s string) *netlink.Addr {
	a, err := netlink.ParseAddr(s)
	if err != nil {
		panic(err)
	}
	return a
}

// newBridge returns a Bridge on l's host namespace with a fresh StateDir,
// torn down at cleanup.
func (l *lab) newBridge(tb testing.TB, name, subnet string, mod ...func(*Config)) *Bridge {
	tb.Helper()
	cfg := l.config(tb, name, subnet)
	for _, m := range mod {
		m(&cfg)
	}
	b, err := New(cfg)
	require.NoError(tb, err)
	tb.Cleanup(func() {
		if err := b.Teardown(context.Background()); !errors.Is(err, ErrClosed) {
			require.NoError(tb, err)
		}
		_ = b.Close()
	})
	return b
}

func (l *lab) config(tb testing.TB, name, subnet string) Config {
	cfg := DefaultConfig()
	cfg.Bridge = name
	cfg.Subnet = netip.MustParsePrefix(subnet)
	cfg.StateDir = tb.TempDir()
	cfg.HostNetns = l.host
	return cfg
}

// server answers each TCP connection, or UDP datagram, with
// "NAME REMOTEADDR\n" and closes it.
type server struct {
	wg sync.WaitGroup
	ln net.Listener
	pc net.PacketConn
}

// serve starts a server named name in the namespace at path, listening on
// addr (TCP, and UDP too if udp), stopped at cleanup.
func serve(tb testing.TB, path, name, addr string, udp bool) {
	tb.Helper()
	s := &server{}
	require.NoError(tb, inNS(path, func() error {
		var err error
		if s.ln, err = net.Listen("tcp4", addr); err != nil {
			return err
		}
		if udp {
			s.pc, err = net.ListenPacket("udp4", addr)
		}
		return err
	}))
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := s.ln.Accept()
			if err != nil {
				return
			}
			_, _ = fmt.Fprintf(c, "%s %s\n", name, c.RemoteAddr())
			_ = c.Close()
		}
	}()
	if s.pc != nil {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			buf := make([]byte, 64)
			for {
				_, from, err := s.pc.ReadFrom(buf)
				if err != nil {
					return
				}
				_, _ = s.pc.WriteTo([]byte(fmt.Sprintf("%s %s\n", name, from)), from)
			}
		}()
	}
	tb.Cleanup(func() {
		_ = s.ln.Close()
		if s.pc != nil {
			_ = s.pc.Close()
		}
		s.wg.Wait()
	})
}

// ask connects from the namespace at path to addr over TCP and returns the
// server's name and the remote address it saw.
func ask(path, addr string) (name, from string, err error) {
	var c net.Conn
	if err := inNS(path, func() error {
		var err error
		c, err = net.DialTimeout("tcp4", addr, dialTimeout)
		return err
	}); err != nil {
		return "", "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(dialTimeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", "", err
	}
	name, from, _ = strings.Cut(strings.TrimSpace(line), " ")
	return name, from, nil
}

// askUDP sends one datagram from the namespace at path to addr and returns
// the answer's name and the source the server saw.
func askUDP(path, addr string) (name, from string, err error) {
	var c net.Conn
	if err := inNS(path, func() error {
		var err error
		c, err = net.Dial("udp4", addr)
		return err
	}); err != nil {
		return "", "", err
	}
	defer c.Close()
	buf := make([]byte, 128)
	// A first datagram can be lost while neighbours are resolved; retry a
	// bounded number of times.
	for range 5 {
		if _, err = c.Write([]byte("?")); err != nil {
			return "", "", err
		}
		_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		var n int
		if n, err = c.Read(buf); err == nil {
			name, from, _ = strings.Cut(strings.TrimSpace(string(buf[:n])), " ")
			return name, from, nil
		}
	}
	return "", "", err
}

// hostOf is the address part of "addr:port".
func hostOf(tb testing.TB, addrPort string) string {
	tb.Helper()
	ap, err := netip.ParseAddrPort(addrPort)
	require.NoError(tb, err, addrPort)
	return ap.Addr().String()
}

// readSysctl reads a sysctl in the namespace at path.
func readSysctl(tb testing.TB, path, name string) string {
	tb.Helper()
	var v []byte
	require.NoError(tb, inNS(path, func() error {
		var err error
		v, err = os.ReadFile("/proc/sys/" + name)
		return err
	}))
	return string(trimNL(v))
}

// nftRules lists the rules of chain in the bridge's table in the namespace
// at path.
func nftRules(tb testing.TB, path, bridge, chain string) []*nftables.Rule {
	tb.Helper()
	ns, err := netns.GetFromPath(path)
	require.NoError(tb, err)
	defer ns.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	require.NoError(tb, err)
	rules, err := c.GetRules(nftTable(bridge), &nftables.Chain{Name: chain, Table: nftTable(bridge)})
	require.NoError(tb, err)
	return rules
}

// tableExists reports whether the bridge's table is in the namespace.
func tableExists(tb testing.TB, path, bridge string) bool {
	tb.Helper()
	ns, err := netns.GetFromPath(path)
	require.NoError(tb, err)
	defer ns.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	require.NoError(tb, err)
	ok, err := tablePresent(c, bridge)
	require.NoError(tb, err)
	return ok
}

// linkExists reports whether the namespace at path has an interface name.
func linkExists(tb testing.TB, path, name string) bool {
	tb.Helper()
	var ok bool
	withHandle(tb, path, func(h *netlink.Handle) {
		_, err := h.LinkByName(name)
		ok = err == nil
	})
	return ok
}

func isMounted(tb testing.TB, path string) bool {
	tb.Helper()
	ok, err := isNetnsMount(path)
	require.NoError(tb, err)
	return ok
}

// nftPorts lists the ports map of the bridge's table in the namespace at
// path, as "proto:hostport>addr:target" strings.
func nftPorts(tb testing.TB, path, bridge string) []string {
	tb.Helper()
	ns, err := netns.GetFromPath(path)
	require.NoError(tb, err)
	defer ns.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	require.NoError(tb, err)
	set, err := c.GetSetByName(nftTable(bridge), portsMap)
	require.NoError(tb, err)
	elems, err := c.GetSetElements(set)
	require.NoError(tb, err)
	out := []string{}
	for _, e := range elems {
		require.Len(tb, e.Key, 8)
		require.Len(tb, e.Val, 8)
		proto := map[byte]string{6: "tcp", 17: "udp"}[e.Key[0]]
		addr := netip.AddrFrom4([4]byte(e.Val[:4]))
		out = append(out, fmt.Sprintf("%s:%d>%s:%d", proto, binary.BigEndian.Uint16(e.Key[4:6]), addr, binary.BigEndian.Uint16(e.Val[4:6])))
	}
	slices.Sort(out)
	return out
}
