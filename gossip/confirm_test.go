package gossip

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/serf/serf"
	"github.com/shoalhq/shoal/gossip/gossiptest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// holds reports whether nd's table holds exactly want for author.
func holds(nd *Node, author string, want []Endpoint) bool {
	var got []Endpoint
	for _, e := range nd.Table() {
		if e.Node == author {
			got = append(got, e)
		}
	}
	return slices.Equal(got, want)
}

func confirmCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// quiet waits until no node has a pull due, queued or in flight, so the
// only pulls later are the ones the test causes.
func (c *cluster) quiet() {
	c.t.Helper()
	require.Eventually(c.t, func() bool {
		for _, nd := range c.nodes {
			nd.pullMu.Lock()
			due := len(nd.pullDue)
			nd.pullMu.Unlock()
			nd.mu.Lock()
			conns := len(nd.conns)
			nd.mu.Unlock()
			if due > 0 || len(nd.pullCh) > 0 || conns > 0 {
				return false
			}
		}
		return true
	}, 30*time.Second, 20*time.Millisecond)
}

func TestConfirmEveryTableHoldsChange(t *testing.T) {
	c := startCluster(t, 5, newKey(t), nil)
	author := c.nodes[2]
	id := author.cfg.NodeID
	eps := sortedCopy([]Endpoint{
		ep(id, "web", "t1", 80, "10.0.2.1:30001"),
		ep(id, "web", "t2", 80, "10.0.2.2:30002"),
		ep(id, "db", "t3", 5432, "10.0.2.3:30003"),
	})

	author.SetLocal(eps)
	require.NoError(t, author.Confirm(confirmCtx(t, 30*time.Second)))
	for _, nd := range c.nodes {
		assert.True(t, holds(nd, id, eps), "%s lacks the change right after Confirm", nd.cfg.NodeID)
	}

	// Drain: withdraw one endpoint, confirm, and nobody lists it any more.
	author.SetLocal(eps[1:])
	require.NoError(t, author.Confirm(confirmCtx(t, 30*time.Second)))
	for _, nd := range c.nodes {
		assert.True(t, holds(nd, id, eps[1:]), "%s still lists the withdrawn endpoint", nd.cfg.NodeID)
	}

	// Confirming an unchanged set again is answered from the tables at once.
	require.NoError(t, author.Confirm(confirmCtx(t, 30*time.Second)))
	assert.Equal(t, int64(3), author.stats.confirms.Load())
	assert.Equal(t, int64(3), author.stats.confirmsOK.Load())
	assert.GreaterOrEqual(t, author.stats.confirmQueries.Load(), int64(3))
	var answers int64
	for _, nd := range c.nodes {
		answers += nd.stats.confirmAnswers.Load()
	}
	assert.GreaterOrEqual(t, answers, int64(3*4), "each of 4 members answers each of 3 confirms")
	assert.Zero(t, author.stats.confirmAnswers.Load(), "the author does not answer itself")
}

func TestConfirmPullsWhenGossipLost(t *testing.T) {
	const author = "node-001"
	deaf := map[string]bool{"node-003": true, "node-004": true}
	c := startCluster(t, 5, newKey(t), func(cfg *Config) {
		// No digests and no table anti-entropy: only the have query can
		// repair (serf's own push-pull still settles the membership).
		cfg.DigestInterval = time.Hour
		cfg.tableSyncInterval = time.Hour
		if deaf[cfg.NodeID] {
			cfg.dropEvent = func(e serf.Event) bool {
				ue, ok := e.(serf.UserEvent)
				if !ok || ue.Name != eventName {
					return false
				}
				dl, err := decodeDelta(ue.Payload)
				return err == nil && dl.Node == author
			}
		}
	})
	c.quiet()
	a := c.nodes[1]
	eps := []Endpoint{ep(author, "web", "t1", 80, "10.0.1.1:30001")}
	a.SetLocal(eps)
	require.Eventually(t, func() bool {
		return holds(c.nodes[0], author, eps) && holds(c.nodes[2], author, eps)
	}, 30*time.Second, 10*time.Millisecond)
	for _, nd := range c.nodes[3:] {
		require.False(t, holds(nd, author, eps), "%s got the change despite losing its gossip", nd.cfg.NodeID)
	}

	require.NoError(t, a.Confirm(confirmCtx(t, 30*time.Second)))
	for _, nd := range c.nodes {
		assert.True(t, holds(nd, author, eps), "%s lacks the change right after Confirm", nd.cfg.NodeID)
	}
	for _, nd := range c.nodes[3:] {
		assert.GreaterOrEqual(t, nd.stats.confirmDeferred.Load(), int64(1), "%s answered without pulling", nd.cfg.NodeID)
		assert.GreaterOrEqual(t, nd.stats.pulls.Load(), int64(1))
	}
}

