package shoal_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal"
	"github.com/shoalhq/shoal/shoaltest"
)

// follower returns a running manager that does not lead.
func follower(c *shoaltest.Cluster) *shoaltest.Node {
	for _, m := range c.Managers() {
		if sn := m.Shoal(); sn != nil && !sn.IsLeader() {
			return m
		}
	}
	return nil
}

// createRetrying creates a service through cl, retrying while the cluster
// has no leader (an election in progress).
func createRetrying(t *testing.T, c *shoaltest.Cluster, cl *shoal.Client, spec shoal.ServiceSpec) *shoal.Service {
	t.Helper()
	var svc *shoal.Service
	c.WaitFor("service "+spec.Name+" created", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var err error
		svc, err = cl.CreateService(ctx, spec)
		if errors.Is(err, shoal.ErrExist) {
			svc, err = cl.GetService(ctx, spec.Name)
		}
		return err == nil
	})
	return svc
}

func TestThreeManagersServeTheAPIEverywhere(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Managers: 3, Workers: 2})
	ctx := ctxT(t)
	f := follower(c)
	require.NotNil(t, f)
	// A write through a follower is forwarded to the leader.
	svc, err := f.Shoal().Client().CreateService(ctx, webSpec("web", 4))
	require.NoError(t, err)
	c.WaitRunning(svc.ID, 4)
	// Every manager reads it from its own store.
	for _, m := range c.Managers() {
		c.WaitFor("service replicated to "+m.Name, func() bool {
			s, err := m.Shoal().Client().GetService(ctx, "web")
			return err == nil && s.ID == svc.ID
		})
	}
	nodes, err := f.Shoal().Client().ListNodes(ctx)
	require.NoError(t, err)
	leaders := 0
	for _, n := range nodes {
		if n.Leader {
			leaders++
			assert.Equal(t, shoal.Manager, n.Role)
		}
	}
	assert.Equal(t, 1, leaders, "exactly one manager is listed as leader")
	// Stale versions conflict through a follower too.
	_, err = f.Shoal().Client().UpdateService(ctx, svc.ID, svc.Version, svc.Spec)
	require.NoError(t, err)
	_, err = f.Shoal().Client().UpdateService(ctx, svc.ID, svc.Version, svc.Spec)
	assert.ErrorIs(t, err, shoal.ErrConflict)
}

func testLeaderCrash(t *testing.T, managers int) {
	c := shoaltest.Start(t, shoaltest.Options{Managers: managers, Workers: 2})
	ctx := ctxT(t)
	svc, err := c.Client().CreateService(ctx, webSpec("web", 4))
	require.NoError(t, err)
	c.WaitRunning(svc.ID, 4)

	old := c.Leader()
	require.NotNil(t, old)
	require.NoError(t, old.Crash())
	c.WaitFor("a new leader", func() bool { l := c.Leader(); return l != nil && l != old })
	cl := c.Client()
	svc2 := createRetrying(t, c, cl, webSpec("after", 2))
	c.WaitRunning(svc2.ID, 2)
	// The workers follow the new leader's dispatcher: a scale-up is carried out.
	_, err = cl.ScaleService(ctx, svc.ID, 6)
	require.NoError(t, err)
	c.WaitRunning(svc.ID, 6)

	// The old leader comes back as a follower with all the state.
	require.NoError(t, old.Restart())
	c.WaitFor("restarted manager has the new service", func() bool {
		s, err := old.Shoal().Client().GetService(ctx, "after")
		return err == nil && s.ID == svc2.ID
	})
}

func TestLeaderCrashThreeManagers(t *testing.T) { testLeaderCrash(t, 3) }

func TestLeaderCrashFiveManagers(t *testing.T) { testLeaderCrash(t, 5) }

func TestFiveManagersSurviveTwoFailures(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Managers: 5, Workers: 1})
	ctx := ctxT(t)
	var stopped []*shoaltest.Node
	for _, m := range c.Managers() {
		if len(stopped) == 2 {
			break
		}
		if !m.Shoal().IsLeader() {
			require.NoError(t, m.Crash())
			stopped = append(stopped, m)
		}
	}
	svc := createRetrying(t, c, c.Client(), webSpec("web", 2))
	c.WaitRunning(svc.ID, 2)
	_, err := c.Client().ScaleService(ctx, svc.ID, 3)
	require.NoError(t, err)
	c.WaitRunning(svc.ID, 3)
}

