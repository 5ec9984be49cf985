package manager

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/internal/clock/clocktest"
)

// exchangeWait bounds each exchange with the loop; only a stuck or wrong
// loop reaches it.
const exchangeWait = 10 * time.Second

// roleHarness runs a roleCheck on a fake clock. hasLeader and stillManager
// block until the test answers them, so every election timeout is one
// lock-step exchange between the loop and the test, and a call the test
// does not expect is seen, not raced.
type roleHarness struct {
	t        *testing.T
	clk      *clocktest.Fake
	election time.Duration
	leader   chan bool          // the answer to the pending hasLeader call
	asked    chan time.Duration // each stillManager call, with its timeout
	still    chan bool          // the answer to the pending stillManager call
	asks     atomic.Int32       // stillManager calls, those cut short by ctx included
	demoted  atomic.Int32       // notManager calls
	cancel   context.CancelFunc
	done     chan struct{} // closed when run returns
}

func startRoleCheck(t *testing.T, election time.Duration) *roleHarness {
	t.Helper()
	h := &roleHarness{
		t:        t,
		clk:      clocktest.NewFake(),
		election: election,
		leader:   make(chan bool),
		asked:    make(chan time.Duration),
		still:    make(chan bool),
		done:     make(chan struct{}),
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	rc := &roleCheck{
		clock:    h.clk,
		election: election,
		hasLeader: func(ctx context.Context) bool {
			select {
			case v := <-h.leader:
				return v
			case <-ctx.Done():
				return false
			}
		},
		stillManager: func(ctx context.Context, timeout time.Duration) bool {
			h.asks.Add(1)
			select {
			case h.asked <- timeout:
			case <-ctx.Done():
				return true // as Manager.stillManager: no answer is not "not a manager"
			}
			select {
			case v := <-h.still:
				return v
			case <-ctx.Done():
				return true
			}
		},
		notManager: func() { h.demoted.Add(1) },
	}
	go func() {
		defer close(h.done)
		rc.run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-h.done:
		case <-time.After(exchangeWait):
			t.Error("run did not return after its context ended")
		}
	})
	return h
}

// tick lets one election timeout pass once the loop waits for it, and
// answers the loop's hasLeader call with leader. It fails if the loop asks
// stillManager or returns instead.
func (h *roleHarness) tick(leader bool) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), exchangeWait)
	defer cancel()
	// The loop arms its only timer again once a round is over: one armed
	// timer means the loop is back waiting, with the previous round done.
	require.True(h.t, h.clk.WaitTimers(ctx, 1), "the loop never armed its timer")
	h.clk.Advance(h.election)
	select {
	case h.leader <- leader:
	case d := <-h.asked:
		require.Failf(h.t, "stillManager asked too early", "asked (timeout %v) before the next hasLeader", d)
	case <-h.done:
		require.Fail(h.t, "run returned instead of asking hasLeader")
	case <-ctx.Done():
		require.Fail(h.t, "hasLeader was not called after an election timeout")
	}
}

// ask expects the loop to ask stillManager now, answers it with still and
// returns the timeout the loop gave.
func (h *roleHarness) ask(still bool) time.Duration {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), exchangeWait)
	defer cancel()
	var d time.Duration
	select {
	case d = <-h.asked:
	case <-h.done:
		require.Fail(h.t, "run returned instead of asking stillManager")
	case <-ctx.Done():
		require.Fail(h.t, "stillManager was not asked")
	}
	select {
	case h.still <- still:
	case <-ctx.Done():
		require.Fail(h.t, "stillManager's answer was not taken")
	}
	return d
}

// waitDone waits for run to return on its own.
func (h *roleHarness) waitDone() {
	h.t.Helper()
	select {
	case <-h.done:
	case <-time.After(exchangeWait):
		require.Fail(h.t, "run did not return")
	}
}

// stop ends run's context and waits for it to return.
func (h *roleHarness) stop() {
	h.t.Helper()
	h.cancel()
	h.waitDone()
}