func TestConfirmWaitsForPartitionedMemberUntilItFails(t *testing.T) {
	c := startCluster(t, 4, newKey(t), nil)
	a, victim := c.nodes[0], c.nodes[3]
	c.net.Isolate(c.trs[3].Addr(), true)
	a.SetLocal([]Endpoint{ep(a.cfg.NodeID, "web", "t1", 80, "10.0.0.1:30001")})

	// The isolated member is alive to serf for a while and can never answer.
	require.Equal(t, serf.StatusAlive, memberStatus(a, victim.cfg.NodeID))
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, a.Confirm(ctx), context.DeadlineExceeded)
	assert.Equal(t, int64(1), a.stats.confirmsCanceled.Load())

	// Once it is gone for good and declared failed, it no longer counts.
	require.NoError(t, victim.Kill())
	require.Eventually(t, func() bool {
		st := memberStatus(a, victim.cfg.NodeID)
		return st == serf.StatusFailed || st == serf.StatusLeft
	}, 60*time.Second, 20*time.Millisecond)
	require.NoError(t, a.Confirm(confirmCtx(t, 30*time.Second)))
	for _, nd := range c.nodes[:3] {
		assert.True(t, holds(nd, a.cfg.NodeID, a.Table()), nd.cfg.NodeID)
	}
}

func TestConfirmStopsCountingMemberThatFailsMidWait(t *testing.T) {
	c := startCluster(t, 3, newKey(t), nil)
	a, victim := c.nodes[0], c.nodes[2]
	c.net.Isolate(c.trs[2].Addr(), true)
	a.SetLocal([]Endpoint{ep(a.cfg.NodeID, "web", "t1", 80, "10.0.0.1:30001")})
	done := make(chan error, 1)
	go func() { done <- a.Confirm(confirmCtx(t, 60*time.Second)) }()
	// Confirm is stuck on the isolated member until the failure detector
	// declares it failed; then it returns without a new call.
	require.NoError(t, victim.Kill())
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(60 * time.Second):
		t.Fatal("Confirm did not return after the silent member failed")
	}
	assert.NotEqual(t, serf.StatusAlive, memberStatus(a, victim.cfg.NodeID))
	assert.True(t, holds(c.nodes[1], a.cfg.NodeID, a.Table()))
}

func TestConfirmOlderBuildNeverAnswers(t *testing.T) {
	c := startCluster(t, 3, newKey(t), func(cfg *Config) {
		if cfg.NodeID == "node-002" {
			cfg.dropEvent = func(e serf.Event) bool { _, ok := e.(*serf.Query); return ok }
		}
	})
	a := c.nodes[0]
	eps := []Endpoint{ep(a.cfg.NodeID, "web", "t1", 80, "10.0.0.1:30001")}
	a.SetLocal(eps)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, a.Confirm(ctx), context.DeadlineExceeded)
	// Nothing is wedged: gossip still spreads and the others answer.
	require.Eventually(t, func() bool { return converged(c.nodes, eps) }, 30*time.Second, 20*time.Millisecond)
	b := c.nodes[1]
	b.SetLocal([]Endpoint{ep(b.cfg.NodeID, "web", "t2", 80, "10.0.0.2:30002")})
	ctx2, cancel2 := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel2()
	require.ErrorIs(t, b.Confirm(ctx2), context.DeadlineExceeded)
	assert.GreaterOrEqual(t, a.stats.confirmAnswers.Load(), int64(1), "the current member answered")
	assert.Zero(t, c.nodes[2].stats.confirmAnswers.Load())
}

func TestConfirmLifecycle(t *testing.T) {
	n, err := New(fastConfig("solo", gossiptest.NewMemNetwork(1).NewTransport(), nil))
	require.NoError(t, err)
	require.ErrorIs(t, n.Confirm(context.Background()), ErrNotStarted)
	require.NoError(t, n.Start(context.Background()))
	// No other member: nothing to wait for.
	n.SetLocal([]Endpoint{ep("solo", "web", "t1", 80, "10.0.0.1:1")})
	require.NoError(t, n.Confirm(context.Background()))
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	require.NoError(t, n.Confirm(cancelled), "no member to wait for: done before looking at ctx")
	require.NoError(t, n.Stop(context.Background()))
	require.ErrorIs(t, n.Confirm(context.Background()), ErrStopped)

	never, err := New(fastConfig("never", gossiptest.NewMemNetwork(1).NewTransport(), nil))
	require.NoError(t, err)
	require.NoError(t, never.Stop(context.Background()))
	require.ErrorIs(t, never.Confirm(context.Background()), ErrStopped)
}

