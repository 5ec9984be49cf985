package state

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/clock/clocktest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func svc(id, name string) *api.Service {
	return &api.Service{Id: id, Spec: &api.ServiceSpec{Name: name, Mode: &api.ServiceSpec_Replicated{Replicated: &api.ReplicatedService{Replicas: 1}}}}
}

func task(id, service string, slot uint64, node string) *api.Task {
	return &api.Task{Id: id, ServiceId: service, Slot: slot, NodeId: node, DesiredState: api.TaskState_TASK_STATE_RUNNING,
		Status: &api.TaskStatus{State: api.TaskState_TASK_STATE_NEW}}
}

func TestCreateGetAndVersion(t *testing.T) {
	s := newInMemory(t, Config{})
	ctx := context.Background()
	require.NoError(t, s.Update(ctx, func(tx WriteTx) error { return tx.CreateService(svc("s1", "web")) }))
	var got *api.Service
	s.View(func(tx ReadTx) { got = tx.GetService("s1") })
	require.NotNil(t, got)
	assert.Equal(t, "web", got.Spec.Name)
	assert.Equal(t, uint64(1), got.Meta.Version)
	assert.NotZero(t, got.Meta.CreatedAt)

	// Reads are copies: modifying one does not change the store.
	got.Spec.Name = "changed"
	s.View(func(tx ReadTx) { assert.Equal(t, "web", tx.GetService("s1").Spec.Name) })

	// Update with the current version succeeds and bumps it.
	got.Spec.Name = "web2"
	require.NoError(t, s.Update(ctx, func(tx WriteTx) error { return tx.UpdateService(got) }))
	s.View(func(tx ReadTx) {
		cur := tx.GetService("s1")
		assert.Equal(t, "web2", cur.Spec.Name)
		assert.Equal(t, uint64(2), cur.Meta.Version)
	})
	// A second update from the stale copy fails with ErrConflict and changes nothing.
	got.Spec.Name = "web3"
	err := s.Update(ctx, func(tx WriteTx) error { return tx.UpdateService(got) })
	require.ErrorIs(t, err, ErrConflict)
	s.View(func(tx ReadTx) { assert.Equal(t, "web2", tx.GetService("s1").Spec.Name) })
}

func TestErrors(t *testing.T) {
	s := newInMemory(t, Config{})
	ctx := context.Background()
	require.NoError(t, s.Update(ctx, func(tx WriteTx) error { return tx.CreateService(svc("s1", "web")) }))
	tests := []struct {
		name string
		fn   func(tx WriteTx) error
		want error
	}{
		{"duplicate id", func(tx WriteTx) error { return tx.CreateService(svc("s1", "other")) }, ErrExist},
		{"duplicate name any case", func(tx WriteTx) error { return tx.CreateService(svc("s2", "WEB")) }, ErrExist},
		{"update missing", func(tx WriteTx) error { return tx.UpdateService(svc("nope", "x")) }, ErrNotFound},
		{"delete missing", func(tx WriteTx) error { return tx.DeleteTask("nope") }, ErrNotFound},
		{"missing id", func(tx WriteTx) error { return tx.CreateTask(&api.Task{}) }, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := s.Update(ctx, tc.fn)
			require.Error(t, err)
			if tc.want != nil {
				assert.ErrorIs(t, err, tc.want)
			}
		})
	}
	// Nothing was written by the failed transactions.
	s.View(func(tx ReadTx) {
		all, err := tx.FindServices(All())
		require.NoError(t, err)
		assert.Len(t, all, 1)
	})
}

func TestTransactionIsAtomicAtApply(t *testing.T) {
	// Two transactions read the same version; the second to apply conflicts
	// and none of its changes (including creates) become visible.
	s := newInMemory(t, Config{})
	ctx := context.Background()
	require.NoError(t, s.Update(ctx, func(tx WriteTx) error { return tx.CreateService(svc("s1", "web")) }))
	var stale *api.Service
	s.View(func(tx ReadTx) { stale = tx.GetService("s1") })
	require.NoError(t, s.Update(ctx, func(tx WriteTx) error {
		cur := tx.GetService("s1")
		cur.Spec.Labels = map[string]string{"a": "1"}
		return tx.UpdateService(cur)
	}))
	// Propose directly an action list built from the stale version.
	err := s.Update(ctx, func(tx WriteTx) error {
		if err := tx.CreateTask(task("t1", "s1", 1, "")); err != nil {
			return err
		}
		return tx.UpdateService(stale)
	})
	require.ErrorIs(t, err, ErrConflict)
	s.View(func(tx ReadTx) { assert.Nil(t, tx.GetTask("t1")) })
}

