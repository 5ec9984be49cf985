//go:build !linux

package ingress

import (
	"net"
	"net/netip"
	"sync"
	"syscall"
)

// tcpSock is one proxied socket. Elsewhere than Linux it is a *net.TCPConn,
// whose ReadFrom copies through the standard library's best path.
type tcpSock = *net.TCPConn

// tcpListener is the published port's listening socket.
type tcpListener = *net.TCPListener

func adoptListener(ln *net.TCPListener) (tcpListener, error) { return ln, nil }

// listenControl leaves the listening socket as the standard library makes it.
var listenControl func(network, address string, c syscall.RawConn) error

// listenKeepAlive 0 keeps the standard library's keep-alive defaults on
// accepted connections.
const listenKeepAlive = 0

// pipePool is empty here: there are no splice pipes to keep.
type pipePool struct{}

func (*pipePool) drain() {}

func (t *tcpPort) accept() (tcpSock, error) { return t.ln.AcceptTCP() }

// dialAddr connects to addr and tracks the connection. Closing the port
// cancels t.ctx, which aborts the dial.
func (t *tcpPort) dialAddr(addr netip.AddrPort) (tcpSock, error) {
	d := net.Dialer{Timeout: t.cfg.DialTimeout}
	c, err := d.DialContext(t.ctx, "tcp", addr.String())
	if err != nil {
		return nil, err
	}
	tc := c.(*net.TCPConn)
	if !t.track(tc) {
		return nil, net.ErrClosed
	}
	return tc, nil
}

// proxy copies both directions. When one direction reaches EOF its
// destination's write side is shut (half-close) and the other direction
// goes on; an error in either direction aborts both.
func (t *tcpPort) proxy(client, backend tcpSock) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		n, err := copyOneWay(backend, client)
		t.metrics.bytesIn.Add(float64(n))
		if err != nil {
			_ = client.Close()
			_ = backend.Close()
		}
	}()
	n, err := copyOneWay(client, backend)
	t.metrics.bytesOut.Add(float64(n))
	if err != nil {
		_ = client.Close()
		_ = backend.Close()
	}
	wg.Wait()
}

// copyOneWay copies src to dst until EOF, then shuts dst's write side.
// Taking concrete *net.TCPConn values keeps the standard library on its
// zero-copy path where the platform has one.
func copyOneWay(dst, src *net.TCPConn) (int64, error) {
	n, err := dst.ReadFrom(src)
	if err != nil {
		return n, err
	}
	return n, dst.CloseWrite()
}
