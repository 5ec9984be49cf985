package shoaltest

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/shoalhq/shoal"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestNetworkCutAndHeal(t *testing.T) {
	nw := NewNetwork()
	lis, err := nw.Listen("10.0.0.1:1")
	require.NoError(t, err)
	defer lis.Close()
	_, err = nw.Listen("10.0.0.1:1")
	assert.Error(t, err, "one listener per address")

	accepted := make(chan error, 4)
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				_, err := io.Copy(c, c) // echo until the link breaks
				accepted <- err
				c.Close()
			}()
		}
	}()
	dial := nw.Dialer("10.0.0.2:1")
	ctx := context.Background()
	c, err := dial(ctx, "10.0.0.1:1")
	require.NoError(t, err)
	_, err = c.Write([]byte("ping"))
	require.NoError(t, err)
	buf := make([]byte, 4)
	_, err = io.ReadFull(c, buf)
	require.NoError(t, err)
	assert.Equal(t, "ping", string(buf))

	nw.Cut("10.0.0.1:1", "10.0.0.2:1")
	_, err = c.Read(buf)
	assert.Error(t, err, "open connections break when the link is cut")
	_, err = dial(ctx, "10.0.0.1:1")
	assert.True(t, errors.Is(err, ErrUnreachable))
	// Other nodes are not affected.
	c3, err := nw.Dialer("10.0.0.3:1")(ctx, "10.0.0.1:1")
	require.NoError(t, err)
	c3.Close()

	nw.Heal("10.0.0.1:1", "10.0.0.2:1")
	c2, err := dial(ctx, "10.0.0.1:1")
	require.NoError(t, err)
	c2.Close()
	_, err = dial(ctx, "10.0.0.9:1")
	assert.ErrorIs(t, err, ErrUnreachable)
}

func TestClusterCrashAndRestartNode(t *testing.T) {
	c := Start(t, Options{Workers: 2})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	w := c.Workers()[0]
	id := w.ID()
	require.NoError(t, w.Crash())
	assert.Nil(t, w.Shoal())
	assert.Equal(t, id, w.ID(), "the ID is read from the state dir while stopped")
	c.WaitFor("node down", func() bool {
		n, err := c.Client().GetNode(ctx, id)
		return err == nil && n.State == shoal.NodeDown
	})
	require.NoError(t, w.Restart())
	assert.Error(t, w.Restart(), "restarting a running node is refused")
	c.WaitFor("node ready again with the same ID", func() bool {
		n, err := c.Client().GetNode(ctx, id)
		return err == nil && n.State == shoal.NodeReady
	})
	assert.Equal(t, c.NodeByName(w.Name), w)
	assert.Equal(t, c.NodeByID(id), w)
}