func TestApplyChecksVersions(t *testing.T) {
	// The apply path itself rejects stale versions, as a follower or a racing
	// proposer would produce them.
	s := newInMemory(t, Config{})
	ctx := context.Background()
	require.NoError(t, s.Update(ctx, func(tx WriteTx) error { return tx.CreateService(svc("s1", "web")) }))
	req := &api.StoreRequest{Actions: []*api.StoreAction{{
		Kind:   api.StoreAction_KIND_UPDATE,
		Target: &api.StoreAction_Service{Service: &api.Service{Id: "s1", Meta: &api.Meta{Version: 99}, Spec: &api.ServiceSpec{Name: "x"}}},
	}}}
	data, err := proto.Marshal(req)
	require.NoError(t, err)
	res := s.Apply(100, data)
	require.ErrorIs(t, res.(error), ErrConflict)
	assert.Equal(t, uint64(100), s.Index())
	s.View(func(tx ReadTx) { assert.Equal(t, "web", tx.GetService("s1").Spec.Name) })
	// Garbage entries are reported, not fatal.
	res = s.Apply(101, []byte{0xff, 0xff, 0xff})
	require.Error(t, res.(error))
}

func TestReadYourWritesInTx(t *testing.T) {
	s := newInMemory(t, Config{})
	ctx := context.Background()
	require.NoError(t, s.Update(ctx, func(tx WriteTx) error {
		for i := 1; i <= 3; i++ {
			if err := tx.CreateTask(task(fmt.Sprintf("t%d", i), "s1", uint64(i), "n1")); err != nil {
				return err
			}
		}
		ts, err := tx.FindTasks(ByServiceID("s1"))
		require.NoError(t, err)
		assert.Len(t, ts, 3)
		// Update a task created in this same transaction, then delete another.
		t1 := tx.GetTask("t1")
		t1.NodeId = "n2"
		if err := tx.UpdateTask(t1); err != nil {
			return err
		}
		return tx.DeleteTask("t3")
	}))
	s.View(func(tx ReadTx) {
		assert.Equal(t, "n2", tx.GetTask("t1").NodeId)
		assert.Nil(t, tx.GetTask("t3"))
		onN1, err := tx.FindTasks(ByNodeID("n1"))
		require.NoError(t, err)
		assert.Len(t, onN1, 1)
	})
}

func TestFindSelectors(t *testing.T) {
	s := newInMemory(t, Config{})
	ctx := context.Background()
	require.NoError(t, s.Update(ctx, func(tx WriteTx) error {
		for _, tk := range []*api.Task{task("a1", "sa", 1, "n1"), task("a2", "sa", 2, "n2"), task("b1", "sb", 1, "n1")} {
			if err := tx.CreateTask(tk); err != nil {
				return err
			}
		}
		n := &api.Node{Id: "n1", Role: api.NodeRole_NODE_ROLE_MANAGER, Description: &api.NodeDescription{Hostname: "Host-1"}}
		return tx.CreateNode(n)
	}))
	s.View(func(tx ReadTx) {
		tests := []struct {
			by   By
			want int
		}{
			{All(), 3}, {ByIDPrefix("a"), 2}, {ByServiceID("sa"), 2}, {ByNodeID("n1"), 2},
			{ByIDPrefix("zz"), 0}, {ByServiceID("none"), 0},
			{Or(ByServiceID("sa"), ByNodeID("n1")), 3},
		}
		for _, tc := range tests {
			got, err := tx.FindTasks(tc.by)
			require.NoError(t, err)
			assert.Len(t, got, tc.want, "%+v", tc.by)
		}
		_, err := tx.FindNodes(ByServiceID("sa"))
		assert.Error(t, err, "service selector does not apply to nodes")
		nodes, err := tx.FindNodes(ByName("host-1"))
		require.NoError(t, err)
		assert.Len(t, nodes, 1)
		nodes, err = tx.FindNodes(ByRole(api.NodeRole_NODE_ROLE_MANAGER))
		require.NoError(t, err)
		assert.Len(t, nodes, 1)
	})
}

