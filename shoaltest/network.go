package shoaltest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"

	"google.golang.org/grpc/test/bufconn"
)

// Network is an in-memory network between the nodes of a test cluster. Every
// node listens on an address of its own and dials through the network, so a
// test can cut the links between nodes (partitions) without sockets, ports
// or root.
type Network struct {
	mu        sync.Mutex
	listeners map[string]*memListener
	blocked   map[link]bool
	conns     map[*trackedConn]struct{}
}

type link struct{ from, to string }

// ErrUnreachable is returned when dialing an address that no node listens on
// or that a partition cuts off.
var ErrUnreachable = errors.New("shoaltest: address unreachable")

// NewNetwork returns an empty network.
func NewNetwork() *Network {
	return &Network{listeners: map[string]*memListener{}, blocked: map[link]bool{}, conns: map[*trackedConn]struct{}{}}
}

// Listen returns a listener for addr; it replaces a closed listener of the
// same address (a restarted node).
func (nw *Network) Listen(addr string) (net.Listener, error) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	if l, ok := nw.listeners[addr]; ok && !l.isClosed() {
		return nil, fmt.Errorf("shoaltest: %s is already listening", addr)
	}
	l := &memListener{Listener: bufconn.Listen(256 << 10), addr: memAddr(addr), nw: nw}
	nw.listeners[addr] = l
	return l, nil
}

// Dialer returns the dial function of the node at from.
func (nw *Network) Dialer(from string) func(ctx context.Context, addr string) (net.Conn, error) {
	return func(ctx context.Context, to string) (net.Conn, error) {
		nw.mu.Lock()
		l := nw.listeners[to]
		cut := nw.blocked[link{from, to}]
		nw.mu.Unlock()
		if l == nil || l.isClosed() {
			return nil, fmt.Errorf("dial %s from %s: %w (nothing listens there)", to, from, ErrUnreachable)
		}
		if cut {
			return nil, fmt.Errorf("dial %s from %s: %w (partitioned)", to, from, ErrUnreachable)
		}
		c, err := l.DialContext(ctx)
		if err != nil {
			return nil, fmt.Errorf("dial %s from %s: %w", to, from, err)
		}
		tc := &trackedConn{Conn: c, from: from, to: to, nw: nw}
		nw.mu.Lock()
		if nw.blocked[link{from, to}] {
			// Cut while dialing.
			nw.mu.Unlock()
			c.Close()
			return nil, fmt.Errorf("dial %s from %s: %w (partitioned)", to, from, ErrUnreachable)
		}
		nw.conns[tc] = struct{}{}
		nw.mu.Unlock()
		return tc, nil
	}
}

// Cut blocks traffic between a and b in both directions and breaks their
// open connections.
func (nw *Network) Cut(a, b string) {
	nw.mu.Lock()
	nw.blocked[link{a, b}] = true
	nw.blocked[link{b, a}] = true
	var victims []*trackedConn
	for c := range nw.conns {
		if (c.from == a && c.to == b) || (c.from == b && c.to == a) {
			victims = append(victims, c)
		}
	}
	nw.mu.Unlock()
	for _, c := range victims {
		c.Close()
	}
}

// Heal restores traffic between a and b.
func (nw *Network) Heal(a, b string) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	delete(nw.blocked, link{a, b})
	delete(nw.blocked, link{b, a})
}

// HealAll removes every partition.
func (nw *Network) HealAll() {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	nw.blocked = map[link]bool{}
}

// Addrs returns the addresses that have listened on the network.
func (nw *Network) Addrs() []string {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	out := make([]string, 0, len(nw.listeners))
	for a := range nw.listeners {
		out = append(out, a)
	}
	return out
}

type memAddr string

func (a memAddr) Network() string { return "shoaltest" }
func (a memAddr) String() string  { return string(a) }

type memListener struct {
	*bufconn.Listener
	addr memAddr
	nw   *Network

	mu     sync.Mutex
	closed bool
}

func (l *memListener) Addr() net.Addr { return l.addr }

func (l *memListener) Close() error {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	return l.Listener.Close()
}

func (l *memListener) isClosed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed
}

type trackedConn struct {
	net.Conn
	from, to string
	nw       *Network
	once     sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.nw.mu.Lock()
		delete(c.nw.conns, c)
		c.nw.mu.Unlock()
	})
	return c.Conn.Close()
}
