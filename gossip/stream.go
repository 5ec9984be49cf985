package gossip

import (
	"bufio"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// The table's own streams (anti-entropy and pulls) share serf's transport:
// every stream this package opens starts with streamMagic, a byte memberlist
// never uses as a message type, and muxTransport hands those streams to the
// table instead of memberlist.
const streamMagic byte = 0xd7

// packetMagic starts every packet this package sends (version digests) on
// serf's transport; memberlist never uses it as a message type, and
// muxTransport hands those packets to the table instead of memberlist.
const packetMagic byte = 0xd8

// maxFrame bounds one sync frame; 64 MiB is ~1 million endpoints.
const maxFrame = 64 << 20

// frameAAD binds sync frames to this use of the cluster key, so they can't
// be confused with memberlist's messages encrypted under the same key.
var frameAAD = []byte("shoal-gossip-sync-v1")

// digestAAD binds digest packets to their use of the cluster key.
var digestAAD = []byte("shoal-gossip-digest-v1")

// errPlaintext rejects unencrypted frames on an encrypted cluster.
var errPlaintext = errors.New("gossip: unencrypted sync frame refused")

// muxTransport wraps serf's transport and diverts the table's streams.
type muxTransport struct {
	memberlist.Transport
	streamCh     chan net.Conn
	packetCh     chan *memberlist.Packet
	handle       func(net.Conn)
	handlePacket func([]byte)
	timeout      time.Duration
	done         chan struct{}
	wg           sync.WaitGroup
}

func newMuxTransport(inner memberlist.Transport, timeout time.Duration, handle func(net.Conn), handlePacket func([]byte)) *muxTransport {
	m := &muxTransport{
		Transport:    inner,
		streamCh:     make(chan net.Conn),
		packetCh:     make(chan *memberlist.Packet, 1024),
		handle:       handle,
		handlePacket: handlePacket,
		timeout:      timeout,
		done:         make(chan struct{}),
	}
	m.wg.Add(2)
	go m.accept()
	go m.route()
	return m
}

func (m *muxTransport) StreamCh() <-chan net.Conn { return m.streamCh }

func (m *muxTransport) PacketCh() <-chan *memberlist.Packet { return m.packetCh }

// route diverts the table's packets and passes memberlist's on.
func (m *muxTransport) route() {
	defer m.wg.Done()
	in := m.Transport.PacketCh()
	for {
		select {
		case <-m.done:
			return
		case p := <-in:
			if len(p.Buf) > 0 && p.Buf[0] == packetMagic {
				m.handlePacket(p.Buf[1:])
				continue
			}
			select {
			case m.packetCh <- p:
			case <-m.done:
				return
			}
		}
	}
}

func (m *muxTransport) accept() {
	defer m.wg.Done()
	in := m.Transport.StreamCh()
	for {
		select {
		case <-m.done:
			return
		case c := <-in:
			m.wg.Add(1)
			go m.classify(c)
		}
	}
}

// classify reads a stream's first byte and routes it.
func (m *muxTransport) classify(c net.Conn) {
	defer m.wg.Done()
	var b [1]byte
	_ = c.SetReadDeadline(time.Now().Add(m.timeout))
	if _, err := io.ReadFull(c, b[:]); err != nil {
		_ = c.Close()
		return
	}
	if b[0] == streamMagic {
		m.handle(c)
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	select {
	case m.streamCh <- &prefixConn{Conn: c, prefix: b[:]}:
	case <-m.done:
		_ = c.Close()
	}
}

// close stops routing; call after memberlist has shut the inner transport down.
func (m *muxTransport) close() {
	close(m.done)
	m.wg.Wait()
}

// prefixConn returns already-read bytes before the rest of the stream.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (p *prefixConn) Read(b []byte) (int, error) {
	if len(p.prefix) > 0 {
		n := copy(b, p.prefix)
		p.prefix = p.prefix[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}

// framer reads and writes length-prefixed frames, sealed with AES-GCM under
// the cluster keyring's primary key when the cluster is encrypted (opened
// with any key in the ring, so rotation never splits the cluster).
type framer struct {
	keyring *memberlist.Keyring // nil: plaintext
}

func (f framer) write(w io.Writer, payload []byte) error {
	body, err := seal(f.keyring, frameAAD, nil, payload)
	if err != nil {
		return err
	}
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(body)))
	if _, err := w.Write(append(hdr[:], body...)); err != nil {
		return err
	}
	return nil
}

func (f framer) read(r io.Reader) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n < 1 || n > maxFrame {
		return nil, fmt.Errorf("%w: frame of %d bytes", errBad, n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, err
	}
	return open(f.keyring, frameAAD, body)
}

// seal appends to dst payload as a sealed body: a kind byte (0 plaintext, 1
// AES-GCM), then the nonce and ciphertext under kr's primary key, with aad.
func seal(kr *memberlist.Keyring, aad, dst, payload []byte) ([]byte, error) {
	if kr == nil {
		return append(append(dst, 0), payload...), nil
	}
	aead, err := newAEAD(kr.GetPrimaryKey())
	if err != nil {
		return nil, err
	}
	start := len(dst)
	body := append(dst, make([]byte, 1+aead.NonceSize())...)
	body[start] = 1
	nonce := body[start+1 : start+1+aead.NonceSize()]
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return aead.Seal(body, nonce, payload, aad), nil
}

// open reverses seal, trying every key in kr.
func open(kr *memberlist.Keyring, aad, body []byte) ([]byte, error) {
	if len(body) == 0 {
		return nil, errShort
	}
	switch {
	case body[0] == 0 && kr == nil:
		return body[1:], nil
	case body[0] == 0:
		return nil, errPlaintext
	case body[0] == 1 && kr != nil:
		for _, k := range kr.GetKeys() {
			aead, err := newAEAD(k)
			if err != nil {
				continue
			}
			if len(body) < 1+aead.NonceSize()+aead.Overhead() {
				return nil, errShort
			}
			nonce := body[1 : 1+aead.NonceSize()]
			if out, err := aead.Open(nil, nonce, body[1+aead.NonceSize():], aad); err == nil {
				return out, nil
			}
		}
		return nil, errors.New("gossip: sealed message fails to decrypt with any cluster key")
	default:
		return nil, fmt.Errorf("%w: frame kind %d", errBad, body[0])
	}
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	blk, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(blk)
}

// serveSync answers one sync stream (the magic byte already consumed).
func (n *Node) serveSync(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(n.cfg.StreamTimeout))
	r := bufio.NewReader(c)
	fr := framer{keyring: n.keyring}
	b, err := fr.read(r)
	if err != nil {
		n.log.Debug("gossip: sync request unreadable", "remote", c.RemoteAddr(), "err", err)
		return
	}
	req, err := decodeSyncRequest(b)
	if err != nil {
		n.log.Warn("gossip: bad sync request", "remote", c.RemoteAddr(), "err", err)
		return
	}
	full := req.Kind == syncFull
	reply := &syncReply{Records: n.tbl.newerThan(req.Digest, full)}
	if full {
		reply.Digest = n.tbl.digest()
	}
	if err := fr.write(c, encodeSyncReply(reply)); err != nil {
		n.log.Debug("gossip: sync reply failed", "remote", c.RemoteAddr(), "err", err)
		return
	}
	if !full {
		return
	}
	// The requester pushes back what it has newer.
	b, err = fr.read(r)
	if err != nil {
		if !errors.Is(err, io.EOF) {
			n.log.Debug("gossip: sync push unreadable", "remote", c.RemoteAddr(), "err", err)
		}
		return
	}
	push, err := decodeSyncReply(b)
	if err != nil {
		n.log.Warn("gossip: bad sync push", "remote", c.RemoteAddr(), "err", err)
		return
	}
	n.applyRecords(push.Records)
}