func TestTaskStateNeverMovesBackward(t *testing.T) {
	s := newInMemory(t, Config{})
	ctx := context.Background()
	require.NoError(t, s.Update(ctx, func(tx WriteTx) error { return tx.CreateTask(task("t1", "s", 1, "n")) }))
	setState := func(st api.TaskState) {
		require.NoError(t, s.UpdateRetry(ctx, 3, func(tx WriteTx) error {
			cur := tx.GetTask("t1")
			cur.Status = &api.TaskStatus{State: st, Message: st.String()}
			return tx.UpdateTask(cur)
		}))
	}
	setState(api.TaskState_TASK_STATE_RUNNING)
	setState(api.TaskState_TASK_STATE_ASSIGNED) // late report: ignored
	s.View(func(tx ReadTx) {
		assert.Equal(t, api.TaskState_TASK_STATE_RUNNING, tx.GetTask("t1").Status.State)
	})
	setState(api.TaskState_TASK_STATE_FAILED)
	setState(api.TaskState_TASK_STATE_RUNNING)
	s.View(func(tx ReadTx) {
		assert.Equal(t, api.TaskState_TASK_STATE_FAILED, tx.GetTask("t1").Status.State)
	})
}

func TestWatchEvents(t *testing.T) {
	s := newInMemory(t, Config{})
	ctx := context.Background()
	w := s.Watch(KindIs(KindTask))
	defer w.Cancel()
	require.NoError(t, s.Update(ctx, func(tx WriteTx) error {
		if err := tx.CreateService(svc("s1", "web")); err != nil {
			return err
		}
		return tx.CreateTask(task("t1", "s1", 1, ""))
	}))
	require.NoError(t, s.Update(ctx, func(tx WriteTx) error {
		cur := tx.GetTask("t1")
		cur.NodeId = "n1"
		return tx.UpdateTask(cur)
	}))
	require.NoError(t, s.Update(ctx, func(tx WriteTx) error { return tx.DeleteTask("t1") }))

	want := []Action{ActionCreate, ActionUpdate, ActionDelete}
	for i, a := range want {
		select {
		case e := <-w.C:
			assert.Equal(t, a, e.Action, "event %d", i)
			assert.Equal(t, KindTask, e.Kind)
			assert.Equal(t, "t1", e.Task().Id)
			if a == ActionUpdate {
				assert.Equal(t, "", e.Old.(*api.Task).NodeId)
				assert.Equal(t, "n1", e.Task().NodeId)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no event %d", i)
		}
	}
	w.Cancel()
	_, ok := <-w.C
	assert.False(t, ok, "channel closes on cancel")
	assert.ErrorIs(t, w.Err(), ErrWatchCancelled)
}

func TestViewAndWatchMissesNothing(t *testing.T) {
	s := newInMemory(t, Config{})
	ctx := context.Background()
	const n = 300
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < n; i++ {
			_ = s.Update(ctx, func(tx WriteTx) error { return tx.CreateTask(task(fmt.Sprintf("t%04d", i), "s", uint64(i), "")) })
		}
	}()
	time.Sleep(time.Millisecond) // let some writes land before the snapshot
	seen := map[string]bool{}
	w := s.ViewAndWatch(func(tx ReadTx) {
		ts, err := tx.FindTasks(All())
		require.NoError(t, err)
		for _, tk := range ts {
			seen[tk.Id] = true
		}
	})
	defer w.Cancel()
	for len(seen) < n {
		select {
		case e := <-w.C:
			require.False(t, seen[e.Task().Id], "task %s seen twice", e.Task().Id)
			seen[e.Task().Id] = true
		case <-time.After(10 * time.Second):
			t.Fatalf("only %d of %d tasks seen", len(seen), n)
		}
	}
	wg.Wait()
}

