package state

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/shoalhq/shoal/internal/api"
)

// newInMemory and newStore build the stores of this package's tests with the
// immutability checker on, and fail the test if any stored object was
// modified in place by the end of it.
func newInMemory(t testing.TB, cfg Config) *Store {
	cfg.CheckImmutable = true
	s := newMemStore(cfg)
	t.Cleanup(func() { assert.NoError(t, s.Verify(), "stored objects were modified in place") })
	return s
}

func newStore(t testing.TB, cfg Config) *Store {
	cfg.CheckImmutable = true
	s := New(cfg)
	t.Cleanup(func() { assert.NoError(t, s.Verify(), "stored objects were modified in place") })
	return s
}

// snapshotCapturer is raftstore's optional interface, restated here so the
// store's conformance is checked without importing raftstore.
type snapshotCapturer interface {
	CaptureSnapshot() func() ([]byte, error)
}

var _ snapshotCapturer = (*Store)(nil)

func seed(t *testing.T, s *Store) {
	t.Helper()
	require.NoError(t, s.Update(context.Background(), func(tx WriteTx) error {
		if err := tx.CreateService(svc("s1", "web")); err != nil {
			return err
		}
		if err := tx.CreateNode(&api.Node{Id: "n1", Spec: &api.NodeSpec{Labels: map[string]string{"b": "2", "a": "1", "c": "3"}}}); err != nil {
			return err
		}
		for i := range 5 {
			if err := tx.CreateTask(task(fmt.Sprintf("t%d", i), "s1", uint64(i+1), "n1")); err != nil {
				return err
			}
		}
		return nil
	}))
}

func TestViewSharedReturnsStoredObjects(t *testing.T) {
	s := newInMemory(t, Config{})
	seed(t, s)
	var a, b *api.Service
	var ta, tb []*api.Task
	s.ViewShared(func(tx ReadTx) {
		a = tx.GetService("s1")
		ta, _ = tx.FindTasks(ByServiceID("s1"))
	})
	s.ViewShared(func(tx ReadTx) {
		b = tx.GetService("s1")
		tb, _ = tx.FindTasks(ByServiceID("s1"))
	})
	assert.Same(t, a, b, "ViewShared hands out the stored object, not a copy")
	require.Len(t, ta, 5)
	for i := range ta {
		assert.Same(t, ta[i], tb[i])
		assert.Equal(t, fmt.Sprintf("t%d", i), ta[i].Id, "sorted by ID")
	}
	var c *api.Service
	s.View(func(tx ReadTx) { c = tx.GetService("s1") })
	assert.NotSame(t, a, c, "View still copies")
	assert.True(t, proto.Equal(a, c))

	// A write stores a new object: the shared one keeps the old state.
	c.Spec.Name = "web2"
	require.NoError(t, s.Update(context.Background(), func(tx WriteTx) error { return tx.UpdateService(c) }))
	assert.Equal(t, "web", a.Spec.Name)
	s.ViewShared(func(tx ReadTx) { assert.Equal(t, "web2", tx.GetService("s1").Spec.Name) })
	s.ViewShared(func(tx ReadTx) {
		assert.Nil(t, tx.GetTask("nope"))
		_, err := tx.FindTasks(ByRole(api.NodeRole_NODE_ROLE_MANAGER))
		assert.Error(t, err, "selectors are checked as in View")
		both, err := tx.FindTasks(Or(ByServiceID("s1"), ByIDPrefix("t1")))
		require.NoError(t, err)
		assert.Len(t, both, 5, "Or names each object once")
	})
}

func TestCheckerCatchesModifiedSharedObject(t *testing.T) {
	s := New(Config{CheckImmutable: true})
	s.SetLog(&memLog{s: s})
	seed(t, s)
	require.NoError(t, s.Verify())

	s.ViewShared(func(tx ReadTx) {
		// The bug the checker exists for: a nested field of a shared object
		// modified in place.
		tx.GetTask("t3").Status.Message = "oops"
	})
	err := s.Verify()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "task t3")
	assert.NotContains(t, err.Error(), "task t1")
	assert.Error(t, s.Verify(), "a violation stays reported")
}

