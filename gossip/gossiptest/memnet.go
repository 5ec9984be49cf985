package gossiptest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// MemNetwork is an in-memory network for many members in one process:
// packets (memberlist's UDP) and streams (its TCP) between MemTransports,
// with injectable packet loss and isolation. Safe for concurrent use.
type MemNetwork struct {
	mu        sync.Mutex
	nodes     map[string]*MemTransport
	isolated  map[string]bool
	next      uint32
	loss      float64
	rng       *rand.Rand
	packets   uint64
	dropped   uint64
	maxPacket int
}

// MemStats counts packet traffic on a MemNetwork.
type MemStats struct {
	Packets   uint64 // packets offered to the network
	Dropped   uint64 // of those, lost to injected loss or isolation
	MaxPacket int    // largest packet offered, in bytes
}

// NewMemNetwork returns an empty network; seed fixes the loss pattern's
// random source.
func NewMemNetwork(seed uint64) *MemNetwork {
	return &MemNetwork{
		nodes:    make(map[string]*MemTransport),
		isolated: make(map[string]bool),
		rng:      rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
	}
}

// NewTransport attaches a new member with a fresh address (10.x.y.z:7946).
func (n *MemNetwork) NewTransport() *MemTransport {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.next++
	ip := net.IPv4(10, byte(n.next>>16), byte(n.next>>8), byte(n.next))
	t := &MemTransport{
		net:      n,
		ip:       ip,
		port:     7946,
		packetCh: make(chan *memberlist.Packet, 4096),
		streamCh: make(chan net.Conn, 64),
	}
	t.addr = net.JoinHostPort(ip.String(), "7946")
	n.nodes[t.addr] = t
	return t
}

// SetLoss makes the network drop each packet with probability p (0 to 1).
// Streams are reliable, like TCP.
func (n *MemNetwork) SetLoss(p float64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.loss = p
}

// Isolate cuts (or, with on false, restores) every packet and new stream to
// and from addr, as if the host lost its network.
func (n *MemNetwork) Isolate(addr string, on bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if on {
		n.isolated[addr] = true
	} else {
		delete(n.isolated, addr)
	}
}

// Stats returns the packet counters.
func (n *MemNetwork) Stats() MemStats {
	n.mu.Lock()
	defer n.mu.Unlock()
	return MemStats{Packets: n.packets, Dropped: n.dropped, MaxPacket: n.maxPacket}
}

// route returns the destination of a packet, or nil if it is lost.
func (n *MemNetwork) route(from, to string, size int) *MemTransport {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.packets++
	if size > n.maxPacket {
		n.maxPacket = size
	}
	dst := n.nodes[to]
	if dst == nil || n.isolated[from] || n.isolated[to] || (n.loss > 0 && n.rng.Float64() < n.loss) {
		n.dropped++
		return nil
	}
	return dst
}

func (n *MemNetwork) dialable(from, to string) *MemTransport {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.isolated[from] || n.isolated[to] {
		return nil
	}
	return n.nodes[to]
}

func (n *MemNetwork) remove(t *MemTransport) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.nodes[t.addr] == t {
		delete(n.nodes, t.addr)
	}
}

// MemTransport is one member's attachment to a MemNetwork; it implements
// memberlist.Transport.
type MemTransport struct {
	net      *MemNetwork
	ip       net.IP
	port     int
	addr     string
	packetCh chan *memberlist.Packet
	streamCh chan net.Conn

	mu   sync.Mutex
	shut bool
}

var _ memberlist.Transport = (*MemTransport)(nil)

// errRefused is returned for dials to absent, isolated or shut down members.
var errRefused = errors.New("gossiptest: connection refused")

// Addr is the member's address, for Join and Isolate.
func (t *MemTransport) Addr() string { return t.addr }

// FinalAdvertiseAddr implements memberlist.Transport.
func (t *MemTransport) FinalAdvertiseAddr(string, int) (net.IP, int, error) {
	return t.ip, t.port, nil
}

// WriteTo implements memberlist.Transport: it delivers b unless the network
// drops it; like UDP it never reports loss.
func (t *MemTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	now := time.Now()
	dst := t.net.route(t.addr, addr, len(b))
	if dst == nil {
		return now, nil
	}
	p := &memberlist.Packet{Buf: append([]byte(nil), b...), From: &net.UDPAddr{IP: t.ip, Port: t.port}, Timestamp: now}
	dst.mu.Lock()
	defer dst.mu.Unlock()
	if dst.shut {
		return now, nil
	}
	select {
	case dst.packetCh <- p:
	default: // receive buffer full: dropped, like UDP
	}
	return now, nil
}

// PacketCh implements memberlist.Transport.
func (t *MemTransport) PacketCh() <-chan *memberlist.Packet { return t.packetCh }

// DialTimeout implements memberlist.Transport with a synchronous in-memory pipe.
func (t *MemTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	dst := t.net.dialable(t.addr, addr)
	if dst == nil {
		return nil, fmt.Errorf("dial %s: %w", addr, errRefused)
	}
	client, server := memPipe(&net.TCPAddr{IP: t.ip, Port: t.port}, &net.TCPAddr{IP: dst.ip, Port: dst.port})
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	dst.mu.Lock()
	if dst.shut {
		dst.mu.Unlock()
		return nil, fmt.Errorf("dial %s: %w", addr, errRefused)
	}
	select {
	case dst.streamCh <- server:
		dst.mu.Unlock()
		return client, nil
	default:
	}
	dst.mu.Unlock()
	// Backlog full: wait for room without holding the lock.
	select {
	case dst.streamCh <- server:
		return client, nil
	case <-timer.C:
		_ = client.Close()
		return nil, fmt.Errorf("dial %s: timeout", addr)
	}
}

// StreamCh implements memberlist.Transport.
func (t *MemTransport) StreamCh() <-chan net.Conn { return t.streamCh }

// Shutdown implements memberlist.Transport: the member leaves the network.
func (t *MemTransport) Shutdown() error {
	t.mu.Lock()
	t.shut = true
	t.mu.Unlock()
	t.net.remove(t)
	// Close the streams left unaccepted.
	for {
		select {
		case c := <-t.streamCh:
			_ = c.Close()
		default:
			return nil
		}
	}
}
