//go:build linux

package ingress

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// On Linux the proxy works on raw non-blocking descriptors wrapped in
// *os.File, so they wait on the runtime's poller like net's sockets do, but
// without net's per-connection work that a proxy does not need (address
// lookups, keep-alive setsockopt calls inherited from the listener anyway,
// a parked goroutine per loopback connect). The bytes move socket to pipe
// to socket with splice(2), through a pipe borrowed from the port's pool
// only while data is in flight.

// tcpSock is one proxied socket: a non-blocking TCP descriptor registered
// with the runtime poller.
type tcpSock = *os.File

// tcpListener is the published port's listening socket, as a pollable
// *os.File: a net.TCPListener's RawConn cannot wait for readiness, an
// os.File's can.
type tcpListener = *os.File

// adoptListener swaps ln for its pollable duplicate. net made the socket
// (address family, dual stack, SO_REUSEADDR), the proxy accepts on it.
func adoptListener(ln *net.TCPListener) (tcpListener, error) {
	f, err := ln.File()
	_ = ln.Close() // the duplicate keeps the socket listening
	if err != nil {
		return nil, err
	}
	return f, nil
}

// Keep-alive settings of proxied sockets, the standard library's defaults:
// a dead peer (a client's host gone, a node lost) is noticed within about
// 2.5 minutes instead of holding a connection slot for ever.
const (
	keepAliveIdle     = 15 // seconds of silence before the first probe
	keepAliveInterval = 15 // seconds between probes
	keepAliveCount    = 9  // unanswered probes before the connection is dropped
)

// pipeSize is the capacity asked for each splice pipe: 1 MiB, the default
// /proc/sys/fs/pipe-max-size, so one splice pair moves up to that much.
// Pipes only hold pages while data is in them.
const pipeSize = 1 << 20

// maxIdlePipes bounds the pipes a port keeps for reuse; more are closed.
// Two per CPU covers every direction that can be moving data at once.
func maxIdlePipes() int { return 2 * runtime.NumCPU() }

// listenKeepAlive -1 tells net not to set keep-alive itself: the listener
// has it (listenControl) and accepted sockets inherit it.
const listenKeepAlive = -1

// listenControl sets, on the listening socket, the options every accepted
// socket inherits from it: keep-alive and TCP_NODELAY. Setting them once
// here saves five setsockopt calls per connection.
func listenControl(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) { serr = setStreamOptions(int(fd)) }); err != nil {
		return err
	}
	return serr
}

func setStreamOptions(fd int) error {
	for _, o := range [...]struct{ level, opt, val int }{
		{unix.IPPROTO_TCP, unix.TCP_NODELAY, 1}, // the proxy forwards what it has at once
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, keepAliveIdle},
		{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, keepAliveInterval},
		{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, keepAliveCount},
	} {
		if err := unix.SetsockoptInt(fd, o.level, o.opt, o.val); err != nil {
			return os.NewSyscallError("setsockopt", err)
		}
	}
	return nil
}

