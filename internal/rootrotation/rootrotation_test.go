package rootrotation

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/ca"
	"github.com/shoalhq/shoal/internal/clock/clocktest"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/state"
	"github.com/shoalhq/shoal/internal/state/statetest"
	"github.com/shoalhq/shoal/pki"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	clusterID = "cluster00000000000000000a"
	interval  = time.Second
)

// rig is a Completer over an in-memory store whose cluster is rotating its
// root CA, with nodes that all hold certificates from the old root, on a
// fake clock.
type rig struct {
	t          *testing.T
	ctx        context.Context
	store      *state.Store
	clk        *clocktest.Fake
	c          *Completer
	oldDigest  string
	newDigest  string
	newCertPEM []byte
	oldTokens  *api.JoinTokens
}

// newRig builds the rig with the given nodes (ID to state); it does not
// start the Completer.
func newRig(t *testing.T, nodes map[string]api.NodeState) *rig {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	root, err := pki.NewRootCA(clusterID, 0)
	require.NoError(t, err)
	c := &api.Cluster{Id: clusterID, Spec: &api.ClusterSpec{Name: "default"}, RootCa: &api.RootCA{CertPem: root.CertPEM, KeyPem: root.KeyPEM}}
	c.JoinTokens, err = ca.RotateTokens(c, true, true)
	require.NoError(t, err)
	c.RootCa, err = ca.StartRootRotation(c)
	require.NoError(t, err)
	next, err := pki.ParseRootCA(c.RootCa.Rotation.NewCertPem, nil)
	require.NoError(t, err)

	st := statetest.NewStore(state.Config{})
	require.NoError(t, st.Update(ctx, func(tx state.WriteTx) error {
		if err := tx.CreateCluster(c); err != nil {
			return err
		}
		for id, s := range nodes {
			if err := tx.CreateNode(&api.Node{Id: id, Status: &api.NodeStatus{State: s}, CertRootDigest: root.Digest()}); err != nil {
				return err
			}
		}
		return nil
	}))
	clk := clocktest.NewFake()
	cfg := DefaultConfig()
	cfg.Clock, cfg.Interval = clk, interval
	comp, err := New(st, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, comp.Stop(context.Background())) })
	return &rig{t: t, ctx: ctx, store: st, clk: clk, c: comp, oldDigest: root.Digest(), newDigest: next.Digest(),
		newCertPEM: next.CertPEM, oldTokens: c.JoinTokens}
}

// start starts the Completer and waits until its first check is done.
func (g *rig) start() {
	g.t.Helper()
	require.NoError(g.t, g.c.Start(g.ctx))
	require.True(g.t, g.clk.WaitTimers(g.ctx, 1), "the loop never waited")
}

// tick moves the fake time on by one interval and waits until the periodic
// check it made due is done.
func (g *rig) tick() {
	g.t.Helper()
	g.clk.Advance(interval)
	require.True(g.t, g.clk.WaitTimers(g.ctx, 1), "the loop never waited again")
}

// setNode changes a node as a renewal (digest) or the dispatcher (state)
// would.
func (g *rig) setNode(id string, f func(n *api.Node)) {
	g.t.Helper()
	require.NoError(g.t, g.store.Update(g.ctx, func(tx state.WriteTx) error {
		n := tx.GetNode(id)
		f(n)
		return tx.UpdateNode(n)
	}))
}

func (g *rig) renew(id string) { g.setNode(id, func(n *api.Node) { n.CertRootDigest = g.newDigest }) }

func (g *rig) rotating() bool {
	var c *api.Cluster
	g.store.View(func(tx state.ReadTx) { c = tx.GetCluster(clusterID) })
	return c.GetRootCa().GetRotation() != nil
}

// assertCompleted checks the end state: the new root alone, and join tokens
// that pin it.
func (g *rig) assertCompleted() {
	g.t.Helper()
	var c *api.Cluster
	g.store.View(func(tx state.ReadTx) { c = tx.GetCluster(clusterID) })
	assert.Nil(g.t, c.GetRootCa().GetRotation())
	assert.Equal(g.t, g.newCertPEM, c.GetRootCa().GetCertPem(), "the new root is the only one")
	for _, tok := range []string{c.GetJoinTokens().GetWorker(), c.GetJoinTokens().GetManager()} {
		parsed, err := pki.ParseToken(tok)
		require.NoError(g.t, err)
		assert.Equal(g.t, g.newDigest, parsed.Digest, "the join tokens pin the new root")
	}
	assert.NotEqual(g.t, g.oldTokens.Worker, c.GetJoinTokens().GetWorker())
	assert.NotEqual(g.t, g.oldTokens.Manager, c.GetJoinTokens().GetManager())
}

