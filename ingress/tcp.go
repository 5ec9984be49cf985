package ingress

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"
)

// tcpPort is one published TCP port: a listener, an accept loop, and a
// goroutine pair per proxied connection.
//
// The platform files supply the socket type tcpSock and the operations on
// it: accept, dialAddr, proxy and the pipe pool (tcp_linux.go moves data
// with splice(2) on raw descriptors; tcp_other.go uses *net.TCPConn).
type tcpPort struct {
	port    Port
	cfg     Config
	log     *slog.Logger
	metrics portMetrics
	ln      tcpListener
	rot     rotation
	slots   chan struct{} // one token per connection being proxied

	pipes pipePool

	ctx    context.Context // cancelled by close: aborts dials
	cancel context.CancelFunc
	wg     sync.WaitGroup
	fin    chan struct{} // closed when wg is done after close

	mu     sync.Mutex
	closed bool
	conns  map[io.Closer]struct{} // client and endpoint sockets, also while dialing
}

func openTCP(ctx context.Context, cfg Config, log *slog.Logger, pm portMetrics, p Port, eps []Endpoint) (*tcpPort, error) {
	lc := net.ListenConfig{Control: listenControl, KeepAlive: listenKeepAlive}
	ln, err := lc.Listen(ctx, "tcp", netip.AddrPortFrom(cfg.ListenAddr, p.Published).String())
	if err != nil {
		return nil, err
	}
	tl, err := adoptListener(ln.(*net.TCPListener))
	if err != nil {
		return nil, err
	}
	t := &tcpPort{
		port:    p,
		cfg:     cfg,
		log:     log.With("protocol", "tcp", "port", p.Published, "service", p.Service),
		metrics: pm,
		ln:      tl,
		slots:   make(chan struct{}, cfg.MaxConnsPerPort),
		conns:   make(map[io.Closer]struct{}),
		fin:     make(chan struct{}),
	}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	t.rot.set(eps)
	t.wg.Add(1)
	go t.acceptLoop()
	return t, nil
}

func (t *tcpPort) service() string             { return t.port.Service }
func (t *tcpPort) setEndpoints(eps []Endpoint) { t.rot.set(eps) }
func (t *tcpPort) endpoints() []Endpoint       { return t.rot.list() }
func (t *tcpPort) done() <-chan struct{}       { return t.fin }

func (t *tcpPort) close() {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return
	}
	t.closed = true
	conns := t.conns
	t.conns = nil
	t.mu.Unlock()

	t.cancel()
	_ = t.ln.Close()
	for c := range conns {
		_ = c.Close()
	}
	go func() {
		t.wg.Wait()
		t.pipes.drain()
		close(t.fin)
	}()
}

// track registers c so close can reach it; false means the port is closed
// and c has been closed.
func (t *tcpPort) track(c io.Closer) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		_ = c.Close()
		return false
	}
	t.conns[c] = struct{}{}
	return true
}

func (t *tcpPort) untrack(c io.Closer) {
	t.mu.Lock()
	delete(t.conns, c)
	t.mu.Unlock()
	_ = c.Close()
}

func (t *tcpPort) acceptLoop() {
	defer t.wg.Done()
	var backoff time.Duration
	for {
		// Take a slot before accepting: at the limit, new connections wait
		// in the kernel's backlog instead of being accepted and dropped.
		select {
		case t.slots <- struct{}{}:
		case <-t.ctx.Done():
			return
		}
		c, err := t.accept()
		if err != nil {
			<-t.slots
			if errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) || t.ctx.Err() != nil {
				return
			}
			// Temporary trouble such as EMFILE: back off instead of spinning.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			t.log.Warn("accept failed", "err", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
			case <-t.ctx.Done():
				return
			}
			continue
		}
		backoff = 0
		t.wg.Add(1)
		go t.serve(c)
	}
}

// serve balances one accepted connection and proxies it until both
// directions have ended.
func (t *tcpPort) serve(client tcpSock) {
	defer t.wg.Done()
	defer func() { <-t.slots }()
	if !t.track(client) {
		return
	}
	defer t.untrack(client)

	backend, ok := t.dial()
	if !ok {
		return
	}
	defer t.untrack(backend)

	t.metrics.accepted.Inc()
	t.metrics.active.Inc()
	defer t.metrics.active.Dec()
	t.proxy(client, backend)
}

// dial connects to the next endpoint round robin, trying the following
// ones when it refuses or times out. It returns false if none answered.
// The socket it returns is tracked.
func (t *tcpPort) dial() (tcpSock, bool) {
	eps, first := t.rot.pick()
	if len(eps) == 0 {
		t.metrics.noEndpoint.Inc()
		t.log.Debug("no endpoint for connection")
		return nil, false
	}
	for i := range eps {
		ep := eps[(first+i)%len(eps)]
		c, err := t.dialAddr(ep.Addr)
		if err == nil {
			return c, true
		}
		if t.ctx.Err() != nil {
			return nil, false
		}
		t.metrics.dialFailures.Inc()
		t.log.Debug("endpoint failed, trying the next", "task", ep.Task, "addr", ep.Addr, "err", err)
	}
	t.metrics.noEndpoint.Inc()
	t.log.Warn("no endpoint answered", "endpoints", len(eps))
	return nil, false
}