// accept waits for the next connection on the listener.
func (t *tcpPort) accept() (tcpSock, error) {
	rc, err := t.ln.SyscallConn()
	if err != nil {
		return nil, err
	}
	nfd := -1
	var aerr error
	err = rc.Read(func(fd uintptr) bool {
		for {
			r, _, e := unix.Syscall6(unix.SYS_ACCEPT4, fd, 0, 0, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
			switch e {
			case 0:
				nfd, aerr = int(r), nil
				return true
			case unix.EINTR, unix.ECONNABORTED: // a connection reset while queued: take the next
				continue
			case unix.EAGAIN:
				return false
			default:
				aerr = os.NewSyscallError("accept4", e)
				return true
			}
		}
	})
	if err != nil {
		return nil, err
	}
	if aerr != nil {
		return nil, aerr
	}
	return os.NewFile(uintptr(nfd), "tcp"), nil
}

// dialAddr connects to addr within the dial timeout and returns the socket,
// tracked; closing the port closes it, which aborts the connect.
func (t *tcpPort) dialAddr(addr netip.AddrPort) (tcpSock, error) {
	sa, family := sockaddrOf(addr)
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	if err := setStreamOptions(fd); err != nil {
		_ = unix.Close(fd)
		return nil, err
	}
	connected := false
	for {
		err = unix.Connect(fd, sa)
		if err != unix.EINTR {
			break
		}
	}
	switch err {
	case nil, unix.EISCONN:
		connected = true
	case unix.EINPROGRESS, unix.EALREADY:
	default:
		_ = unix.Close(fd)
		return nil, os.NewSyscallError("connect", err)
	}
	// Registered with the poller only now: before connect, a new socket
	// polls as hung up and would wake the wait below for nothing.
	f := os.NewFile(uintptr(fd), "tcp")
	if !t.track(f) {
		return nil, net.ErrClosed
	}
	if connected {
		return f, nil
	}
	if err := waitConnected(f, t.cfg.DialTimeout); err != nil {
		t.untrack(f)
		return nil, err
	}
	return f, nil
}

// waitConnected waits until f's connect has finished, at most timeout. It
// checks first, without parking: on loopback and bridge networks the
// handshake has usually completed inside the connect call.
func waitConnected(f *os.File, timeout time.Duration) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	if err := f.SetWriteDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	var cerr error
	err = rc.Write(func(fd uintptr) bool {
		pfd := [1]unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		for {
			n, e := unix.Poll(pfd[:], 0)
			switch {
			case e == unix.EINTR:
				continue
			case e != nil:
				cerr = os.NewSyscallError("poll", e)
				return true
			case n == 0:
				return false // still connecting: wait for the poller
			}
			break
		}
		v, e := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		switch {
		case e != nil:
			cerr = os.NewSyscallError("getsockopt", e)
		case v != 0:
			cerr = os.NewSyscallError("connect", syscall.Errno(v))
		case pfd[0].Revents&unix.POLLOUT == 0:
			// Hung up with no error recorded: not connected.
			cerr = os.NewSyscallError("connect", unix.ECONNRESET)
		}
		return true
	})
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	if cerr != nil {
		return cerr
	}
	return f.SetWriteDeadline(time.Time{})
}

func sockaddrOf(a netip.AddrPort) (unix.Sockaddr, int) {
	ip := a.Addr()
	if ip.Is4() || ip.Is4In6() {
		return &unix.SockaddrInet4{Port: int(a.Port()), Addr: ip.Unmap().As4()}, unix.AF_INET
	}
	sa := &unix.SockaddrInet6{Port: int(a.Port()), Addr: ip.As16()}
	if z := ip.Zone(); z != "" {
		if ifi, err := net.InterfaceByName(z); err == nil {
			sa.ZoneId = uint32(ifi.Index)
		} else if n, err := strconv.ParseUint(z, 10, 32); err == nil {
			sa.ZoneId = uint32(n)
		}
	}
	return sa, unix.AF_INET6
}

// proxy copies both directions. When one direction reaches EOF its
// destination's write side is shut (half-close) and the other direction
// goes on; an error in either direction aborts both. The direction that
// ends last does not shut its destination: both sockets are closed right
// after, which sends the same FIN since everything has been read.
func (t *tcpPort) proxy(client, backend tcpSock) {
	var live atomic.Int32
	live.Store(2)
	oneWay := func(dst, src tcpSock) int64 {
		n, err := t.splice(dst, src)
		if err == nil && live.Add(-1) > 0 {
			err = shutdownWrite(dst)
		}
		if err != nil {
			_ = client.Close()
			_ = backend.Close()
		}
		return n
	}
	var wg sync.WaitGroup
	wg.Go(func() { t.metrics.bytesIn.Add(float64(oneWay(backend, client))) })
	t.metrics.bytesOut.Add(float64(oneWay(client, backend)))
	wg.Wait()
}

func shutdownWrite(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.Shutdown(int(fd), unix.SHUT_WR) }); err != nil {
		return err
	}
	return os.NewSyscallError("shutdown", serr)
}

// errSpliceStalled reports a splice from a non-empty pipe that moved nothing.
var errSpliceStalled = errors.New("ingress: splice moved no data")

