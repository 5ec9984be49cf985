package ingress

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// maxDatagram is the largest UDP payload over IPv4 or IPv6 without jumbograms.
const maxDatagram = 65535

// udpPort is one published UDP port: a socket that receives every client's
// datagrams, and a flow per client address with its own connected socket to
// the endpoint chosen for it.
type udpPort struct {
	port    Port
	cfg     Config
	log     *slog.Logger
	metrics portMetrics
	conn    *net.UDPConn
	rot     rotation

	wg  sync.WaitGroup
	fin chan struct{}

	mu     sync.Mutex
	closed bool
	flows  map[netip.AddrPort]*udpFlow
}

// udpFlow is one client address and the endpoint it was given.
type udpFlow struct {
	client   netip.AddrPort
	endpoint Endpoint
	conn     *net.UDPConn // connected to endpoint.Addr
	last     atomic.Int64 // unix nanoseconds of the last datagram either way
}

func (f *udpFlow) touch() { f.last.Store(time.Now().UnixNano()) }

func openUDP(ctx context.Context, cfg Config, log *slog.Logger, pm portMetrics, p Port, eps []Endpoint) (*udpPort, error) {
	var lc net.ListenConfig
	pc, err := lc.ListenPacket(ctx, "udp", netip.AddrPortFrom(cfg.ListenAddr, p.Published).String())
	if err != nil {
		return nil, err
	}
	u := &udpPort{
		port:    p,
		cfg:     cfg,
		log:     log.With("protocol", "udp", "port", p.Published, "service", p.Service),
		metrics: pm,
		conn:    pc.(*net.UDPConn),
		flows:   make(map[netip.AddrPort]*udpFlow),
		fin:     make(chan struct{}),
	}
	u.rot.set(eps)
	u.wg.Add(1)
	go u.readLoop()
	return u, nil
}

func (u *udpPort) service() string             { return u.port.Service }
func (u *udpPort) setEndpoints(eps []Endpoint) { u.rot.set(eps) }
func (u *udpPort) endpoints() []Endpoint       { return u.rot.list() }
func (u *udpPort) done() <-chan struct{}       { return u.fin }

func (u *udpPort) close() {
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		return
	}
	u.closed = true
	flows := u.flows
	u.flows = nil
	u.mu.Unlock()

	_ = u.conn.Close()
	for _, f := range flows {
		_ = f.conn.Close()
	}
	go func() {
		u.wg.Wait()
		close(u.fin)
	}()
}

// readLoop forwards every client datagram to its flow's endpoint.
func (u *udpPort) readLoop() {
	defer u.wg.Done()
	buf := make([]byte, maxDatagram)
	for {
		n, client, err := u.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			u.log.Debug("read failed", "err", err)
			continue
		}
		client = netip.AddrPortFrom(client.Addr().Unmap(), client.Port())
		u.forward(client, buf[:n])
	}
}

// forward sends one datagram of client to its flow's endpoint, making the
// flow if it is new. If the endpoint is known to refuse (an ICMP port
// unreachable came back for an earlier datagram), the flow is dropped and
// the datagram goes to a new flow with the next endpoint.
func (u *udpPort) forward(client netip.AddrPort, payload []byte) {
	for attempt := 0; attempt < 2; attempt++ {
		f, ok := u.flow(client)
		if !ok {
			return
		}
		_, err := f.conn.Write(payload)
		if err == nil {
			f.touch()
			u.metrics.bytesIn.Add(float64(len(payload)))
			return
		}
		u.metrics.dialFailures.Inc()
		u.log.Debug("endpoint failed, flow dropped", "client", client, "task", f.endpoint.Task, "err", err)
		u.drop(f)
	}
}

// flow returns client's flow, making it with the next endpoint if there is
// none. It returns false when the datagram must be dropped.
func (u *udpPort) flow(client netip.AddrPort) (*udpFlow, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return nil, false
	}
	if f, ok := u.flows[client]; ok {
		return f, true
	}
	if len(u.flows) >= u.cfg.MaxUDPFlowsPerPort {
		u.metrics.tableFull.Inc()
		return nil, false
	}
	eps, first := u.rot.pick()
	for i := range eps {
		ep := eps[(first+i)%len(eps)]
		// A UDP "dial" only binds and connects a local socket: no packet is
		// sent, so this does not block the read loop.
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(ep.Addr))
		if err != nil {
			u.metrics.dialFailures.Inc()
			u.log.Debug("endpoint failed, trying the next", "task", ep.Task, "addr", ep.Addr, "err", err)
			continue
		}
		f := &udpFlow{client: client, endpoint: ep, conn: c}
		f.touch()
		u.flows[client] = f
		u.metrics.accepted.Inc()
		u.metrics.active.Inc()
		u.wg.Add(1)
		go u.replyLoop(f)
		return f, true
	}
	u.metrics.noEndpoint.Inc()
	return nil, false
}

// drop removes f from the table (if it is still there) and closes it.
func (u *udpPort) drop(f *udpFlow) {
	u.mu.Lock()
	if u.flows[f.client] == f {
		delete(u.flows, f.client)
		u.metrics.active.Dec()
	}
	u.mu.Unlock()
	_ = f.conn.Close()
}

// replyLoop relays the endpoint's datagrams back to the client from the
// published port's socket, and expires the flow when it has been idle for
// UDPFlowIdleTimeout.
func (u *udpPort) replyLoop(f *udpFlow) {
	defer u.wg.Done()
	defer u.drop(f)
	idle := u.cfg.UDPFlowIdleTimeout
	buf := make([]byte, maxDatagram)
	for {
		_ = f.conn.SetReadDeadline(time.Unix(0, f.last.Load()).Add(idle))
		n, err := f.conn.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				if time.Since(time.Unix(0, f.last.Load())) >= idle {
					u.log.Debug("flow expired", "client", f.client, "task", f.endpoint.Task)
					return
				}
				continue // traffic since the deadline was set: wait more
			}
			if !errors.Is(err, net.ErrClosed) {
				// Typically ECONNREFUSED: the endpoint's port is closed.
				// The next datagram of the client makes a new flow.
				u.metrics.dialFailures.Inc()
				u.log.Debug("endpoint failed, flow dropped", "client", f.client, "task", f.endpoint.Task, "err", err)
			}
			return
		}
		f.touch()
		if _, err := u.conn.WriteToUDPAddrPort(buf[:n], f.client); err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			u.log.Debug("reply to client failed", "client", f.client, "err", err)
			continue
		}
		u.metrics.bytesOut.Add(float64(n))
	}
}
