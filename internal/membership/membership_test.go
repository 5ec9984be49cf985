package membership

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/clock/clocktest"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/state"
	"github.com/shoalhq/shoal/internal/state/statetest"
	"github.com/shoalhq/shoal/raftstore"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const interval = 10 * time.Second

var errBoom = errors.New("boom")

// fakeRaft is a Raft configuration in memory. It is safe for concurrent use.
type fakeRaft struct {
	mu         sync.Mutex
	members    []raftstore.Member
	caughtUp   map[uint64]bool
	failNext   int           // how many of the next PromoteLearner calls fail
	promotes   []uint64      // every PromoteLearner call, in order
	membersErr error         // returned by Members when set
	block      chan struct{} // when set, Members waits for it to close, ignoring ctx
}

var _ Raft = (*fakeRaft)(nil)

func newFakeRaft(members ...raftstore.Member) *fakeRaft {
	return &fakeRaft{members: members, caughtUp: map[uint64]bool{}}
}

func (f *fakeRaft) Members(ctx context.Context) ([]raftstore.Member, error) {
	f.mu.Lock()
	block, err := f.block, f.membersErr
	out := slices.Clone(f.members)
	f.mu.Unlock()
	if block != nil {
		<-block
	}
	if err != nil {
		return nil, err
	}
	return out, ctx.Err()
}

func (f *fakeRaft) CaughtUp(ctx context.Context, id uint64) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.caughtUp[id], ctx.Err()
}

func (f *fakeRaft) PromoteLearner(ctx context.Context, id uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.promotes = append(f.promotes, id)
	if f.failNext > 0 {
		f.failNext--
		return errBoom
	}
	for i := range f.members {
		if f.members[i].ID == id {
			f.members[i].Learner, f.members[i].Voter = false, true
		}
	}
	return ctx.Err()
}

func (f *fakeRaft) setCaughtUp(id uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.caughtUp[id] = true
}

func (f *fakeRaft) promoted() []uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.promotes)
}

func (f *fakeRaft) isVoter(id uint64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, m := range f.members {
		if m.ID == id {
			return m.Voter
		}
	}
	return false
}

// flakyLog is an in-memory log whose proposals fail while fail is set, and
// that counts the proposals it applied.
type flakyLog struct {
	inner   *statetest.Log
	fail    atomic.Bool
	applied atomic.Int64
}

var _ state.RequestLog = (*flakyLog)(nil)

func (l *flakyLog) Propose(ctx context.Context, data []byte) (any, error) {
	if l.fail.Load() {
		return nil, errBoom
	}
	l.applied.Add(1)
	return l.inner.Propose(ctx, data)
}

func (l *flakyLog) ProposeRequest(ctx context.Context, req *api.StoreRequest) (any, error) {
	if l.fail.Load() {
		return nil, errBoom
	}
	l.applied.Add(1)
	return l.inner.ProposeRequest(ctx, req)
}

// newStore returns a store with three managers (m1, m2 that is marked
// leader, m3 without a manager status) and a worker, on a flakyLog.
func newStore(t *testing.T) (*state.Store, *flakyLog) {
	t.Helper()
	s := statetest.NewStore(state.Config{CheckImmutable: true})
	t.Cleanup(func() { require.NoError(t, s.Verify()) })
	require.NoError(t, s.Update(context.Background(), func(tx state.WriteTx) error {
		for _, n := range []*api.Node{
			{Id: "m1", Role: api.NodeRole_NODE_ROLE_MANAGER, ManagerStatus: &api.ManagerStatus{RaftId: 1}},
			{Id: "m2", Role: api.NodeRole_NODE_ROLE_MANAGER, ManagerStatus: &api.ManagerStatus{RaftId: 2, Leader: true}},
			{Id: "m3", Role: api.NodeRole_NODE_ROLE_MANAGER},
			{Id: "w1", Role: api.NodeRole_NODE_ROLE_WORKER},
		} {
			if err := tx.CreateNode(n); err != nil {
				return err
			}
		}
		return nil
	}))
	l := &flakyLog{inner: statetest.NewLog(s)}
	s.SetLog(l)
	return s, l
}