func TestConfirmReturnsOnStop(t *testing.T) {
	c := startCluster(t, 2, nil, func(cfg *Config) {
		if cfg.NodeID == "node-001" {
			cfg.dropEvent = func(e serf.Event) bool { _, ok := e.(*serf.Query); return ok }
		}
	})
	a := c.nodes[0]
	done := make(chan error, 1)
	go func() { done <- a.Confirm(context.Background()) }()
	require.Eventually(t, func() bool { return a.stats.confirmQueries.Load() >= 1 }, 30*time.Second, 10*time.Millisecond)
	require.NoError(t, a.Kill())
	select {
	case err := <-done:
		require.ErrorIs(t, err, ErrStopped)
	case <-time.After(30 * time.Second):
		t.Fatal("Confirm outlived Kill")
	}
}

func TestHaveMessagesRoundTripAndRejectBadInput(t *testing.T) {
	hq := &haveQuery{Node: "node-007", Epoch: 1_700_000_000_000_000_000, Version: 1_700_000_000_000_000_042}
	b := encodeHaveQuery(hq)
	got, err := decodeHaveQuery(b)
	require.NoError(t, err)
	assert.Equal(t, hq, got)
	for i := range len(b) {
		_, err := decodeHaveQuery(b[:i])
		assert.Error(t, err, "truncated to %d bytes", i)
	}
	long := string(make([]byte, maxNodeIDLen+1))
	for name, bad := range map[string][]byte{
		"trailing":      append(append([]byte(nil), b...), 0),
		"format":        append([]byte{wireFormat + 1}, b[1:]...),
		"empty node":    encodeHaveQuery(&haveQuery{Node: "", Epoch: 1, Version: 1}),
		"long node":     encodeHaveQuery(&haveQuery{Node: long, Epoch: 1, Version: 1}),
		"below epoch":   encodeHaveQuery(&haveQuery{Node: "x", Epoch: 5, Version: 4}),
		"garbage":       []byte("\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"),
		"varint length": {wireFormat, 0x80},
	} {
		_, err := decodeHaveQuery(bad)
		assert.Error(t, err, name)
	}

	r := encodeHaveReply(hq.Version)
	v, err := decodeHaveReply(r)
	require.NoError(t, err)
	assert.Equal(t, hq.Version, v)
	for i := range len(r) {
		_, err := decodeHaveReply(r[:i])
		assert.Error(t, err, "reply truncated to %d bytes", i)
	}
	for name, bad := range map[string][]byte{
		"trailing": append(append([]byte(nil), r...), 1),
		"format":   append([]byte{wireFormat + 1}, r[1:]...),
		"zero":     encodeHaveReply(0),
	} {
		_, err := decodeHaveReply(bad)
		assert.ErrorIs(t, err, errBad, name)
	}
}

func TestHaveQueryFilterFitsLimit(t *testing.T) {
	few := []string{"a", "b"}
	size := 0
	many := make([]string, 0, 100)
	for i := range 100 {
		id := fmt.Sprintf("member-%020d", i)
		many = append(many, id)
		size += len(id)
	}
	require.Greater(t, size, maxFilterBytes)
	p := haveQueryParamsFor(time.Second, few)
	assert.Equal(t, few, p.FilterNodes)
	p = haveQueryParamsFor(time.Second, many)
	assert.Nil(t, p.FilterNodes, "too many names for one query: ask everyone")
}

// BenchmarkConfirm measures SetLocal followed by Confirm (the drain path) at
// the default gossip settings: the time until every member's table holds
// the change, as confirmed by their answers.
func BenchmarkConfirm(b *testing.B) {
	for _, members := range []int{5, 20} {
		b.Run(fmt.Sprintf("members=%d", members), func(b *testing.B) {
			c := startCluster(b, members, newKey(b), func(cfg *Config) {
				d := DefaultConfig()
				cfg.GossipInterval, cfg.PushPullInterval, cfg.PullDelay = d.GossipInterval, d.PushPullInterval, d.PullDelay
			})
			src := c.nodes[0]
			var queries int64
			for i := 0; b.Loop(); i++ {
				src.SetLocal([]Endpoint{ep(src.cfg.NodeID, "svc", fmt.Sprintf("t%d", i), 80, "10.0.0.1:1000")})
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				require.NoError(b, src.Confirm(ctx))
				cancel()
			}
			queries = src.stats.confirmQueries.Load()
			b.ReportMetric(float64(queries)/float64(src.stats.confirms.Load()), "queries/op")
		})
	}
}