func TestCheckerCatchesModificationAfterReplace(t *testing.T) {
	// A reader keeps a shared object, a write replaces it, then the reader
	// modifies the old one (which watchers of the update still hold as Old).
	s := New(Config{CheckImmutable: true})
	s.SetLog(&memLog{s: s})
	seed(t, s)
	var kept *api.Node
	s.ViewShared(func(tx ReadTx) { kept = tx.GetNode("n1") })
	require.NoError(t, s.Update(context.Background(), func(tx WriteTx) error {
		n := tx.GetNode("n1")
		n.Spec.Labels["d"] = "4"
		return tx.UpdateNode(n)
	}))
	require.NoError(t, s.Verify())
	kept.Spec.Labels["e"] = "5"
	err := s.Verify()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "node n1")

	// Deleted objects are watched too.
	s2 := New(Config{CheckImmutable: true})
	s2.SetLog(&memLog{s: s2})
	seed(t, s2)
	var gone *api.Task
	s2.ViewShared(func(tx ReadTx) { gone = tx.GetTask("t0") })
	require.NoError(t, s2.Update(context.Background(), func(tx WriteTx) error { return tx.DeleteTask("t0") }))
	gone.NodeId = "elsewhere"
	require.ErrorContains(t, s2.Verify(), "task t0")
}

func TestCheckerCatchesModifiedWatchEvent(t *testing.T) {
	s := New(Config{CheckImmutable: true})
	s.SetLog(&memLog{s: s})
	w := s.Watch()
	defer w.Cancel()
	seed(t, s)
	e := <-w.C
	e.Service().Spec.Labels = map[string]string{"x": "y"}
	assert.ErrorContains(t, s.Verify(), "service s1")
}

func TestCheckerSurvivesRestoreAndRollback(t *testing.T) {
	src := newInMemory(t, Config{})
	seed(t, src)
	data, err := src.Snapshot()
	require.NoError(t, err)

	s := New(Config{CheckImmutable: true})
	require.NoError(t, s.Restore(src.Index(), data))
	require.NoError(t, s.Verify())
	// A rolled-back entry (second create of a taken name) leaves no false alarm.
	req := &api.StoreRequest{Actions: []*api.StoreAction{
		StoreAction(api.StoreAction_KIND_UPDATE, &api.Node{Id: "n1", Meta: &api.Meta{Version: src.Index()}}),
		StoreAction(api.StoreAction_KIND_CREATE, svc("s2", "WEB")),
	}}
	b, err := proto.Marshal(req)
	require.NoError(t, err)
	require.Error(t, s.Apply(src.Index()+1, b).(error))
	require.NoError(t, s.Verify())
	s.ViewShared(func(tx ReadTx) { tx.GetTask("t2").Slot = 99 })
	require.ErrorContains(t, s.Verify(), "task t2")
}

func TestCloseLogsViolations(t *testing.T) {
	var buf bytes.Buffer
	s := New(Config{CheckImmutable: true, Logger: slog.New(slog.NewTextHandler(&buf, nil))})
	s.SetLog(&memLog{s: s})
	seed(t, s)
	s.Close()
	assert.Empty(t, buf.String(), "nothing to report")
	s.ViewShared(func(tx ReadTx) { tx.GetService("s1").Spec.Name = "mutated" })
	s.Close()
	assert.Contains(t, buf.String(), "level=ERROR")
	assert.Contains(t, buf.String(), "service s1")
}

func TestCheckerOffVerifiesNothing(t *testing.T) {
	s := newMemStore(Config{})
	seed(t, s)
	s.ViewShared(func(tx ReadTx) { tx.GetTask("t1").Slot = 42 })
	assert.NoError(t, s.Verify(), "without CheckImmutable nothing is recorded")
}

