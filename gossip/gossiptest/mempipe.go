package gossiptest

import (
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// pipeBuf is one direction of an in-memory stream. Unlike net.Pipe, writes
// never wait for the reader, like a TCP socket's send buffer: memberlist
// (and anyone speaking a request/response protocol) may write while the
// peer is also writing.
type pipeBuf struct {
	mu       sync.Mutex
	buf      []byte
	closed   bool // writer side closed: EOF after the buffer drains
	deadline time.Time
	signal   chan struct{} // capacity 1: something changed
}

func newPipeBuf() *pipeBuf { return &pipeBuf{signal: make(chan struct{}, 1)} }

func (p *pipeBuf) wake() {
	select {
	case p.signal <- struct{}{}:
	default:
	}
}

func (p *pipeBuf) write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return 0, io.ErrClosedPipe
	}
	p.buf = append(p.buf, b...)
	p.wake()
	return len(b), nil
}

func (p *pipeBuf) read(b []byte) (int, error) {
	for {
		p.mu.Lock()
		if len(p.buf) > 0 {
			n := copy(b, p.buf)
			p.buf = p.buf[n:]
			p.mu.Unlock()
			return n, nil
		}
		if p.closed {
			p.mu.Unlock()
			return 0, io.EOF
		}
		dl := p.deadline
		p.mu.Unlock()
		var timer *time.Timer
		var timeout <-chan time.Time
		if !dl.IsZero() {
			d := time.Until(dl)
			if d <= 0 {
				return 0, os.ErrDeadlineExceeded
			}
			timer = time.NewTimer(d)
			timeout = timer.C
		}
		select {
		case <-p.signal:
		case <-timeout:
		}
		if timer != nil {
			timer.Stop() // not deferred: each wait of this loop makes its own
		}
	}
}

func (p *pipeBuf) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	p.wake()
}

func (p *pipeBuf) setDeadline(t time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.deadline = t
	p.wake()
}

// memConn is one end of an in-memory stream.
type memConn struct {
	in, out       *pipeBuf
	local, remote net.Addr
	once          sync.Once
}

// memPipe returns the two ends of a buffered in-memory stream.
func memPipe(a, b net.Addr) (*memConn, *memConn) {
	ab, ba := newPipeBuf(), newPipeBuf()
	return &memConn{in: ba, out: ab, local: a, remote: b}, &memConn{in: ab, out: ba, local: b, remote: a}
}

func (c *memConn) Read(b []byte) (int, error)  { return c.in.read(b) }
func (c *memConn) Write(b []byte) (int, error) { return c.out.write(b) }

// Close ends both directions: the peer reads EOF after what was sent.
func (c *memConn) Close() error {
	c.once.Do(func() {
		c.out.close()
		c.in.close()
	})
	return nil
}

func (c *memConn) LocalAddr() net.Addr  { return c.local }
func (c *memConn) RemoteAddr() net.Addr { return c.remote }

func (c *memConn) SetDeadline(t time.Time) error {
	c.in.setDeadline(t)
	return nil
}
func (c *memConn) SetReadDeadline(t time.Time) error {
	c.in.setDeadline(t)
	return nil
}

// SetWriteDeadline is accepted and ignored: writes never block.
func (c *memConn) SetWriteDeadline(time.Time) error { return nil }
