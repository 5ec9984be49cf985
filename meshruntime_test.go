package shoal_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoalhq/shoal/runtime"
)

// echoRuntime runs tasks as in-process servers bound to its node's own
// loopback address: each TCP port answers every connection with the task's
// ID, each UDP port answers every datagram with it. It records, per task, how
// many requests reached the task after it was told to stop (dead hits).
type echoRuntime struct {
	mu    sync.Mutex
	ip    netip.Addr // set once the harness has given the node its address
	tasks map[string]*echoTask
}

func newEchoRuntime() *echoRuntime {
	return &echoRuntime{tasks: map[string]*echoTask{}}
}

func (r *echoRuntime) setIP(ip netip.Addr) {
	r.mu.Lock()
	r.ip = ip
	r.mu.Unlock()
}

func (r *echoRuntime) addr() netip.Addr {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ip
}

func (r *echoRuntime) Controller(t runtime.Task) (runtime.Controller, error) {
	if err := t.Validate(); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if et := r.tasks[t.ID]; et != nil {
		return et, nil
	}
	et := &echoTask{r: r, t: t, exited: make(chan struct{})}
	r.tasks[t.ID] = et
	return et, nil
}

// kill makes a running task exit on its own (code 1), as a crash would.
func (r *echoRuntime) kill(taskID string) bool {
	r.mu.Lock()
	et := r.tasks[taskID]
	r.mu.Unlock()
	if et == nil {
		return false
	}
	et.exit(runtime.ExitStatus{Code: 1, Message: "killed by the test"})
	return true
}

// deadHits sums, over the runtime's tasks, the requests served after Shutdown
// began.
func (r *echoRuntime) deadHits() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var n int64
	for _, et := range r.tasks {
		n += et.deadHits.Load()
	}
	return n
}

type echoTask struct {
	r *echoRuntime
	t runtime.Task

	mu        sync.Mutex
	started   bool
	eps       []runtime.Endpoint
	closers   []io.Closer
	exited    chan struct{}
	status    runtime.ExitStatus
	once      sync.Once
	stopping  atomic.Bool
	deadHits  atomic.Int64
	wg        sync.WaitGroup
	shutdownC bool
}

func (e *echoTask) Prepare(context.Context) error { return nil }

func (e *echoTask) Start(context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.started {
		return nil
	}
	if e.shutdownC {
		return runtime.ErrShutdown
	}
	for _, p := range e.t.Spec.Ports {
		port := p.HostPort
		switch p.EffectiveProtocol() {
		case runtime.ProtocolUDP:
			pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(e.r.addr(), port)))
			if err != nil {
				e.closeLocked()
				return err
			}
			e.closers = append(e.closers, pc)
			e.eps = append(e.eps, runtime.Endpoint{Target: p.Target, Protocol: runtime.ProtocolUDP,
				Addr: pc.LocalAddr().(*net.UDPAddr).AddrPort()})
			e.wg.Add(1)
			go e.serveUDP(pc)
		default:
			l, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(e.r.addr(), port)))
			if err != nil {
				e.closeLocked()
				return err
			}
			e.closers = append(e.closers, l)
			e.eps = append(e.eps, runtime.Endpoint{Target: p.Target, Protocol: runtime.ProtocolTCP,
				Addr: l.Addr().(*net.TCPAddr).AddrPort()})
			e.wg.Add(1)
			go e.serveTCP(l)
		}
	}
	e.started = true
	return nil
}

func (e *echoTask) hit() {
	if e.stopping.Load() {
		e.deadHits.Add(1)
	}
}

func (e *echoTask) serveTCP(l *net.TCPListener) {
	defer e.wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		e.hit()
		_, _ = c.Write([]byte(e.t.ID))
		_ = c.Close()
	}
}

func (e *echoTask) serveUDP(pc *net.UDPConn) {
	defer e.wg.Done()
	buf := make([]byte, 1500)
	for {
		_, from, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		e.hit()
		_, _ = pc.WriteToUDPAddrPort([]byte(e.t.ID), from)
	}
}

func (e *echoTask) closeLocked() {
	for _, c := range e.closers {
		_ = c.Close()
	}
	e.closers = nil
}

func (e *echoTask) exit(st runtime.ExitStatus) {
	e.once.Do(func() {
		e.mu.Lock()
		e.closeLocked()
		e.eps = nil
		e.status = st
		e.mu.Unlock()
		e.wg.Wait()
		close(e.exited)
	})
}

func (e *echoTask) Wait(ctx context.Context) (runtime.ExitStatus, error) {
	e.mu.Lock()
	started := e.started
	e.mu.Unlock()
	if !started {
		return runtime.ExitStatus{}, runtime.ErrNotStarted
	}
	select {
	case <-e.exited:
		return e.status, nil
	case <-ctx.Done():
		return runtime.ExitStatus{}, ctx.Err()
	}
}

func (e *echoTask) Shutdown(ctx context.Context) error {
	e.mu.Lock()
	e.shutdownC = true
	started := e.started
	e.mu.Unlock()
	if !started {
		return nil
	}
	// Like a server finishing its work after SIGTERM, the task keeps
	// serving a little while it stops, and counts what still arrives: with
	// its endpoints drained from every balancer first, nothing should.
	if e.stopping.CompareAndSwap(false, true) {
		select {
		case <-time.After(echoStopWindow):
		case <-e.exited:
		case <-ctx.Done():
		}
	}
	e.exit(runtime.ExitStatus{Code: 0, Message: "stopped"})
	return nil
}

// echoStopWindow is how long a stopping echo task still serves.
const echoStopWindow = 150 * time.Millisecond

func (e *echoTask) Remove(ctx context.Context) error {
	err := e.Shutdown(ctx)
	if errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

func (e *echoTask) Endpoints() []runtime.Endpoint {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]runtime.Endpoint(nil), e.eps...)
}