// oldSnapshot is the encoding Snapshot had before CaptureSnapshot: each kind
// sorted by ID in an api.StoreSnapshot, marshaled deterministically.
func oldSnapshot(t *testing.T, s *Store) []byte {
	var snap api.StoreSnapshot
	s.View(func(tx ReadTx) {
		snap.Nodes, _ = tx.FindNodes(All())
		snap.Services, _ = tx.FindServices(All())
		snap.Tasks, _ = tx.FindTasks(All())
		snap.Clusters, _ = tx.FindClusters(All())
	})
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(&snap)
	require.NoError(t, err)
	return b
}

func TestCaptureSnapshotEncodesTheStateAtCapture(t *testing.T) {
	s := newInMemory(t, Config{})
	ctx := context.Background()
	seed(t, s)
	require.NoError(t, s.Update(ctx, func(tx WriteTx) error {
		return tx.CreateCluster(&api.Cluster{Id: "c1", Spec: &api.ClusterSpec{Name: "default"}})
	}))
	want := oldSnapshot(t, s)
	idx := s.Index()
	encode := s.CaptureSnapshot()

	// More applies after the capture: updates, creates, deletes, from
	// several goroutines, while the capture is encoded concurrently.
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				assert.NoError(t, s.Update(ctx, func(tx WriteTx) error {
					if err := tx.CreateTask(task(fmt.Sprintf("new%d-%d", g, i), "s1", 9, "n2")); err != nil {
						return err
					}
					// Each goroutine modifies its own task: no conflicts.
					return tx.ModifyTask(fmt.Sprintf("t%d", g), func(x *api.Task) error {
						x.Status = &api.TaskStatus{State: api.TaskState_TASK_STATE_RUNNING, Message: fmt.Sprint(g, i)}
						return nil
					})
				}))
			}
		}()
	}
	got := make([][]byte, 2)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			got[i], err = encode()
			assert.NoError(t, err)
		}()
	}
	require.NoError(t, s.Update(ctx, func(tx WriteTx) error {
		if err := tx.DeleteTask("t4"); err != nil {
			return err
		}
		n := tx.GetNode("n1")
		n.Spec.Labels["z"] = "26"
		return tx.UpdateNode(n)
	}))
	wg.Wait()
	assert.Equal(t, want, got[0], "the capture encodes the state at capture time")
	assert.Equal(t, want, got[1], "and encodes the same each time")
	again, err := encode()
	require.NoError(t, err)
	assert.Equal(t, want, again)

	// The capture restores to exactly that state; the live store has moved on.
	r := newStore(t, Config{})
	require.NoError(t, r.Restore(idx, want))
	r.View(func(tx ReadTx) {
		all, _ := tx.FindTasks(All())
		assert.Len(t, all, 5)
		assert.Equal(t, api.TaskState_TASK_STATE_NEW, tx.GetTask("t0").Status.State)
		assert.NotContains(t, tx.GetNode("n1").Spec.Labels, "z")
	})
	now, err := s.Snapshot()
	require.NoError(t, err)
	assert.NotEqual(t, want, now)
	assert.Equal(t, oldSnapshot(t, s), now, "Snapshot keeps the encoding it always had")
}

func TestSnapshotOfEmptyStore(t *testing.T) {
	s := newStore(t, Config{})
	b, err := s.Snapshot()
	require.NoError(t, err)
	assert.Empty(t, b)
	r := newStore(t, Config{})
	require.NoError(t, r.Restore(3, b))
	assert.Equal(t, uint64(3), r.Index())
}

