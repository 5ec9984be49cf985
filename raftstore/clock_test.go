package raftstore

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/internal/clock/clocktest"
)

// Raft ticks come from Config.Clock: while a fake clock stands still, a three-member cluster
// elects nobody however long the wall clock runs; moving it elects a leader, which commits.
func TestTicksFollowClock(t *testing.T) {
	fake := clocktest.NewFake()
	c := newCluster(t, 3, func(cfg *Config) { cfg.Clock = fake })
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.True(t, fake.WaitTimers(ctx, 3), "every raft loop waits for its tick on the clock")
	anyLeader := func() bool {
		for _, n := range c.nodes {
			if n.Leader() != 0 {
				return true
			}
		}
		return false
	}
	interval := c.nodes[1].cfg.TickInterval
	election := time.Duration(c.nodes[1].cfg.ElectionTick) * interval
	assert.Never(t, anyLeader, 3*election, interval, "no election without ticks")

	require.Eventually(t, func() bool {
		fake.Advance(interval)
		return anyLeader()
	}, waitFor, 5*time.Millisecond)
	lead := c.leader()
	_, err := lead.Propose(ctx, []byte("ticked"))
	require.NoError(t, err)
	c.converged()
}
