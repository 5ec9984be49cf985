package gossip

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/internal/clock/clocktest"
)

// idle reports whether nd has no pull due, queued or in flight and no
// stream open.
func idle(nd *Node) bool {
	nd.pullMu.Lock()
	due := len(nd.pullDue)
	nd.pullMu.Unlock()
	nd.mu.Lock()
	conns := len(nd.conns)
	nd.mu.Unlock()
	return due == 0 && len(nd.pullCh) == 0 && conns == 0
}

// The node's own loops (digests, pulls, anti-entropy) wait on Config.Clock:
// with a fake clock a change that gossip missed is noticed from a digest
// only once the clock reaches the digest interval, pulled only once it
// moves PullDelay further, and anti-entropy runs only when it is due.
func TestLoopsRunOnClock(t *testing.T) {
	fake := clocktest.NewFake()
	c := startCluster(t, 2, newKey(t), func(cfg *Config) {
		cfg.Clock = fake
		cfg.tableSyncInterval = time.Hour
	})
	a, b := c.nodes[0], c.nodes[1]
	cfg := a.cfg
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.True(t, fake.WaitTimers(ctx, 6), "each node waits on a pull, a digest and an anti-entropy timer")

	// The pulls serf's join events scheduled run once the clock reaches
	// PullDelay; then both nodes are quiet.
	require.Eventually(t, func() bool {
		fake.Advance(cfg.PullDelay)
		return a.stats.pulls.Load() > 0 && b.stats.pulls.Load() > 0 && idle(a) && idle(b)
	}, 30*time.Second, 20*time.Millisecond)
	require.True(t, fake.WaitTimers(ctx, 6))

	// a's set moves and no delta leaves: only a digest can tell b.
	e := ep(cfg.NodeID, "web", "t1", 80, "10.0.0.1:30001")
	_, _, v := a.tbl.local()
	a.tbl.setLocal(map[epKey]Endpoint{e.key(): e}, v+1)
	sent, gaps, pulls := a.stats.digestsSent.Load(), b.stats.digestGaps.Load(), b.stats.pulls.Load()
	assert.Never(t, func() bool { return a.stats.digestsSent.Load() > sent }, 3*cfg.DigestInterval, 20*time.Millisecond,
		"a digest left before the clock moved")

	fake.Advance(cfg.DigestInterval * 5 / 4)
	require.Eventually(t, func() bool { return b.stats.digestGaps.Load() > gaps }, 30*time.Second, 5*time.Millisecond,
		"b never learnt from a digest that it is behind")
	assert.Equal(t, pulls, b.stats.pulls.Load(), "b pulled before PullDelay passed on its clock")
	assert.Less(t, b.tbl.versionOf(cfg.NodeID), v+1)

	require.True(t, fake.WaitTimers(ctx, 6), "the loops wait again")
	fake.Advance(cfg.PullDelay)
	// The pull is due now. Should serf's failure detector flap on a loaded
	// machine, the pull its rejoin schedules needs the clock to move too.
	require.Eventually(t, func() bool {
		if converged(c.nodes, []Endpoint{e}) {
			return true
		}
		fake.Advance(cfg.PullDelay / 4)
		return false
	}, 30*time.Second, 5*time.Millisecond)
	assert.Greater(t, b.stats.pulls.Load(), pulls)

	assert.Zero(t, a.stats.syncs.Load()+b.stats.syncs.Load(), "anti-entropy ran before it was due")
	require.True(t, fake.WaitTimers(ctx, 6))
	fake.Advance(3 * time.Hour / 2)
	require.Eventually(t, func() bool { return a.stats.syncs.Load() > 0 && b.stats.syncs.Load() > 0 }, 30*time.Second, 5*time.Millisecond,
		"anti-entropy did not run once due on the clock")
}
