package shoal_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal"
	"github.com/shoalhq/shoal/shoaltest"
)

func rolePtr(r shoal.NodeRole) *shoal.NodeRole { return &r }

// setRole changes a node's role through cl, retrying while the cluster has
// no leader or a conflicting write got there first.
func setRole(t *testing.T, c *shoaltest.Cluster, n *shoaltest.Node, role shoal.NodeRole) {
	t.Helper()
	var last error
	c.WaitFor(n.Name+" becomes "+role.String()+" in the store", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		info, err := c.Client().UpdateNode(ctx, n.ID(), shoal.NodeUpdate{Role: &role})
		last = err
		return err == nil && info.Role == role
	})
	require.NoError(t, last)
}

// voters returns the number of voting Raft members n's manager sees.
func voters(n *shoaltest.Node) int {
	sn := n.Shoal()
	if sn == nil {
		return -1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	v, _, err := sn.RaftMembers(ctx)
	if err != nil {
		return -1
	}
	return v
}

func TestPromoteWorkersThenLoseTheOriginalManager(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Managers: 1, Workers: 2})
	ctx := ctxT(t)
	m1 := c.Manager()
	svc, err := c.Client().CreateService(ctx, webSpec("web", 4))
	require.NoError(t, err)
	c.WaitRunning(svc.ID, 4)

	for _, w := range c.Workers() {
		setRole(t, c, w, shoal.Manager)
		c.WaitFor(w.Name+" runs as a manager", func() bool {
			sn := w.Shoal()
			return sn.Role() == shoal.Manager && voters(w) >= 0
		})
	}
	for _, n := range c.Nodes() {
		c.WaitFor(n.Name+" sees 3 voters", func() bool { return voters(n) == 3 })
	}
	// The promoted nodes serve the control API, with the cluster's state.
	for _, n := range c.Nodes() {
		c.WaitFor("service visible on "+n.Name, func() bool {
			s, err := n.Shoal().Client().GetService(ctx, "web")
			return err == nil && s.ID == svc.ID
		})
	}
	// Their agents kept running their tasks.
	c.WaitRunning(svc.ID, 4)

	// Lose the original manager: the promoted ones elect a leader and write.
	require.NoError(t, m1.Crash())
	c.WaitFor("a promoted manager leads", func() bool {
		l := c.Leader()
		return l != nil && l != m1
	})
	var cl *shoal.Client
	for _, n := range c.Managers() {
		if n != m1 {
			cl = n.Shoal().Client()
			break
		}
	}
	require.NotNil(t, cl)
	s2 := createRetrying(t, c, cl, webSpec("after", 2))
	c.WaitRunning(s2.ID, 2)
}

func TestDemoteManagerKeepsRunningTasks(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Managers: 3, Workers: 1, ManagersRunTasks: true})
	ctx := ctxT(t)
	// Demote the leader itself: it hands leadership over first.
	lead := c.Leader()
	require.NotNil(t, lead)
	setRole(t, c, lead, shoal.Worker)
	c.WaitFor(lead.Name+" runs as a worker", func() bool { return lead.Shoal().Role() == shoal.Worker })
	assert.False(t, lead.Shoal().IsLeader())
	for _, m := range c.Managers() {
		c.WaitFor(m.Name+" sees 2 voters", func() bool { return voters(m) == 2 })
	}
	_, err := lead.Shoal().Client().ListServices(ctx)
	assert.ErrorIs(t, err, shoal.ErrNotManager)

	// The demoted node still takes and runs tasks as a worker: drain every
	// other node, so the scheduler can only place them there.
	for _, n := range c.Nodes() {
		if n != lead {
			_, err := c.Client().UpdateNode(ctx, n.ID(), shoal.NodeUpdate{Availability: shoal.Drain})
			require.NoError(t, err)
		}
	}
	svc := createRetrying(t, c, c.Client(), webSpec("web", 3))
	c.WaitRunningWhere(svc.ID, 3, func(per map[string]int) bool { return per[lead.ID()] == 3 })

	// The remaining two managers still make progress.
	_, err = c.Client().UpdateNode(ctx, c.Workers()[0].ID(), shoal.NodeUpdate{Labels: map[string]string{"k": "v"}})
	require.NoError(t, err)

	// After a restart it is still a worker.
	require.NoError(t, lead.Stop())
	require.NoError(t, lead.Restart())
	assert.Equal(t, shoal.Worker, lead.Shoal().Role())
	c.WaitFor("restarted worker ready", func() bool {
		n, err := c.Client().GetNode(ctx, lead.ID())
		return err == nil && n.State == shoal.NodeReady && n.Role == shoal.Worker
	})
}

