package raftstore

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestReadBarrierOnFollowerSeesLeaderWrites(t *testing.T) {
	c := newCluster(t, 3, nil)
	lead := c.leader()
	ctx := ctxFor(t)
	for _, f := range c.nodes {
		<-f.Ready()
	}
	for round := 1; round <= 5; round++ {
		// The leader acknowledges a write once it is applied there; a follower learns that it
		// is committed only with the leader's next message, so without the barrier it usually
		// lags.
		proposeConcurrently(t, lead, 4, 20, payloadOf)
		wantSum, wantCount := c.sms[lead.ID()].state()
		writeIdx := lead.AppliedIndex()
		for id, f := range c.nodes {
			if id == lead.ID() {
				continue
			}
			idx, err := f.ReadBarrier(ctx)
			require.NoError(t, err)
			assert.GreaterOrEqual(t, idx, writeIdx, "the read index covers every acknowledged write")
			assert.GreaterOrEqual(t, f.AppliedIndex(), idx, "the barrier returns after applying the read index")
			sum, count := c.sms[id].state()
			assert.Equal(t, wantCount, count, "follower %d sees every write after the barrier (round %d)", id, round)
			assert.Equal(t, wantSum, sum)
		}
	}
	// On the leader too.
	_, err := lead.Propose(ctx, []byte("last"))
	require.NoError(t, err)
	idx, err := lead.ReadBarrier(ctx)
	require.NoError(t, err)
	assert.Positive(t, idx)
	assert.GreaterOrEqual(t, lead.AppliedIndex(), idx)
}

func TestReadBarrierSingleMember(t *testing.T) {
	sm := &listSM{}
	n := startNode(t, testConfig(t, t.TempDir(), sm))
	ctx := ctxFor(t)
	proposeN(t, n, 3, payloadOf)
	idx, err := n.ReadBarrier(ctx)
	require.NoError(t, err)
	assert.Equal(t, n.AppliedIndex(), idx, "a sole voter's read index is its commit index")
	assert.Equal(t, 3, sm.len())
	st := n.Stats()
	assert.Equal(t, uint64(1), st.ReadBarriers)
	assert.Equal(t, uint64(1), st.ReadRounds)
}

