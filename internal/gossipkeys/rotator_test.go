package gossipkeys

import (
	"context"
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
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	clusterID = "cluster00000000000000000a"
	grace     = time.Second
	interval  = 100 * time.Millisecond
)

// rig is a Rotator over an in-memory store holding one cluster, on a fake
// clock.
type rig struct {
	t     *testing.T
	ctx   context.Context
	store *state.Store
	clk   *clocktest.Fake
	r     *Rotator
}

// newRig builds the rig; mk makes the cluster's stored keys from the fake
// time (nil: no keys).
func newRig(t *testing.T, mk func(now time.Time) *api.GossipKeys) *rig {
	t.Helper()
	clk := clocktest.NewFake()
	var keys *api.GossipKeys
	if mk != nil {
		keys = mk(clk.Now())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	st := statetest.NewStore(state.Config{})
	require.NoError(t, st.Update(ctx, func(tx state.WriteTx) error {
		return tx.CreateCluster(&api.Cluster{Id: clusterID, Spec: &api.ClusterSpec{Name: "default"}, Gossip: keys})
	}))
	r, err := NewRotator(st, RotatorConfig{ClusterID: clusterID, Grace: grace, Interval: interval, Clock: clk})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, r.Stop(context.Background())) })
	return &rig{t: t, ctx: ctx, store: st, clk: clk, r: r}
}

// start starts the Rotator and waits until its first check is done.
func (g *rig) start() {
	g.t.Helper()
	require.NoError(g.t, g.r.Start(g.ctx))
	require.True(g.t, g.clk.WaitTimers(g.ctx, 1), "the loop never waited")
}

// advance moves the fake time on by d and waits until the Rotator has run
// the check d made due (if any) and waits again.
func (g *rig) advance(d time.Duration) {
	g.t.Helper()
	g.clk.Advance(d)
	require.True(g.t, g.clk.WaitTimers(g.ctx, 1), "the loop never waited again")
}

func (g *rig) keys() *api.GossipKeys {
	var k *api.GossipKeys
	g.store.View(func(tx state.ReadTx) { k = tx.GetCluster(clusterID).GetGossip() })
	return k
}

func TestRotatorMovesPhasesAfterEachGrace(t *testing.T) {
	var p1 *api.GossipKeys
	g := newRig(t, func(now time.Time) *api.GossipKeys {
		first, err := NewKeys(now)
		require.NoError(t, err)
		p1, err = StartRotation(first, now)
		require.NoError(t, err)
		return p1
	})
	g.start()
	old, fresh := p1.Keys[0], p1.Keys[1]

	for range int(grace/interval) - 1 {
		g.advance(interval)
		assert.EqualValues(t, PhaseInstall, g.keys().GetRotationPhase(), "phase 1 lasts its grace")
	}
	g.advance(interval)
	k := g.keys()
	require.EqualValues(t, PhaseSwitch, k.GetRotationPhase(), "phase 2 once phase 1 lasted its grace")
	assert.Equal(t, [][]byte{fresh, old}, k.Keys)
	assert.Equal(t, g.clk.Now().UnixNano(), k.PhaseSince, "the phase starts at the Rotator's clock")

	g.advance(grace - interval)
	assert.EqualValues(t, PhaseSwitch, g.keys().GetRotationPhase(), "phase 2 lasts its grace")
	g.advance(interval)
	k = g.keys()
	require.EqualValues(t, PhaseNone, k.GetRotationPhase(), "the old key is dropped once phase 2 lasted its grace")
	assert.Equal(t, [][]byte{fresh}, k.Keys)

	before := k.PhaseSince
	g.advance(10 * grace)
	assert.Equal(t, before, g.keys().PhaseSince, "without a rotation nothing is written")
}

func TestRotatorGivesFirstKeys(t *testing.T) {
	g := newRig(t, nil)
	g.start()
	k := g.keys()
	require.Len(t, k.GetKeys(), 1, "a cluster without keys gets its first at once")
	assert.Len(t, k.Keys[0], KeyBytes)
	assert.EqualValues(t, PhaseNone, k.RotationPhase)
	assert.Equal(t, g.clk.Now().UnixNano(), k.PhaseSince)
}

func TestRotatorLifecycle(t *testing.T) {
	g := newRig(t, nil)
	ctx := context.Background()
	require.NoError(t, g.r.Stop(ctx), "Stop before Start")
	require.ErrorIs(t, g.r.Start(ctx), errdefs.ErrStopped)

	g = newRig(t, nil)
	g.start()
	require.ErrorIs(t, g.r.Start(ctx), ErrStarted)
	require.NoError(t, g.r.Stop(ctx))
	select {
	case <-g.r.loop.Done():
	default:
		t.Fatal("the loop outlived Stop")
	}
	require.NoError(t, g.r.Stop(ctx), "Stop is idempotent")

	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	g = newRig(t, nil)
	require.ErrorIs(t, g.r.Start(cancelled), context.Canceled)
}

func TestRotatorConfig(t *testing.T) {
	st := statetest.NewStore(state.Config{})
	for _, tc := range []struct {
		name string
		mod  func(*RotatorConfig)
		want string
	}{
		{"no cluster", func(c *RotatorConfig) { c.ClusterID = "" }, "RotatorConfig.ClusterID: is required"},
		{"no grace", func(c *RotatorConfig) { c.Grace = 0 }, "RotatorConfig.Grace: must be positive"},
		{"negative interval", func(c *RotatorConfig) { c.Interval = -1 }, "RotatorConfig.Interval: must not be negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultRotatorConfig()
			cfg.ClusterID = clusterID
			tc.mod(&cfg)
			_, err := NewRotator(st, cfg)
			require.ErrorIs(t, err, errdefs.ErrInvalidSpec)
			assert.ErrorContains(t, err, tc.want)
		})
	}
	_, err := NewRotator(nil, RotatorConfig{ClusterID: clusterID, Grace: grace})
	require.ErrorIs(t, err, errdefs.ErrInvalidSpec)

	for grace, want := range map[time.Duration]time.Duration{
		time.Millisecond: 10 * time.Millisecond, 2 * time.Second: 500 * time.Millisecond, time.Minute: time.Second,
	} {
		cfg, err := RotatorConfig{ClusterID: clusterID, Grace: grace}.validate()
		require.NoError(t, err)
		assert.Equal(t, want, cfg.Interval, "interval for a grace of %v", grace)
	}
}