func TestDemotionRefusedWithoutQuorum(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Managers: 3})
	ctx := ctxT(t)
	ms := c.Managers()
	lead := c.Leader()
	require.NotNil(t, lead)
	var down, live *shoaltest.Node
	for _, m := range ms {
		if m != lead {
			if down == nil {
				down = m
			} else {
				live = m
			}
		}
	}
	require.NoError(t, down.Crash())
	// Let the leader notice (a few election timeouts at shoaltest's 10 ms
	// ticks): reachability is judged from recent contact.
	time.Sleep(time.Second)
	// With one of three managers down, demoting a live one would leave two
	// voters of which one is down: no quorum.
	var err error
	c.WaitFor("demotion refused for quorum", func() bool {
		_, err = c.Client().UpdateNode(ctx, live.ID(), shoal.NodeUpdate{Role: rolePtr(shoal.Worker)})
		return errors.Is(err, shoal.ErrNoQuorum)
	})
	assert.ErrorContains(t, err, "quorum")
	n, err := c.Client().GetNode(ctx, live.ID())
	require.NoError(t, err)
	assert.Equal(t, shoal.Manager, n.Role)
	assert.Equal(t, shoal.Manager, live.Shoal().Role())
	assert.Equal(t, 3, voters(lead))
}

func TestDemoteLastManagerRefused(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Managers: 1, Workers: 1})
	ctx := ctxT(t)
	m := c.Manager()
	_, err := c.Client().UpdateNode(ctx, m.ID(), shoal.NodeUpdate{Role: rolePtr(shoal.Worker)})
	require.ErrorIs(t, err, shoal.ErrInvalidSpec)
	assert.ErrorContains(t, err, "last manager")
	assert.Equal(t, shoal.Manager, m.Shoal().Role())

	// A worker that is not ready cannot be promoted.
	w := c.Workers()[0]
	require.NoError(t, w.Stop())
	c.WaitFor("worker down", func() bool {
		n, err := c.Client().GetNode(ctx, w.ID())
		return err == nil && n.State == shoal.NodeDown
	})
	_, err = c.Client().UpdateNode(ctx, w.ID(), shoal.NodeUpdate{Role: rolePtr(shoal.Manager)})
	require.ErrorIs(t, err, shoal.ErrInvalidSpec)
	assert.ErrorContains(t, err, "ready")
	bad := shoal.NodeRole(7)
	_, err = c.Client().UpdateNode(ctx, w.ID(), shoal.NodeUpdate{Role: &bad})
	assert.ErrorIs(t, err, shoal.ErrInvalidSpec)
}

func TestPromotedNodeRestartsAsManager(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Managers: 1, Workers: 1})
	ctx := ctxT(t)
	w := c.Workers()[0]
	setRole(t, c, w, shoal.Manager)
	c.WaitFor("promoted node votes", func() bool { return voters(w) == 2 })
	raftID := w.Shoal().RaftID()
	require.NotZero(t, raftID)

	require.NoError(t, w.Stop())
	require.NoError(t, w.Restart())
	assert.Equal(t, shoal.Manager, w.Shoal().Role())
	assert.Equal(t, raftID, w.Shoal().RaftID())
	c.WaitFor("restarted manager votes", func() bool { return voters(w) == 2 })
	svc, err := w.Shoal().Client().CreateService(ctx, webSpec("web", 1))
	require.NoError(t, err)
	c.WaitFor("service visible on the original manager", func() bool {
		s, err := c.Manager().Shoal().Client().GetService(ctx, "web")
		return err == nil && s.ID == svc.ID
	})

	// Demoted again, then promoted again: a new Raft member with a new log.
	setRole(t, c, w, shoal.Worker)
	c.WaitFor("demoted", func() bool { return w.Shoal().Role() == shoal.Worker && voters(c.Manager()) == 1 })
	setRole(t, c, w, shoal.Manager)
	c.WaitFor("promoted again", func() bool { return voters(w) == 2 })
	assert.NotEqual(t, raftID, w.Shoal().RaftID())
}

// A manager without an agent has no dispatcher session, and a demoted member
// gets no more Raft messages: demoted while it was down, it learns of it on
// restart by asking the other managers, and comes back as a worker.
func TestManagerDemotedWhileDownRestartsAsWorker(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Managers: 3})
	ctx := ctxT(t)
	lead := c.Leader()
	require.NotNil(t, lead)
	var down *shoaltest.Node
	for _, m := range c.Managers() {
		if m != lead {
			down = m
			break
		}
	}
	require.NoError(t, down.Crash())
	c.WaitFor("down manager demoted", func() bool {
		_, err := lead.Shoal().Client().UpdateNode(ctx, down.ID(), shoal.NodeUpdate{Role: rolePtr(shoal.Worker)})
		return err == nil
	})
	c.WaitFor("two voters left", func() bool { return voters(lead) == 2 })

	require.NoError(t, down.Restart())
	c.WaitFor("restarted node is a worker", func() bool { return down.Shoal().Role() == shoal.Worker })
	assert.Zero(t, down.Shoal().RaftID())
	// As a worker it opens a session with the managers.
	c.WaitFor("worker ready", func() bool {
		n, err := lead.Shoal().Client().GetNode(ctx, down.ID())
		return err == nil && n.Role == shoal.Worker && n.State == shoal.NodeReady
	})
	assert.Equal(t, 2, voters(lead))
	// And it stays a worker across another restart.
	require.NoError(t, down.Crash())
	require.NoError(t, down.Restart())
	assert.Equal(t, shoal.Worker, down.Shoal().Role())
}