func TestLeaderInMinorityStepsDownAndWritesFailFast(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Managers: 3, Workers: 1})
	ctx := ctxT(t)
	old := c.Leader()
	require.NotNil(t, old)
	var majority []*shoaltest.Node
	for _, m := range c.Managers() {
		if m != old {
			majority = append(majority, m)
		}
	}
	c.Isolate(old)
	c.WaitFor("majority elects a new leader", func() bool { l := c.Leader(); return l != nil && l != old })

	// The old leader has stepped down; a write through it fails fast with
	// ErrNoQuorum, and says how many managers it reaches.
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	start := time.Now()
	_, err := old.Shoal().Client().CreateService(wctx, webSpec("lost", 1))
	require.Error(t, err)
	assert.ErrorIs(t, err, shoal.ErrNoQuorum)
	assert.Contains(t, err.Error(), "reachable")
	assert.Less(t, time.Since(start), 15*time.Second, "fails well before the caller's deadline")
	// Reads still work on the minority side, and say they may be stale.
	var info shoal.ReadInfo
	_, err = old.Shoal().Client().ListServices(shoal.WithReadInfo(ctx, &info))
	require.NoError(t, err)
	assert.True(t, info.Stale)
	assert.Contains(t, info.Reason, "reachable")
	var fresh shoal.ReadInfo
	_, err = majority[0].Shoal().Client().ListServices(shoal.WithReadInfo(ctx, &fresh))
	require.NoError(t, err)
	assert.False(t, fresh.Stale, "the majority serves current reads")

	// The majority serves writes.
	svc := createRetrying(t, c, majority[0].Shoal().Client(), webSpec("kept", 1))
	c.Heal()
	c.WaitFor("old leader catches up", func() bool {
		s, err := old.Shoal().Client().GetService(ctx, "kept")
		return err == nil && s.ID == svc.ID
	})
	_, err = old.Shoal().Client().GetService(ctx, "lost")
	assert.ErrorIs(t, err, shoal.ErrNotFound, "the write that failed left nothing behind")
}

func TestAllManagersRestart(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Managers: 3, Workers: 1})
	ctx := ctxT(t)
	for i := 0; i < 3; i++ {
		_, err := c.Client().CreateService(ctx, webSpec(fmt.Sprintf("s%d", i), 1))
		require.NoError(t, err)
	}
	for _, m := range c.Managers() {
		require.NoError(t, m.Stop())
	}
	for _, m := range c.Managers() {
		go func() { _ = m.Restart() }() // a manager waits for a quorum to be ready
	}
	c.WaitFor("all managers back", func() bool {
		for _, m := range c.Managers() {
			if m.Shoal() == nil {
				return false
			}
		}
		return c.Leader() != nil
	})
	services, err := c.Client().ListServices(ctx)
	require.NoError(t, err)
	assert.Len(t, services, 3)
}

func TestRemoveManagersKeepsQuorum(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Managers: 3})
	ctx := ctxT(t)
	var down *shoaltest.Node
	for _, m := range c.Managers() {
		if !m.Shoal().IsLeader() {
			down = m
			break
		}
	}
	downID := down.ID()
	require.NoError(t, down.Crash())
	// Let the leader notice (a few election timeouts at shoaltest's 10 ms
	// ticks): reachability is judged from recent contact.
	time.Sleep(time.Second)

	// With one of three managers down, removing a live one would leave one
	// reachable voter of two: refused, naming the rule.
	var live *shoaltest.Node
	for _, m := range c.Managers() {
		if m != down && !m.Shoal().IsLeader() {
			live = m
		}
	}
	err := c.Client().RemoveNode(ctx, live.ID(), true)
	require.Error(t, err)
	assert.ErrorIs(t, err, shoal.ErrNoQuorum)
	assert.Contains(t, err.Error(), "reachable")

	// Removing the dead one is fine, through any manager (forwarded to the
	// leader); the cluster then has two voters and keeps working.
	// (Managers in shoaltest run no agent, so none is marked down: force.)
	require.NoError(t, live.Shoal().Client().RemoveNode(ctx, downID, true))
	_, err = c.Client().GetNode(ctx, downID)
	assert.ErrorIs(t, err, shoal.ErrNotFound)
	voters, _, err := c.Leader().Shoal().RaftMembers(ctx)
	require.NoError(t, err)
	assert.Equal(t, 2, voters)
	createRetrying(t, c, c.Client(), webSpec("after", 0))
}

func TestForceNewClusterFromOneSurvivor(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Managers: 3, Workers: 1})
	ctx := ctxT(t)
	svc, err := c.Client().CreateService(ctx, webSpec("web", 2))
	require.NoError(t, err)
	c.WaitRunning(svc.ID, 2)

	// Two of three managers are lost for good: no quorum.
	managers := c.Managers()
	survivor := managers[0]
	for _, m := range managers[1:] {
		require.NoError(t, m.Crash())
	}
	require.NoError(t, survivor.Stop())

	// The survivor restarts as a new one-manager cluster with all the state.
	require.NoError(t, survivor.RestartWith(func(cfg *shoal.Config) { cfg.ForceNewCluster = true }))
	c.WaitFor("the survivor leads", func() bool { return survivor.Shoal().IsLeader() })
	cl := survivor.Shoal().Client()
	got, err := cl.GetService(ctx, "web")
	require.NoError(t, err)
	assert.Equal(t, svc.ID, got.ID)
	voters, _, err := survivor.Shoal().RaftMembers(ctx)
	require.NoError(t, err)
	assert.Equal(t, 1, voters)
	// It takes writes, and the worker follows it.
	_, err = cl.ScaleService(ctx, svc.ID, 3)
	require.NoError(t, err)
	c.WaitRunning(svc.ID, 3)

	// A second restart, without the flag, is still the one-manager cluster.
	require.NoError(t, survivor.Stop())
	require.NoError(t, survivor.Restart())
	c.WaitFor("the survivor leads again", func() bool { return survivor.Shoal().IsLeader() })
	_, err = survivor.Shoal().Client().GetService(ctx, "web")
	require.NoError(t, err)
}

