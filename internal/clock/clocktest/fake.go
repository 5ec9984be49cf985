// Package clocktest provides a fake clock.Clock that moves only when a test
// advances it, for driving control loops deterministically without a
// cluster and without waiting.
package clocktest

import (
	"context"
	"sync"
	"time"

	"github.com/shoalhq/shoal/internal/clock"
)

// Fake is a clock.Clock whose time moves only by Advance. It is safe for
// concurrent use; its timers follow clock.Timer's contract.
type Fake struct {
	mu     sync.Mutex
	now    time.Time
	timers map[*fakeTimer]struct{} // armed timers; guarded by mu
	armed  chan struct{}           // closed and replaced whenever a timer is armed; guarded by mu
}

// NewFake returns a fake clock that reads a fixed, arbitrary instant.
func NewFake() *Fake {
	return &Fake{now: time.Unix(1_700_000_000, 0), timers: map[*fakeTimer]struct{}{}, armed: make(chan struct{})}
}

// Now returns the fake time.
func (c *Fake) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// NewTimer returns a timer that fires once the fake time reaches d from now
// (at once if d <= 0).
func (c *Fake) NewTimer(d time.Duration) clock.Timer {
	t := &fakeTimer{c: c, ch: make(chan time.Time, 1)}
	t.Reset(d)
	return t
}

// Advance moves the fake time forward by d and fires every timer that is
// then due, earliest first.
func (c *Fake) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	for t := range c.timers {
		if !t.at.After(c.now) {
			delete(c.timers, t)
			select {
			case t.ch <- c.now:
			default:
			}
		}
	}
}

// Timers returns how many timers are armed.
func (c *Fake) Timers() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// WaitTimers blocks until at least n timers are armed (a loop has gone back
// to waiting), or ctx ends; it reports whether they were.
func (c *Fake) WaitTimers(ctx context.Context, n int) bool {
	for {
		c.mu.Lock()
		count, armed := len(c.timers), c.armed
		c.mu.Unlock()
		if count >= n {
			return true
		}
		select {
		case <-armed:
		case <-ctx.Done():
			return false
		}
	}
}

type fakeTimer struct {
	c  *Fake
	at time.Time // guarded by c.mu
	ch chan time.Time
}

func (t *fakeTimer) C() <-chan time.Time { return t.ch }

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	_, ok := t.c.timers[t]
	delete(t.c.timers, t)
	t.drain()
	return ok
}

// drain discards a firing not received yet, as Go's timers do on Stop and
// Reset since Go 1.23. c.mu must be held.
func (t *fakeTimer) drain() {
	select {
	case <-t.ch:
	default:
	}
}

func (t *fakeTimer) Reset(d time.Duration) {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	t.at = t.c.now.Add(d)
	t.drain()
	if d <= 0 {
		delete(t.c.timers, t)
		select {
		case t.ch <- t.c.now:
		default:
		}
		return
	}
	t.c.timers[t] = struct{}{}
	close(t.c.armed)
	t.c.armed = make(chan struct{})
}

var _ clock.Clock = (*Fake)(nil)
