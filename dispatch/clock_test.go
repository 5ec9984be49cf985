package dispatch

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/internal/clock/clocktest"
	"github.com/shoalhq/shoal/runtime/runtimetest"
)

// recordingClock is a fake clock that also hands every timer's duration to
// the test, so it can tell which wait a loop has begun.
type recordingClock struct {
	*clocktest.Fake
	timers chan time.Duration
}

func (c *recordingClock) NewTimer(d time.Duration) Timer {
	t := c.Fake.NewTimer(d)
	select {
	case c.timers <- d:
	default: // the test only looks at the first few
	}
	return t
}

// nextTimer returns the duration of the next timer made whose duration is
// in [lo, hi].
func (c *recordingClock) nextTimer(t *testing.T, lo, hi time.Duration) time.Duration {
	t.Helper()
	deadline := time.After(waitFor)
	for {
		select {
		case d := <-c.timers:
			if d >= lo && d <= hi {
				return d
			}
		case <-deadline:
			t.Fatalf("no timer in [%v, %v] was made", lo, hi)
			return 0
		}
	}
}

// The agent's reconnection back-off waits on its Clock: it tries the next
// manager when the clock has moved by the back-off, not before, and not
// because real time passed.
func TestAgentBackoffWaitsOnClock(t *testing.T) {
	clk := &recordingClock{Fake: clocktest.NewFake(), timers: make(chan time.Duration, 64)}
	var attempts atomic.Int32
	cfg := agentConfig("n1", func() []string {
		attempts.Add(1) // once per connection attempt
		return []string{"manager.invalid:4242"}
	}, runtimetest.New())
	cfg.Clock = clk
	cfg.BackoffMin, cfg.BackoffMax = time.Minute, time.Minute
	cfg.RPCTimeout = time.Hour // the session-opening timer, told apart from the back-off
	cfg.Dial = func(context.Context, string) (net.Conn, error) { return nil, errors.New("refused") }
	startAgent(t, cfg)

	// The first attempt fails; the back-off is 30s to 60s (equal jitter).
	d := clk.nextTimer(t, cfg.BackoffMax/2, cfg.BackoffMax)
	require.Equal(t, int32(1), attempts.Load())
	require.True(t, clk.WaitTimers(t.Context(), 1))

	clk.Advance(d - time.Millisecond)
	assert.Equal(t, 1, clk.Timers(), "the back-off must still be waiting")
	assert.Equal(t, int32(1), attempts.Load(), "no attempt before the back-off ends")

	clk.Advance(time.Millisecond)
	require.Eventually(t, func() bool { return attempts.Load() == 2 }, waitFor, tick,
		"the agent must try again once the clock has moved by the back-off")
}

// withTimeout ends its context when the clock has moved by the timeout,
// not before; cancel ends it at once and releases the timer.
func TestWithTimeoutOnClock(t *testing.T) {
	clk := clocktest.NewFake()
	ctx, cancel := withTimeout(context.Background(), clk, time.Second)
	defer cancel()
	require.Equal(t, 1, clk.Timers())
	clk.Advance(time.Second - time.Nanosecond)
	assert.Equal(t, 1, clk.Timers(), "the timeout must still be waiting")
	assert.NoError(t, ctx.Err())
	clk.Advance(time.Nanosecond)
	select {
	case <-ctx.Done():
	case <-time.After(waitFor):
		t.Fatal("the context did not end when the clock reached the timeout")
	}
	assert.ErrorIs(t, context.Cause(ctx), context.DeadlineExceeded)

	ctx, cancel = withTimeout(context.Background(), clk, time.Hour)
	cancel()
	assert.ErrorIs(t, ctx.Err(), context.Canceled)
	assert.NotErrorIs(t, context.Cause(ctx), context.DeadlineExceeded)
	require.Eventually(t, func() bool { return clk.Timers() == 0 }, waitFor, tick, "cancel releases the timer")
}
