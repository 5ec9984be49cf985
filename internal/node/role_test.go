package node

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/internal/clock/clocktest"
)

// roleHarness runs a roleChanger on a fake clock with scripted promote and
// demote.
type roleHarness struct {
	t     *testing.T
	clock *clocktest.Fake
	r     *roleChanger

	mu       sync.Mutex
	manager  bool
	promotes []uint64 // raft IDs promote was called with
	demotes  int
	failNext error
	block    bool // promote waits for its ctx

	calls  chan string
	cancel context.CancelFunc
	done   chan struct{}
}

const roleRetry = time.Second

func newRoleHarness(t *testing.T) *roleHarness {
	h := &roleHarness{t: t, clock: clocktest.NewFake(), calls: make(chan string, 16), done: make(chan struct{})}
	h.r = newRoleChanger(h.clock, roleRetry, slog.New(slog.DiscardHandler))
	h.r.isManager = func() bool { h.mu.Lock(); defer h.mu.Unlock(); return h.manager }
	h.r.promote = func(ctx context.Context, w *roleWant) error {
		h.mu.Lock()
		h.promotes = append(h.promotes, w.raftID)
		err, block := h.failNext, h.block
		h.failNext = nil
		h.mu.Unlock()
		h.calls <- "promote"
		if block {
			<-ctx.Done()
			return ctx.Err()
		}
		if err != nil {
			return err
		}
		h.mu.Lock()
		h.manager = true
		h.mu.Unlock()
		return nil
	}
	h.r.demote = func(context.Context) error {
		h.mu.Lock()
		h.demotes++
		err := h.failNext
		h.failNext = nil
		if err == nil {
			h.manager = false
		}
		h.mu.Unlock()
		h.calls <- "demote"
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { defer close(h.done); h.r.run(ctx) }()
	t.Cleanup(h.stop)
	return h
}

func (h *roleHarness) stop() {
	h.cancel()
	<-h.done
}

// next waits for the next promote or demote call.
func (h *roleHarness) next() string {
	h.t.Helper()
	select {
	case c := <-h.calls:
		return c
	case <-time.After(10 * time.Second):
		h.t.Fatal("no role change was applied")
		return ""
	}
}

// none checks that no role change runs (the loop is back waiting).
func (h *roleHarness) none() {
	h.t.Helper()
	select {
	case c := <-h.calls:
		h.t.Fatalf("unexpected %s", c)
	case <-time.After(50 * time.Millisecond):
	}
}

// waitRetryArmed waits until the loop armed its retry timer.
func (h *roleHarness) waitRetryArmed() {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.True(h.t, h.clock.WaitTimers(ctx, 1), "the retry timer was not armed")
}

func TestRoleChangerPromotesAndDemotes(t *testing.T) {
	h := newRoleHarness(t)
	h.r.set(roleWant{manager: true, raftID: 7})
	assert.Equal(t, "promote", h.next())
	h.r.set(roleWant{manager: true, raftID: 7})
	h.none() // already a manager: nothing to do
	h.r.set(roleWant{manager: false})
	assert.Equal(t, "demote", h.next())
	h.r.set(roleWant{manager: false})
	h.none() // already a worker
	assert.Equal(t, []uint64{7}, h.promotes)
	assert.Equal(t, 1, h.demotes)
}

func TestRoleChangerRetriesOnTheClock(t *testing.T) {
	h := newRoleHarness(t)
	h.mu.Lock()
	h.failNext = errors.New("no leader")
	h.mu.Unlock()
	h.r.set(roleWant{manager: true, raftID: 3})
	assert.Equal(t, "promote", h.next())
	h.waitRetryArmed()
	h.clock.Advance(roleRetry - time.Millisecond)
	h.none() // not before the retry delay
	h.clock.Advance(time.Millisecond)
	assert.Equal(t, "promote", h.next(), "the failed promotion is tried again after the delay")
	h.none()
	assert.Equal(t, []uint64{3, 3}, h.promotes)
	assert.Equal(t, 0, h.clock.Timers(), "a change that worked arms no retry")
}

func TestRoleChangerNewerWishReplacesAFailedOne(t *testing.T) {
	h := newRoleHarness(t)
	h.mu.Lock()
	h.failNext = errors.New("no leader")
	h.mu.Unlock()
	h.r.set(roleWant{manager: true, raftID: 3})
	assert.Equal(t, "promote", h.next())
	h.waitRetryArmed()
	h.r.set(roleWant{manager: true, raftID: 4})
	assert.Equal(t, "promote", h.next(), "a new wish runs at once, without waiting for the retry")
	h.clock.Advance(roleRetry)
	h.none() // the failed wish was replaced, not retried
	assert.Equal(t, []uint64{3, 4}, h.promotes)
}

func TestRoleChangerDemotionCancelsPromotion(t *testing.T) {
	h := newRoleHarness(t)
	h.mu.Lock()
	h.block = true
	h.mu.Unlock()
	h.r.set(roleWant{manager: true, raftID: 5})
	assert.Equal(t, "promote", h.next())
	h.r.set(roleWant{manager: false}) // cancels the promotion in progress
	// The promotion returns its context's error; the node is still a
	// worker, so the demotion has nothing to do and nothing is retried.
	h.none()
	h.clock.Advance(roleRetry)
	h.none()
	assert.Equal(t, 0, h.demotes)
}

func TestRoleChangerEndsWithItsContext(t *testing.T) {
	h := newRoleHarness(t)
	h.stop()
	h.r.set(roleWant{manager: true, raftID: 1}) // set never blocks
	h.none()
}