// BenchmarkSnapshot measures CaptureSnapshot (on the raft loop) and the
// encoding (off it) of 1,000 nodes, 100 services and 10,000 tasks.
func BenchmarkSnapshot(b *testing.B) {
	s := newMemStore(Config{})
	require.NoError(b, s.Update(context.Background(), func(tx WriteTx) error {
		for i := range 1000 {
			if err := tx.CreateNode(&api.Node{Id: fmt.Sprintf("n%04d", i), Spec: &api.NodeSpec{Labels: map[string]string{"zone": "a", "rack": fmt.Sprint(i)}}}); err != nil {
				return err
			}
		}
		for i := range 100 {
			if err := tx.CreateService(svc(fmt.Sprintf("s%03d", i), fmt.Sprintf("web%d", i))); err != nil {
				return err
			}
		}
		for i := range 10000 {
			if err := tx.CreateTask(task(fmt.Sprintf("t%05d", i), fmt.Sprintf("s%03d", i%100), uint64(i/100+1), fmt.Sprintf("n%04d", i%1000))); err != nil {
				return err
			}
		}
		return nil
	}))
	b.Run("capture", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = s.CaptureSnapshot()
		}
	})
	b.Run("capture+encode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := s.CaptureSnapshot()(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkReadService compares View and ViewShared for the orchestrator's
// per-service read: a service, its 100 tasks, every node and the cluster.
func BenchmarkReadService(b *testing.B) {
	s := newMemStore(Config{})
	require.NoError(b, s.Update(context.Background(), func(tx WriteTx) error {
		for i := range 50 {
			if err := tx.CreateNode(&api.Node{Id: fmt.Sprintf("n%02d", i)}); err != nil {
				return err
			}
		}
		if err := tx.CreateService(svc("s1", "web")); err != nil {
			return err
		}
		for i := range 100 {
			if err := tx.CreateTask(task(fmt.Sprintf("t%03d", i), "s1", uint64(i+1), fmt.Sprintf("n%02d", i%50))); err != nil {
				return err
			}
		}
		return tx.CreateCluster(&api.Cluster{Id: "c1", Spec: &api.ClusterSpec{Name: "default"}})
	}))
	read := func(tx ReadTx) {
		_ = tx.GetService("s1")
		_, _ = tx.FindTasks(ByServiceID("s1"))
		_, _ = tx.FindNodes(All())
		_, _ = tx.FindClusters(All())
	}
	b.Run("View", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			s.View(read)
		}
	})
	b.Run("ViewShared", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			s.ViewShared(read)
		}
	})
}

// ExampleStore_ViewShared reads without copies on a hot path, then changes
// an object the only allowed way: clone, modify the clone, write it.
func ExampleStore_ViewShared() {
	s := newMemStore(Config{CheckImmutable: true})
	ctx := context.Background()
	_ = s.Update(ctx, func(tx WriteTx) error {
		return tx.CreateService(&api.Service{Id: "s1", Spec: &api.ServiceSpec{Name: "web"}})
	})

	var shared *api.Service
	s.ViewShared(func(tx ReadTx) { shared = tx.GetService("s1") }) // the stored object: read only

	c := proto.Clone(shared).(*api.Service)
	c.Spec.Name = "api"
	if err := s.Update(ctx, func(tx WriteTx) error { return tx.UpdateService(c) }); err != nil {
		fmt.Println(err)
	}
	fmt.Println(shared.Spec.Name, "->", c.Spec.Name, "verify:", s.Verify())
	// Output: web -> api verify: <nil>
}

// ExampleStore_CaptureSnapshot captures the state on the caller's goroutine
// and encodes it elsewhere while writes continue.
func ExampleStore_CaptureSnapshot() {
	s := newMemStore(Config{})
	ctx := context.Background()
	_ = s.Update(ctx, func(tx WriteTx) error { return tx.CreateNode(&api.Node{Id: "n1"}) })
	encode := s.CaptureSnapshot() // cheap: no encoding yet
	_ = s.Update(ctx, func(tx WriteTx) error { return tx.CreateNode(&api.Node{Id: "n2"}) })
	data, err := encode()
	if err != nil {
		fmt.Println(err)
		return
	}
	r := New(Config{})
	_ = r.Restore(1, data)
	r.View(func(tx ReadTx) {
		nodes, _ := tx.FindNodes(All())
		fmt.Println(len(nodes), "node in the capture")
	})
	// Output: 1 node in the capture
}