// TestRoleCheckScripts drives the loop one election timeout at a time. In a
// script, L is an election timeout with a leader, "." one without a leader
// and no question, y one without a leader after which the loop asks and
// hears "still a manager", n the same with "not a manager" (last).
func TestRoleCheckScripts(t *testing.T) {
	tests := []struct {
		name   string
		script string
	}{
		{"asks after three election timeouts without a leader", "...y"},
		{"does not ask before three election timeouts", "..."},
		{"never asks while a leader is heard", "LLLLLLLLLLLL"},
		{"a leader heard for one election timeout resets the leaderless time", "...L...y"},
		{"a leader heard just before the threshold resets it", "..L...y"},
		{"leaderless then a leader for good", "..LLLLLLLL"},
		{"asks again after another three election timeouts when still a manager", "...y..y..y"},
		{"a leader after an answer resets the leaderless time", "...y.L...y"},
		{"not a manager ends the check", "...n"},
		{"not a manager after being still a manager", "...y..n"},
		{"not a manager after a leader came and went", ".L...y..n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := startRoleCheck(t, time.Second)
			wantAsks := int32(0)
			for _, s := range tt.script {
				switch s {
				case 'L':
					h.tick(true)
				case '.':
					h.tick(false)
				case 'y', 'n':
					h.tick(false)
					h.ask(s == 'y')
					wantAsks++
				default:
					require.Failf(t, "bad script", "step %q", s)
				}
			}
			if strings.HasSuffix(tt.script, "n") {
				h.waitDone()
				assert.Equal(t, int32(1), h.demoted.Load(), "notManager calls")
				assert.Zero(t, h.clk.Timers(), "run left its timer armed")
			} else {
				h.stop()
				assert.Zero(t, h.demoted.Load(), "notManager calls")
			}
			assert.Equal(t, wantAsks, h.asks.Load(), "stillManager calls")
		})
	}
}

// TestRoleCheckNotManagerStopsTheLoop checks that after "not a manager" the
// loop neither asks nor calls notManager again, however long time runs on.
func TestRoleCheckNotManagerStopsTheLoop(t *testing.T) {
	h := startRoleCheck(t, time.Second)
	for range 3 {
		h.tick(false)
	}
	h.tick(false)
	h.ask(false)
	h.waitDone()
	for range 10 {
		h.clk.Advance(time.Second)
	}
	assert.Equal(t, int32(1), h.demoted.Load())
	assert.Equal(t, int32(1), h.asks.Load())
	assert.Zero(t, h.clk.Timers())
}

// TestRoleCheckStillManagerTimeout checks the bound given to each question:
// an election timeout, but at least 3s for the new mTLS connections.
func TestRoleCheckStillManagerTimeout(t *testing.T) {
	tests := []struct {
		election time.Duration
		want     time.Duration
	}{
		{100 * time.Millisecond, 3 * time.Second},
		{time.Second, 3 * time.Second},
		{3 * time.Second, 3 * time.Second},
		{5 * time.Second, 5 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.election.String(), func(t *testing.T) {
			h := startRoleCheck(t, tt.election)
			for range 3 {
				h.tick(false)
			}
			h.tick(false)
			assert.Equal(t, tt.want, h.ask(true))
			h.stop()
		})
	}
}

// TestRoleCheckReturnsOnCancel ends the context at each place the loop can
// be: waiting for its timer, in hasLeader, in stillManager. It returns
// without calling notManager.
func TestRoleCheckReturnsOnCancel(t *testing.T) {
	tests := []struct {
		name     string
		before   func(h *roleHarness)
		wantAsks int32
	}{
		{"before the first election timeout", func(h *roleHarness) {
			ctx, cancel := context.WithTimeout(context.Background(), exchangeWait)
			defer cancel()
			require.True(h.t, h.clk.WaitTimers(ctx, 1))
		}, 0},
		{"waiting for the timer while a leader is heard", func(h *roleHarness) {
			h.tick(true)
			h.tick(true)
		}, 0},
		{"waiting for the timer while leaderless", func(h *roleHarness) {
			h.tick(false)
			h.tick(false)
		}, 0},
		{"waiting for the timer after still a manager", func(h *roleHarness) {
			for range 3 {
				h.tick(false)
			}
			h.tick(false)
			h.ask(true)
		}, 1},
		{"in hasLeader", func(h *roleHarness) {
			ctx, cancel := context.WithTimeout(context.Background(), exchangeWait)
			defer cancel()
			require.True(h.t, h.clk.WaitTimers(ctx, 1))
			h.clk.Advance(h.election) // the loop takes the firing: in or before hasLeader (its timer is disarmed until the round ends)
		}, 0},
		{"in stillManager", func(h *roleHarness) {
			for range 3 {
				h.tick(false)
			}
			h.tick(false)
			select {
			case <-h.asked: // left unanswered: the context ends it
			case <-time.After(exchangeWait):
				require.Fail(h.t, "stillManager was not asked")
			}
		}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := startRoleCheck(t, time.Second)
			tt.before(h)
			h.stop()
			assert.Zero(t, h.demoted.Load(), "notManager calls")
			assert.Equal(t, tt.wantAsks, h.asks.Load(), "stillManager calls")
			assert.Zero(t, h.clk.Timers(), "run left its timer armed")
		})
	}
}