// A write of several MiB (beyond gRPC's default 4 MiB message) replicates to
// every manager, through a follower too; one beyond the log's entry limit is
// refused with ErrTooLarge and writes nothing.
func TestLargeWritesReplicateAndOversizedAreRefused(t *testing.T) {
	// Default Raft timing: shoaltest's 10 ms ticks give a leader 100 ms to hear
	// from a quorum, less than moving a 5 MiB entry can take under -race.
	c := shoaltest.Start(t, shoaltest.Options{Managers: 3, Configure: func(_ string, cfg *shoal.Config) {
		cfg.Raft.TickInterval = 100 * time.Millisecond
	}})
	ctx := ctxT(t)
	f := follower(c)
	require.NotNil(t, f)
	big := func(name string, size int) shoal.ServiceSpec {
		return shoal.ServiceSpec{Name: name, Task: shoal.TaskSpec{Command: []string{"x"},
			Env: []string{"BLOB=" + strings.Repeat("b", size)}}}
	}
	svc, err := f.Shoal().Client().CreateService(ctx, big("five-mib", 5<<20))
	require.NoError(t, err)
	for _, m := range c.Managers() {
		c.WaitFor("5 MiB service replicated to "+m.Name, func() bool {
			s, err := m.Shoal().Client().GetService(ctx, "five-mib")
			return err == nil && s.ID == svc.ID
		})
	}
	for _, m := range []*shoaltest.Node{f, c.Leader()} {
		_, err = m.Shoal().Client().CreateService(ctx, big("nine-mib", 9<<20))
		require.ErrorIs(t, err, shoal.ErrTooLarge, "through %s", m.Name)
		assert.Contains(t, err.Error(), "limit")
	}
	_, err = f.Shoal().Client().GetService(ctx, "nine-mib")
	require.ErrorIs(t, err, shoal.ErrNotFound)
}

// TestManagerStatusAndAgentlessManagersReady: docker node ls's MANAGER
// STATUS (Leader, Reachable, Unreachable) is in NodeInfo, and a manager
// without an agent (shoaltest's managers run none) is READY while the
// leader hears from it and DOWN once it does not.
func TestManagerStatusAndAgentlessManagersReady(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Managers: 3, Workers: 1})
	ctx := ctxT(t)
	statuses := func() map[string]shoal.NodeInfo {
		nodes, err := c.Client().ListNodes(ctx)
		if err != nil {
			return nil
		}
		out := map[string]shoal.NodeInfo{}
		for _, n := range nodes {
			out[n.Hostname] = *n
		}
		return out
	}
	c.WaitFor("managers ready, one leader and two reachable", func() bool {
		st := statuses()
		leaders, reachable := 0, 0
		for _, m := range c.Managers() {
			n, ok := st[m.Name]
			if !ok || n.State != shoal.NodeReady || n.Role != shoal.Manager {
				return false
			}
			switch n.ManagerStatus {
			case shoal.Leader:
				leaders++
			case shoal.Reachable:
				reachable++
			}
		}
		return leaders == 1 && reachable == 2
	})
	st := statuses()
	w := c.Workers()[0]
	assert.Equal(t, shoal.NotManager, st[w.Name].ManagerStatus, "a worker has no manager status")
	assert.Equal(t, "", st[w.Name].ManagerStatus.String())
	assert.Equal(t, "Leader", shoal.Leader.String())
	for _, m := range c.Managers() {
		assert.Contains(t, st[m.Name].StateMessage, "runs no tasks", "the message says why it has no tasks")
	}

	f := follower(c)
	require.NotNil(t, f)
	require.NoError(t, f.Stop())
	c.WaitFor("the stopped manager is unreachable and down", func() bool {
		n, ok := statuses()[f.Name]
		return ok && n.ManagerStatus == shoal.Unreachable && n.State == shoal.NodeDown
	})
	require.NoError(t, f.Restart())
	c.WaitFor("the restarted manager is reachable and ready again", func() bool {
		n, ok := statuses()[f.Name]
		return ok && n.ManagerStatus == shoal.Reachable && n.State == shoal.NodeReady
	})
}