func TestWatchOverflowClosesWatcher(t *testing.T) {
	s := newInMemory(t, Config{WatchBuffer: 10})
	ctx := context.Background()
	w := s.Watch()
	defer w.Cancel()
	// The reader never reads: after the channel's own buffer and 10 queued
	// events, the watcher is closed.
	for i := 0; i < 200; i++ {
		require.NoError(t, s.Update(ctx, func(tx WriteTx) error { return tx.CreateTask(task(fmt.Sprintf("t%d", i), "s", 1, "")) }))
	}
	require.Eventually(t, func() bool { return errors.Is(w.Err(), ErrWatchOverflow) }, 5*time.Second, time.Millisecond)
	for range w.C {
	}
}

func TestSnapshotRestore(t *testing.T) {
	s := newInMemory(t, Config{})
	ctx := context.Background()
	require.NoError(t, s.Update(ctx, func(tx WriteTx) error {
		if err := tx.CreateService(svc("s1", "web")); err != nil {
			return err
		}
		if err := tx.CreateNode(&api.Node{Id: "n1"}); err != nil {
			return err
		}
		if err := tx.CreateCluster(&api.Cluster{Id: "c1", Spec: &api.ClusterSpec{Name: "default"}}); err != nil {
			return err
		}
		for i := 0; i < 50; i++ {
			if err := tx.CreateTask(task(fmt.Sprintf("t%d", i), "s1", uint64(i), "n1")); err != nil {
				return err
			}
		}
		return nil
	}))
	data, err := s.Snapshot()
	require.NoError(t, err)

	s2 := newStore(t, Config{})
	w := s2.Watch()
	require.NoError(t, s2.Restore(s.Index(), data))
	_, ok := <-w.C
	assert.False(t, ok, "watchers are reset by a restore")
	assert.ErrorIs(t, w.Err(), ErrWatchReset)

	data2, err := s2.Snapshot()
	require.NoError(t, err)
	assert.Equal(t, data, data2, "restored state snapshots identically")
	assert.Equal(t, s.Index(), s2.Index())
	s2.View(func(tx ReadTx) {
		ts, err := tx.FindTasks(ByServiceID("s1"))
		require.NoError(t, err)
		assert.Len(t, ts, 50)
		assert.NotNil(t, tx.GetCluster("c1"))
	})
	require.Error(t, s2.Restore(1, []byte{0xff}), "garbage snapshot is refused")
	s2.View(func(tx ReadTx) { assert.NotNil(t, tx.GetService("s1"), "refused restore keeps the state") })
}

func TestNoLog(t *testing.T) {
	s := newStore(t, Config{})
	err := s.Update(context.Background(), func(tx WriteTx) error { return tx.CreateNode(&api.Node{Id: "n"}) })
	assert.ErrorIs(t, err, ErrNoLog)
}

func TestCloseEndsWatchers(t *testing.T) {
	s := newInMemory(t, Config{})
	w := s.Watch()
	s.Close()
	_, ok := <-w.C
	assert.False(t, ok)
	assert.ErrorIs(t, w.Err(), ErrStoreClosed)
	w.Cancel() // safe after close
}

func BenchmarkUpdateInMemory(b *testing.B) {
	s := newMemStore(Config{})
	ctx := context.Background()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		id := fmt.Sprintf("t%d", i)
		if err := s.Update(ctx, func(tx WriteTx) error { return tx.CreateTask(task(id, "s", 1, "n")) }); err != nil {
			b.Fatal(err)
		}
	}
}