// syncWith runs one sync with the member at addr: a full two-way
// anti-entropy exchange if dg is nil, else a pull of the nodes named in dg.
func (n *Node) syncWith(addr string, dg map[string]uint64) error {
	full := dg == nil
	if full {
		dg = n.tbl.digest()
	}
	c, err := n.mux.DialTimeout(addr, n.cfg.StreamTimeout)
	if err != nil {
		return err
	}
	defer c.Close()
	if !n.track(c) {
		return ErrStopped
	}
	defer n.untrack(c)
	_ = c.SetDeadline(time.Now().Add(n.cfg.StreamTimeout))
	fr := framer{keyring: n.keyring}
	kind := syncPull
	if full {
		kind = syncFull
	}
	req := encodeSyncRequest(&syncRequest{Kind: kind, Digest: dg})
	if _, err := c.Write([]byte{streamMagic}); err != nil {
		return err
	}
	if err := fr.write(c, req); err != nil {
		return err
	}
	r := bufio.NewReader(c)
	b, err := fr.read(r)
	if err != nil {
		return err
	}
	reply, err := decodeSyncReply(b)
	if err != nil {
		return err
	}
	n.applyRecords(reply.Records)
	if !full {
		return nil
	}
	if reply.Digest == nil {
		return fmt.Errorf("%w: full sync reply without digest", errBad)
	}
	return fr.write(c, encodeSyncReply(&syncReply{Records: n.tbl.newerThan(reply.Digest, true)}))
}