// splice moves src to dst until EOF on src, through a pipe from the pool
// held only while it has data. It returns the bytes written to dst.
func (t *tcpPort) splice(dst, src tcpSock) (int64, error) {
	srcRC, err := src.SyscallConn()
	if err != nil {
		return 0, err
	}
	dstRC, err := dst.SyscallConn()
	if err != nil {
		return 0, err
	}
	var (
		p       *pipe
		written int64
		serr    error
		eof     bool
	)
	defer func() {
		if p != nil {
			t.pipes.put(p)
		}
	}()
	// fill moves what src has into the empty pipe. With the pipe empty,
	// EAGAIN can only mean src has nothing to read, so the pipe goes back
	// to the pool while the poller waits.
	fill := func(fd uintptr) bool {
		if p == nil {
			if p, serr = t.pipes.get(); serr != nil {
				return true
			}
		}
		for {
			n, e := unix.Splice(int(fd), nil, p.w, nil, p.size, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			switch e {
			case nil:
				p.data, eof = int(n), n == 0
				return true
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				t.pipes.put(p)
				p = nil
				return false
			default:
				serr = os.NewSyscallError("splice", e)
				return true
			}
		}
	}
	// pump moves everything in the pipe to dst.
	pump := func(fd uintptr) bool {
		for p.data > 0 {
			n, e := unix.Splice(p.r, nil, int(fd), nil, p.data, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			switch {
			case e == unix.EINTR:
				continue
			case e == unix.EAGAIN:
				return false
			case e != nil:
				serr = os.NewSyscallError("splice", e)
				return true
			case n == 0:
				serr = errSpliceStalled
				return true
			}
			p.data -= int(n)
			written += n
		}
		return true
	}
	for {
		if err := srcRC.Read(fill); err != nil {
			return written, err
		}
		if serr != nil || eof {
			return written, serr
		}
		if err := dstRC.Write(pump); err != nil {
			return written, err
		}
		if serr != nil {
			return written, serr
		}
	}
}

// pipe is a splice pipe; data is how many bytes are in it.
type pipe struct {
	r, w int
	size int
	data int
}

func newPipe() (*pipe, error) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return nil, os.NewSyscallError("pipe2", err)
	}
	p := &pipe{r: fds[0], w: fds[1], size: pipeSize}
	// A smaller pipe (the system's limit may refuse this size) still
	// works, with more calls.
	if n, err := unix.FcntlInt(uintptr(p.r), unix.F_SETPIPE_SZ, pipeSize); err == nil {
		p.size = n
	} else if n, err := unix.FcntlInt(uintptr(p.r), unix.F_GETPIPE_SZ, 0); err == nil {
		p.size = n
	} else {
		p.size = 64 << 10
	}
	return p, nil
}

func (p *pipe) close() {
	_ = unix.Close(p.r)
	_ = unix.Close(p.w)
}

// pipePool keeps a port's idle splice pipes. Safe for concurrent use.
type pipePool struct {
	mu     sync.Mutex
	idle   []*pipe
	closed bool
}

func (pp *pipePool) get() (*pipe, error) {
	pp.mu.Lock()
	if n := len(pp.idle); n > 0 {
		p := pp.idle[n-1]
		pp.idle = pp.idle[:n-1]
		pp.mu.Unlock()
		return p, nil
	}
	pp.mu.Unlock()
	return newPipe()
}

// put returns p for reuse, or closes it if it still holds data (an aborted
// transfer) or the pool is full or drained.
func (pp *pipePool) put(p *pipe) {
	if p.data == 0 {
		pp.mu.Lock()
		if !pp.closed && len(pp.idle) < maxIdlePipes() {
			pp.idle = append(pp.idle, p)
			pp.mu.Unlock()
			return
		}
		pp.mu.Unlock()
	}
	p.close()
}

// drain closes the idle pipes; later puts close theirs.
func (pp *pipePool) drain() {
	pp.mu.Lock()
	idle := pp.idle
	pp.idle, pp.closed = nil, true
	pp.mu.Unlock()
	for _, p := range idle {
		p.close()
	}
}