func TestWriteTxIndexesSeeOverlay(t *testing.T) {
	s := newInMemory(t, Config{})
	ctx := context.Background()
	require.NoError(t, s.Update(ctx, func(tx WriteTx) error {
		for i := 1; i <= 3; i++ {
			if err := tx.CreateTask(task(fmt.Sprintf("t%d", i), "s1", uint64(i), "n1")); err != nil {
				return err
			}
		}
		return nil
	}))
	require.NoError(t, s.Update(ctx, func(tx WriteTx) error {
		t1 := tx.GetTask("t1")
		t1.NodeId = "n2"
		require.NoError(t, tx.UpdateTask(t1))
		require.NoError(t, tx.DeleteTask("t3"))
		require.NoError(t, tx.CreateTask(task("t4", "s1", 4, "n1")))
		onN1, err := tx.FindTasks(ByNodeID("n1"))
		require.NoError(t, err)
		ids := []string{}
		for _, x := range onN1 {
			ids = append(ids, x.Id)
		}
		assert.Equal(t, []string{"t2", "t4"}, ids, "moved, deleted and created tasks are seen in the index")
		onN2, err := tx.FindTasks(ByNodeID("n2"))
		require.NoError(t, err)
		assert.Len(t, onN2, 1)
		all, err := tx.FindTasks(All())
		require.NoError(t, err)
		assert.Len(t, all, 3)
		// Outside the transaction nothing has changed yet.
		return nil
	}))
	s.View(func(tx ReadTx) {
		onN1, _ := tx.FindTasks(ByNodeID("n1"))
		assert.Len(t, onN1, 2)
		assert.Equal(t, "n2", tx.GetTask("t1").NodeId)
	})
}

func TestApplyRollsBackAFailedEntry(t *testing.T) {
	// Two services with one name in one entry (as a buggy or malicious
	// proposer could write it): the second fails and the first is undone.
	s := newInMemory(t, Config{})
	require.NoError(t, s.Update(context.Background(), func(tx WriteTx) error { return tx.CreateNode(&api.Node{Id: "n"}) }))
	req := &api.StoreRequest{Actions: []*api.StoreAction{
		StoreAction(api.StoreAction_KIND_CREATE, svc("a", "web")),
		StoreAction(api.StoreAction_KIND_UPDATE, &api.Node{Id: "n", Meta: &api.Meta{Version: 1}, Spec: &api.NodeSpec{Labels: map[string]string{"x": "y"}}}),
		StoreAction(api.StoreAction_KIND_CREATE, svc("b", "WEB")),
	}}
	data, err := proto.Marshal(req)
	require.NoError(t, err)
	res := s.Apply(5, data)
	require.ErrorIs(t, res.(error), ErrExist)
	s.View(func(tx ReadTx) {
		assert.Nil(t, tx.GetService("a"))
		assert.Nil(t, tx.GetService("b"))
		assert.Empty(t, tx.GetNode("n").GetSpec().GetLabels(), "the update in the failed entry was undone")
		byName, err := tx.FindServices(ByName("web"))
		require.NoError(t, err)
		assert.Empty(t, byName, "indexes were undone too")
	})
	assert.Equal(t, uint64(5), s.Index())
}

func TestDuplicateEntryGetsTheFirstOutcome(t *testing.T) {
	// A forwarded proposal retried after its connection broke can reach the
	// log twice: the second copy must report the first one's outcome (not a
	// conflict) and change nothing.
	s := newInMemory(t, Config{})
	ctx := context.Background()
	require.NoError(t, s.Update(ctx, func(tx WriteTx) error { return tx.CreateService(svc("s1", "web")) }))
	var cur *api.Service
	s.View(func(tx ReadTx) { cur = tx.GetService("s1") })
	cur.Spec.Labels = map[string]string{"v": "1"}
	req := &api.StoreRequest{
		Actions:   []*api.StoreAction{StoreAction(api.StoreAction_KIND_UPDATE, cur)},
		RequestId: []byte("0123456789abcdef"),
	}
	data, err := proto.Marshal(req)
	require.NoError(t, err)
	w := s.Watch()
	defer w.Cancel()
	assert.Nil(t, s.Apply(10, data))
	assert.Nil(t, s.Apply(11, data), "the duplicate reports the first outcome")
	s.View(func(tx ReadTx) { assert.Equal(t, uint64(10), tx.GetService("s1").Meta.Version, "applied once") })
	e := <-w.C
	assert.Equal(t, uint64(10), e.Index)
	select {
	case e := <-w.C:
		t.Fatalf("the duplicate produced an event: %+v", e)
	case <-time.After(50 * time.Millisecond):
	}
	// A different request with the same stale content conflicts as usual.
	req.RequestId = []byte("fedcba9876543210")
	data, err = proto.Marshal(req)
	require.NoError(t, err)
	assert.ErrorIs(t, s.Apply(12, data).(error), ErrConflict)
}