func leaders(s *state.Store) map[string]bool {
	out := map[string]bool{}
	s.View(func(tx state.ReadTx) {
		nodes, _ := tx.FindNodes(state.All())
		for _, n := range nodes {
			if n.ManagerStatus != nil {
				out[n.Id] = n.ManagerStatus.Leader
			}
		}
	})
	return out
}

func config(clk *clocktest.Fake) Config {
	cfg := DefaultConfig()
	cfg.NodeID = "m1"
	cfg.Interval = interval
	cfg.Clock = clk
	return cfg
}

// start starts a Reconciler and stops it when the test ends.
func start(t *testing.T, s *state.Store, r Raft, cfg Config) *Reconciler {
	t.Helper()
	rec, err := New(s, r, cfg)
	require.NoError(t, err)
	require.NoError(t, rec.Start(context.Background()))
	t.Cleanup(func() { require.NoError(t, rec.Stop(context.Background())) })
	return rec
}

// waitRound waits until the Reconciler has finished a round and waits for
// its timer again.
func waitRound(t *testing.T, clk *clocktest.Fake) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.True(t, clk.WaitTimers(ctx, 1), "the reconciler did not finish its round")
}

// nextRound moves the clock to the next round and waits for it to finish.
func nextRound(t *testing.T, clk *clocktest.Fake) {
	t.Helper()
	clk.Advance(interval)
	waitRound(t, clk)
}

func TestNewValidates(t *testing.T) {
	s, _ := newStore(t)
	r := newFakeRaft()
	for _, tc := range []struct {
		name  string
		edit  func(*Config)
		field string
	}{
		{"no node ID", func(c *Config) { c.NodeID = "" }, "NodeID"},
		{"zero interval", func(c *Config) { c.Interval = 0 }, "Interval"},
		{"negative interval", func(c *Config) { c.Interval = -time.Second }, "Interval"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := config(clocktest.NewFake())
			tc.edit(&cfg)
			before := cfg
			_, err := New(s, r, cfg)
			require.Error(t, err)
			assert.ErrorIs(t, err, errdefs.ErrInvalidSpec)
			assert.Contains(t, err.Error(), "Config."+tc.field)
			assert.Equal(t, before, cfg, "New must not change the caller's config")
		})
	}
	_, err := New(nil, r, config(clocktest.NewFake()))
	assert.ErrorIs(t, err, errdefs.ErrInvalidSpec)
	_, err = New(s, nil, config(clocktest.NewFake()))
	assert.ErrorIs(t, err, errdefs.ErrInvalidSpec)

	cfg := DefaultConfig()
	cfg.NodeID = "m1"
	cfg.Clock, cfg.Logger = nil, nil
	_, err = New(s, r, cfg)
	assert.NoError(t, err, "nil Clock and Logger take defaults")
}

func TestMarksLeader(t *testing.T) {
	s, _ := newStore(t)
	clk := clocktest.NewFake()
	rec := start(t, s, newFakeRaft(), config(clk))
	<-rec.Ready()
	assert.Equal(t, map[string]bool{"m1": true, "m2": false}, leaders(s),
		"this manager is marked, the old leader unmarked, a manager without status left alone")
}

func TestMarkLeaderRetriedUntilItSucceeds(t *testing.T) {
	s, l := newStore(t)
	l.fail.Store(true)
	clk := clocktest.NewFake()
	start(t, s, newFakeRaft(), config(clk))
	waitRound(t, clk)
	assert.Equal(t, map[string]bool{"m1": false, "m2": true}, leaders(s))

	nextRound(t, clk)
	assert.Equal(t, map[string]bool{"m1": false, "m2": true}, leaders(s), "still failing")

	l.fail.Store(false)
	nextRound(t, clk)
	assert.Equal(t, map[string]bool{"m1": true, "m2": false}, leaders(s))

	writes := l.applied.Load()
	nextRound(t, clk)
	nextRound(t, clk)
	assert.Equal(t, writes, l.applied.Load(), "once marked, rounds write nothing")
}

