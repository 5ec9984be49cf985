package dispatch

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/shoalhq/shoal/internal/clock"
)

// Clock is the source of time for the dispatcher's deadlines and status
// batching and for every wait of the agent (heartbeats, back-off, RPC
// bounds, status batching, drains). It is injected so tests can control
// time; the default is the wall clock. The dispatcher's stall guard alone
// reads the real monotonic clock (a stall is real time this process did not
// run). Implementations are safe for concurrent use.
type Clock = clock.Clock

// Timer is a one-shot timer made by a Clock; one goroutine owns it.
type Timer = clock.Timer

// RealClock returns a Clock backed by package time.
func RealClock() Clock { return clock.Real() }

// withTimeout is context.WithTimeout measured on clk: the context ends when
// parent does, when d has passed on clk (its cause is then
// context.DeadlineExceeded), or when cancel is called. It carries no
// deadline, so a gRPC call bounded by it is cancelled by the client rather
// than timed out by the server. Call cancel when done: it ends the
// goroutine that owns the timer.
func withTimeout(parent context.Context, clk Clock, d time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(parent)
	t := clk.NewTimer(d)
	go func() {
		defer t.Stop()
		select {
		case <-t.C():
			cancel(context.DeadlineExceeded)
		case <-ctx.Done():
		}
	}()
	return ctx, func() { cancel(nil) }
}

// jitter returns d moved by a uniformly random amount in [-frac*d, +frac*d].
// frac <= 0 returns d unchanged.
func jitter(d time.Duration, frac float64) time.Duration {
	if frac <= 0 || d <= 0 {
		return d
	}
	span := float64(d) * frac
	return d + time.Duration((rand.Float64()*2-1)*span)
}

// backoff returns the delay before reconnection attempt n (0-based):
// min·2ⁿ capped at max, with "equal jitter" (half fixed, half random) so a
// crowd of agents that lost the same manager does not come back in lockstep,
// yet no agent retries sooner than half the nominal delay.
func backoff(n int, minD, maxD time.Duration) time.Duration {
	d := minD
	for i := 0; i < n && d < maxD; i++ {
		d *= 2
	}
	if d > maxD {
		d = maxD
	}
	if d <= 0 {
		return 0
	}
	half := d / 2
	return half + time.Duration(rand.Int64N(int64(half)+1))
}