const (
	ready = api.NodeState_NODE_STATE_READY
	down  = api.NodeState_NODE_STATE_DOWN
)

func TestCompletesWhenEveryLiveNodeRenewed(t *testing.T) {
	g := newRig(t, map[string]api.NodeState{"n1": ready, "n2": ready, "gone": down})
	g.start()
	require.True(t, g.rotating())

	g.renew("n1")
	g.tick()
	assert.True(t, g.rotating(), "n2 still has a certificate from the old root")

	// The last renewal is a watched change: the rotation completes without
	// the clock moving. A DOWN node does not hold it back.
	g.renew("n2")
	require.Eventually(t, func() bool { return !g.rotating() }, 5*time.Second, time.Millisecond)
	g.assertCompleted()
}

func TestWaitsForLaggingNode(t *testing.T) {
	g := newRig(t, map[string]api.NodeState{"n1": ready, "lagging": ready})
	g.start()
	g.renew("n1")
	for range 5 {
		g.tick()
		require.True(t, g.rotating(), "a node that is not DOWN still has a certificate from the old root")
	}

	// A node going DOWN is no watched change: the periodic check notices.
	g.setNode("lagging", func(n *api.Node) { n.Status.State = down })
	assert.True(t, g.rotating(), "only the clock completes it")
	g.tick()
	assert.False(t, g.rotating(), "the lagging node went DOWN: every live node has a new certificate")
	g.assertCompleted()

	// Nothing more happens once it is complete.
	var before uint64
	g.store.View(func(tx state.ReadTx) { before = tx.GetCluster(clusterID).GetMeta().GetVersion() })
	g.tick()
	g.store.View(func(tx state.ReadTx) { assert.Equal(t, before, tx.GetCluster(clusterID).GetMeta().GetVersion()) })
}

func TestWithoutRotationNothingIsWritten(t *testing.T) {
	ctx := context.Background()
	st := statetest.NewStore(state.Config{})
	require.NoError(t, st.Update(ctx, func(tx state.WriteTx) error {
		return tx.CreateCluster(&api.Cluster{Id: clusterID, Spec: &api.ClusterSpec{Name: "default"}})
	}))
	clk := clocktest.NewFake()
	c, err := New(st, Config{Clock: clk, Interval: interval})
	require.NoError(t, err)
	idx := st.Index()
	require.NoError(t, c.Start(ctx))
	require.True(t, clk.WaitTimers(ctx, 1))
	clk.Advance(interval)
	require.True(t, clk.WaitTimers(ctx, 1))
	assert.Equal(t, idx, st.Index())
	require.NoError(t, c.Stop(ctx))
}

func TestLifecycle(t *testing.T) {
	ctx := context.Background()
	g := newRig(t, nil)
	require.NoError(t, g.c.Stop(ctx), "Stop before Start")
	require.ErrorIs(t, g.c.Start(ctx), errdefs.ErrStopped)

	g = newRig(t, nil)
	g.start()
	require.ErrorIs(t, g.c.Start(ctx), ErrStarted)
	require.NoError(t, g.c.Stop(ctx))
	select {
	case <-g.c.loop.Done():
	default:
		t.Fatal("the loop outlived Stop")
	}
	require.NoError(t, g.c.Stop(ctx), "Stop is idempotent")

	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	g = newRig(t, nil)
	require.ErrorIs(t, g.c.Start(cancelled), context.Canceled)

	_, err := New(g.store, Config{})
	require.ErrorIs(t, err, errdefs.ErrInvalidSpec)
	assert.ErrorContains(t, err, "Config.Interval: must be positive")
	_, err = New(nil, DefaultConfig())
	require.ErrorIs(t, err, errdefs.ErrInvalidSpec)
}