func TestPromotesLearnerOnceCaughtUp(t *testing.T) {
	s, _ := newStore(t)
	r := newFakeRaft(
		raftstore.Member{ID: 1, Voter: true},
		raftstore.Member{ID: 2, Learner: true},
		raftstore.Member{ID: 3, Learner: true},
	)
	clk := clocktest.NewFake()
	start(t, s, r, config(clk))
	waitRound(t, clk)
	assert.Empty(t, r.promoted(), "no learner caught up")

	r.setCaughtUp(2)
	clk.Advance(interval - time.Nanosecond)
	assert.Equal(t, 1, clk.Timers(), "the round is not due yet")
	assert.Empty(t, r.promoted(), "promotion waits for the next round")

	clk.Advance(time.Nanosecond)
	waitRound(t, clk)
	assert.Equal(t, []uint64{2}, r.promoted())
	assert.True(t, r.isVoter(2))
	assert.False(t, r.isVoter(3), "a learner that has not caught up stays a learner")

	nextRound(t, clk)
	assert.Equal(t, []uint64{2}, r.promoted(), "a voter is not promoted again")

	r.setCaughtUp(3)
	nextRound(t, clk)
	assert.Equal(t, []uint64{2, 3}, r.promoted())
}

func TestFailedPromotionRetriedNextRound(t *testing.T) {
	s, _ := newStore(t)
	r := newFakeRaft(raftstore.Member{ID: 1, Voter: true}, raftstore.Member{ID: 2, Learner: true})
	r.setCaughtUp(2)
	r.failNext = 1
	clk := clocktest.NewFake()
	start(t, s, r, config(clk))
	waitRound(t, clk)
	assert.Equal(t, []uint64{2}, r.promoted())
	assert.False(t, r.isVoter(2))

	nextRound(t, clk)
	assert.Equal(t, []uint64{2, 2}, r.promoted())
	assert.True(t, r.isVoter(2))
}

func TestRaftErrorsSkipTheRound(t *testing.T) {
	s, _ := newStore(t)
	r := newFakeRaft(raftstore.Member{ID: 1, Voter: true}, raftstore.Member{ID: 2, Learner: true})
	r.setCaughtUp(2)
	r.membersErr = raftstore.ErrNotLeader
	clk := clocktest.NewFake()
	start(t, s, r, config(clk))
	waitRound(t, clk)
	assert.Empty(t, r.promoted())

	r.mu.Lock()
	r.membersErr = nil
	r.mu.Unlock()
	nextRound(t, clk)
	assert.Equal(t, []uint64{2}, r.promoted())
}

func TestLifecycle(t *testing.T) {
	s, _ := newStore(t)
	clk := clocktest.NewFake()
	ctx := context.Background()

	rec, err := New(s, newFakeRaft(), config(clk))
	require.NoError(t, err)
	assert.Zero(t, clk.Timers(), "New starts nothing")
	require.NoError(t, rec.Start(ctx))
	assert.ErrorIs(t, rec.Start(ctx), ErrStarted)
	waitRound(t, clk)
	require.NoError(t, rec.Stop(ctx))
	require.NoError(t, rec.Stop(ctx), "Stop is idempotent")
	assert.Zero(t, clk.Timers(), "Stop released the timer")
	assert.ErrorIs(t, rec.Start(ctx), errdefs.ErrStopped)

	unstarted, err := New(s, newFakeRaft(), config(clk))
	require.NoError(t, err)
	require.NoError(t, unstarted.Stop(ctx), "Stop before Start")
	assert.ErrorIs(t, unstarted.Start(ctx), errdefs.ErrStopped)

	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	fresh, err := New(s, newFakeRaft(), config(clk))
	require.NoError(t, err)
	assert.ErrorIs(t, fresh.Start(cancelled), context.Canceled)
	require.NoError(t, fresh.Stop(ctx))
}

func TestStopIsBoundedByContext(t *testing.T) {
	s, _ := newStore(t)
	r := newFakeRaft()
	release := make(chan struct{})
	r.block = release // Members ignores ctx until released
	clk := clocktest.NewFake()
	rec, err := New(s, r, config(clk))
	require.NoError(t, err)
	require.NoError(t, rec.Start(context.Background()))

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	assert.ErrorIs(t, rec.Stop(ctx), context.Canceled, "a call that ignores ctx keeps the goroutine, Stop does not wait past ctx")
	close(release)
	require.NoError(t, rec.Stop(context.Background()))
	select {
	case <-rec.Ready():
	default:
		t.Fatal("the round in flight finished before Stop returned")
	}
}