func TestReadBarrierConcurrentCallsShareRounds(t *testing.T) {
	c := newCluster(t, 3, nil)
	lead := c.leader()
	f := c.follower(lead)
	<-f.Ready()
	ctx := ctxFor(t)

	const readers, perReader = 16, 20
	var wg sync.WaitGroup
	errs := make(chan error, readers)
	for r := range readers {
		wg.Go(func() {
			for i := range perReader {
				if r%2 == 0 {
					if _, err := lead.Propose(ctx, payloadOf(r*perReader+i)); err != nil {
						errs <- err
						return
					}
				}
				// Whatever was acknowledged before the barrier is visible after it.
				_, before := c.sms[lead.ID()].state()
				if _, err := f.ReadBarrier(ctx); err != nil {
					errs <- err
					return
				}
				if _, after := c.sms[f.ID()].state(); after < before {
					errs <- assert.AnError
					t.Errorf("follower saw %d entries after a barrier; %d were applied on the leader before it", after, before)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	st := f.Stats()
	assert.Equal(t, uint64(readers*perReader), st.ReadBarriers)
	assert.LessOrEqual(t, st.ReadRounds, st.ReadBarriers)
	t.Logf("%d barriers in %d rounds", st.ReadBarriers, st.ReadRounds)
}

func TestReadBarrierInMinorityFailsFastWithNoQuorum(t *testing.T) {
	c := newCluster(t, 3, nil)
	old := c.leader()
	proposeN(t, old, 5, payloadOf)
	c.converged()
	ctx := ctxFor(t)

	// A leader that has just been cut off: its round can never be confirmed; it fails once
	// the leader notices, long before ctx ends.
	c.net.isolate(old.ID(), true)
	_, err := old.ReadBarrier(ctx)
	require.ErrorIs(t, err, ErrNoQuorum)
	require.NoError(t, ctx.Err(), "failed fast, not at the deadline")
	var qe *QuorumError
	require.ErrorAs(t, err, &qe)
	assert.Equal(t, 3, qe.Voters)
	assert.Equal(t, 2, qe.Needed)
	assert.Less(t, qe.Reachable, 2)

	// Once it knows no leader: one election timeout, then the same error.
	require.Eventually(t, func() bool { return old.Leader() == 0 }, waitFor, 5*time.Millisecond)
	_, err = old.ReadBarrier(ctx)
	require.ErrorIs(t, err, ErrNoQuorum)
	assert.Contains(t, err.Error(), "1 of 3 managers reachable, 2 needed")
	require.NoError(t, ctx.Err())

	// The majority keeps serving linearizable reads, on the new leader and its follower.
	lead := c.leader(old.ID())
	_, err = lead.Propose(ctx, []byte("majority"))
	require.NoError(t, err)
	other := c.follower(lead, old.ID())
	_, err = other.ReadBarrier(ctx)
	require.NoError(t, err)
	_, count := c.sms[other.ID()].state()
	assert.Equal(t, uint64(6), count)

	// A cut-off follower fails the same way.
	c.net.isolate(other.ID(), true)
	_, err = other.ReadBarrier(ctx)
	require.ErrorIs(t, err, ErrNoQuorum)
	require.NoError(t, ctx.Err())

	// Healed, the old leader's barrier sees the majority's write.
	c.net.isolate(old.ID(), false)
	c.net.isolate(other.ID(), false)
	require.Eventually(t, func() bool {
		_, err := old.ReadBarrier(ctx)
		return err == nil
	}, waitFor, 5*time.Millisecond)
	_, count = c.sms[old.ID()].state()
	assert.Equal(t, uint64(6), count)
}

func TestReadBarrierRetriesLostRequests(t *testing.T) {
	// A follower whose request (or its answer) is lost asks again after an election timeout.
	// The follower is cut off for less than an election timeout, so it keeps its leader.
	c := newCluster(t, 3, func(cfg *Config) { cfg.ElectionTick = 50 })
	lead := c.leader()
	f := c.follower(lead)
	<-f.Ready()
	ctx := ctxFor(t)
	c.net.isolate(f.ID(), true)
	res := make(chan error, 1)
	go func() {
		_, err := f.ReadBarrier(ctx)
		res <- err
	}()
	require.Eventually(t, func() bool { return f.Stats().ReadRounds == 1 }, waitFor, time.Millisecond)
	c.net.isolate(f.ID(), false)
	select {
	case err := <-res:
		require.NoError(t, err)
	case <-time.After(waitFor):
		t.Fatal("barrier never answered")
	}
}

func TestReadBarrierStoppedAndCancelled(t *testing.T) {
	sm := &listSM{}
	cfg := testConfig(t, t.TempDir(), sm)
	n, err := New(cfg)
	require.NoError(t, err)
	_, err = n.ReadBarrier(context.Background())
	require.ErrorIs(t, err, ErrStopped, "never started")
	require.NoError(t, n.Start(context.Background()))
	<-n.Ready()

	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = n.ReadBarrier(cancelled)
	require.ErrorIs(t, err, context.Canceled)

	// A barrier waiting for an entry held in Apply is answered with ErrStopped at Stop.
	sm.mu.Lock()
	sm.block, sm.entered = make(chan struct{}), make(chan struct{}, 1)
	sm.mu.Unlock()
	go func() { _, _ = n.Propose(context.Background(), []byte("held")) }()
	<-sm.entered
	res := make(chan error, 1)
	go func() {
		_, err := n.ReadBarrier(context.Background())
		res <- err
	}()
	stopped := make(chan error, 1)
	go func() { stopped <- n.Stop(context.Background()) }()
	sm.mu.Lock()
	close(sm.block)
	sm.block = nil
	sm.mu.Unlock()
	require.NoError(t, <-stopped)
	select {
	case err := <-res:
		// Either it was answered after the held entry applied, or stopped first.
		if err != nil {
			require.ErrorIs(t, err, ErrStopped)
		}
	case <-time.After(waitFor):
		t.Fatal("barrier not answered at Stop")
	}
	_, err = n.ReadBarrier(context.Background())
	require.ErrorIs(t, err, ErrStopped)
}
