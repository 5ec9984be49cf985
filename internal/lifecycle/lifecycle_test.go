package lifecycle

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/shoalhq/shoal/internal/errdefs"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var errStarted = errors.New("x: already started")

func TestLoop(t *testing.T) {
	ctx := context.Background()
	var l Loop
	assert.Nil(t, l.Done(), "no goroutine before Start")
	ran := make(chan struct{})
	require.NoError(t, l.Start(ctx, "x", errStarted, func(ctx context.Context) { close(ran); <-ctx.Done() }))
	<-ran
	assert.ErrorIs(t, l.Start(ctx, "x", errStarted, func(context.Context) {}), errStarted)
	require.NoError(t, l.Stop(ctx))
	select {
	case <-l.Done():
	default:
		t.Fatal("the goroutine outlived Stop")
	}
	require.NoError(t, l.Stop(ctx), "Stop is idempotent")
	err := l.Start(ctx, "x", errStarted, func(context.Context) {})
	assert.ErrorIs(t, err, errdefs.ErrStopped)
	assert.ErrorContains(t, err, "x: start after stop")
}

func TestLoopStopBeforeStart(t *testing.T) {
	var l Loop
	require.NoError(t, l.Stop(context.Background()))
	assert.ErrorIs(t, l.Start(context.Background(), "x", errStarted, func(context.Context) {}), errdefs.ErrStopped)
}

func TestLoopStartContext(t *testing.T) {
	var l Loop
	done, cancel := context.WithCancel(context.Background())
	cancel()
	assert.ErrorIs(t, l.Start(done, "x", errStarted, func(context.Context) {}), context.Canceled, "an ended ctx starts nothing")
	assert.Nil(t, l.Done())

	// The start's ctx ending does not end the goroutine.
	ctx, cancel2 := context.WithCancel(context.Background())
	ended := make(chan struct{})
	require.NoError(t, l.Start(ctx, "x", errStarted, func(ctx context.Context) { <-ctx.Done(); close(ended) }))
	cancel2()
	select {
	case <-ended:
		t.Fatal("the goroutine ended with the start's context")
	case <-time.After(20 * time.Millisecond):
	}
	require.NoError(t, l.Stop(context.Background()))
	<-ended
}

func TestLoopStopBoundedByContext(t *testing.T) {
	var l Loop
	release := make(chan struct{})
	require.NoError(t, l.Start(context.Background(), "x", errStarted, func(context.Context) { <-release }))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	assert.ErrorIs(t, l.Stop(ctx), context.Canceled, "Stop returns when its ctx ends")
	close(release)
	<-l.Done()
}