func TestRecentRequestsWindow(t *testing.T) {
	var r recentRequests
	for i := 0; i < recentWindow+10; i++ {
		r.add([]byte(fmt.Sprintf("id%d", i)), nil)
	}
	_, ok := r.lookup([]byte("id0"))
	assert.False(t, ok, "the oldest IDs are forgotten")
	_, ok = r.lookup([]byte(fmt.Sprintf("id%d", recentWindow+9)))
	assert.True(t, ok)
	assert.Len(t, r.results, recentWindow)
	_, ok = r.lookup(nil)
	assert.False(t, ok)
}

// Two writes planned from the same state that publish the same ingress port
// (two managers allocating at once): the one applied second fails with
// ErrConflict, and the index follows updates and deletes.
func TestPublishedPortUniqueAtApply(t *testing.T) {
	s := newInMemory(t, Config{})
	ctx := context.Background()
	svc := func(id string, port uint32) *api.Service {
		return &api.Service{Id: id, Spec: &api.ServiceSpec{Name: id},
			Endpoint: &api.Endpoint{Ports: []*api.PortConfig{{TargetPort: 80, PublishedPort: port}}}}
	}
	require.NoError(t, s.Update(ctx, func(tx WriteTx) error { return tx.CreateService(svc("a", 30000)) }))
	err := s.Update(ctx, func(tx WriteTx) error { return tx.CreateService(svc("b", 30000)) })
	require.ErrorIs(t, err, ErrConflict)
	assert.Contains(t, err.Error(), "30000/tcp")
	// The same port over UDP, or in host mode, is another port.
	udp := svc("c", 30000)
	udp.Endpoint.Ports[0].Protocol = api.PortProtocol_PORT_PROTOCOL_UDP
	require.NoError(t, s.Update(ctx, func(tx WriteTx) error { return tx.CreateService(udp) }))
	host := svc("d", 30000)
	host.Endpoint.Ports[0].Mode = api.PublishMode_PUBLISH_MODE_HOST
	require.NoError(t, s.Update(ctx, func(tx WriteTx) error { return tx.CreateService(host) }))
	var found []*api.Service
	s.View(func(tx ReadTx) {
		found, _ = tx.FindServices(ByPublishedPort(PublishedPortKey(30000, api.PortProtocol_PORT_PROTOCOL_TCP)))
	})
	require.Len(t, found, 1)
	assert.Equal(t, "a", found[0].Id)
	// Moving a to another port frees 30000; deleting frees its new port.
	require.NoError(t, s.Update(ctx, func(tx WriteTx) error {
		a := tx.GetService("a")
		a.Endpoint.Ports[0].PublishedPort = 30001
		return tx.UpdateService(a)
	}))
	require.NoError(t, s.Update(ctx, func(tx WriteTx) error { return tx.CreateService(svc("b", 30000)) }))
	require.NoError(t, s.Update(ctx, func(tx WriteTx) error { return tx.DeleteService("a") }))
	require.NoError(t, s.Update(ctx, func(tx WriteTx) error { return tx.CreateService(svc("e", 30001)) }))
}

func TestMetaTimestampsComeFromTheClock(t *testing.T) {
	clk := clocktest.NewFake()
	s := newInMemory(t, Config{Clock: clk})
	ctx := context.Background()
	created := clk.Now().UnixNano()
	require.NoError(t, s.Update(ctx, func(tx WriteTx) error { return tx.CreateTask(task("t1", "s1", 1, "n1")) }))
	clk.Advance(time.Minute)
	require.NoError(t, s.Update(ctx, func(tx WriteTx) error {
		return tx.ModifyTask("t1", func(tk *api.Task) error { tk.NodeId = "n2"; return nil })
	}))
	var got *api.Task
	s.View(func(tx ReadTx) { got = tx.GetTask("t1") })
	assert.Equal(t, created, got.Meta.CreatedAt)
	assert.Equal(t, clk.Now().UnixNano(), got.Meta.UpdatedAt)
}
