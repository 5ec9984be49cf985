package gossiptest

import (
	"io"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPacketsLossAndIsolation(t *testing.T) {
	n := NewMemNetwork(1)
	a, b := n.NewTransport(), n.NewTransport()
	require.NotEqual(t, a.Addr(), b.Addr())

	_, err := a.WriteTo([]byte("hi"), b.Addr())
	require.NoError(t, err)
	p := <-b.PacketCh()
	assert.Equal(t, "hi", string(p.Buf))
	assert.Equal(t, a.Addr(), p.From.String())

	n.SetLoss(1)
	_, err = a.WriteTo([]byte("lost"), b.Addr())
	require.NoError(t, err, "like UDP, loss is silent")
	n.SetLoss(0)
	n.Isolate(b.Addr(), true)
	_, err = a.WriteTo([]byte("cut"), b.Addr())
	require.NoError(t, err)
	_, err = a.DialTimeout(b.Addr(), time.Second)
	assert.ErrorIs(t, err, errRefused, "no new stream to an isolated member")
	n.Isolate(b.Addr(), false)
	assert.Empty(t, b.PacketCh())
	assert.Equal(t, MemStats{Packets: 3, Dropped: 2, MaxPacket: 4}, n.Stats())

	require.NoError(t, b.Shutdown())
	_, err = a.DialTimeout(b.Addr(), time.Second)
	assert.ErrorIs(t, err, errRefused, "no stream to a member that left")
}

func TestStreams(t *testing.T) {
	n := NewMemNetwork(1)
	a, b := n.NewTransport(), n.NewTransport()
	c, err := a.DialTimeout(b.Addr(), time.Second)
	require.NoError(t, err)
	s := <-b.StreamCh()
	assert.Equal(t, a.Addr(), s.RemoteAddr().String())

	// Both ends write before either reads: writes never wait for the reader.
	_, err = c.Write([]byte("ping"))
	require.NoError(t, err)
	_, err = s.Write([]byte("pong"))
	require.NoError(t, err)
	buf := make([]byte, 4)
	_, err = io.ReadFull(s, buf)
	require.NoError(t, err)
	assert.Equal(t, "ping", string(buf))
	_, err = io.ReadFull(c, buf)
	require.NoError(t, err)
	assert.Equal(t, "pong", string(buf))

	require.NoError(t, s.SetReadDeadline(time.Now().Add(10*time.Millisecond)))
	_, err = s.Read(buf)
	assert.ErrorIs(t, err, os.ErrDeadlineExceeded)
	require.NoError(t, s.SetReadDeadline(time.Time{}))

	// The peer reads what was sent, then EOF.
	_, err = c.Write([]byte("bye"))
	require.NoError(t, err)
	require.NoError(t, c.Close())
	rest, err := io.ReadAll(s)
	require.NoError(t, err)
	assert.Equal(t, "bye", string(rest))
	_, err = c.Write([]byte("x"))
	assert.ErrorIs(t, err, io.ErrClosedPipe)
}
