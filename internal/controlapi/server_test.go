package controlapi

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/state"
	"github.com/shoalhq/shoal/internal/state/statetest"
)

func spec(name string, replicas uint64) *api.ServiceSpec {
	return &api.ServiceSpec{
		Name: name,
		Mode: &api.ServiceSpec_Replicated{Replicated: &api.ReplicatedService{Replicas: replicas}},
		Task: &api.TaskSpec{Command: []string{"sleep", "100"}},
	}
}

func TestValidateServiceSpec(t *testing.T) {
	mod := func(f func(s *api.ServiceSpec)) *api.ServiceSpec {
		s := spec("web", 1)
		f(s)
		return s
	}
	tests := []struct {
		name string
		spec *api.ServiceSpec
		want string // "" = valid
	}{
		{"valid", spec("web", 3), ""},
		{"nil", nil, "ServiceSpec: is required"},
		{"no name", mod(func(s *api.ServiceSpec) { s.Name = "" }), "ServiceSpec.Name: is required"},
		{"bad name", mod(func(s *api.ServiceSpec) { s.Name = "-x" }), "ServiceSpec.Name: \"-x\" must be"},
		{"long name", mod(func(s *api.ServiceSpec) { s.Name = string(make([]byte, 64)) }), "ServiceSpec.Name"},
		{"no mode", mod(func(s *api.ServiceSpec) { s.Mode = nil }), "ServiceSpec.Mode: must be replicated or global"},
		{"global", mod(func(s *api.ServiceSpec) { s.Mode = &api.ServiceSpec_Global{Global: &api.GlobalService{}} }), ""},
		{"no command", mod(func(s *api.ServiceSpec) { s.Task.Command = nil }), "ServiceSpec.Task.Command: is required"},
		{"empty program", mod(func(s *api.ServiceSpec) { s.Task.Command = []string{""} }), "ServiceSpec.Task.Command: is required"},
		{"bad env", mod(func(s *api.ServiceSpec) { s.Task.Env = []string{"A=1", "B"} }), "ServiceSpec.Task.Env[1]: \"B\" must have the form KEY=value"},
		{"bad signal", mod(func(s *api.ServiceSpec) { s.Task.StopSignal = "SIGNOPE" }), "ServiceSpec.Task.StopSignal"},
		{"good signal", mod(func(s *api.ServiceSpec) { s.Task.StopSignal = "SIGINT" }), ""},
		{"negative grace", mod(func(s *api.ServiceSpec) { s.Task.StopGracePeriod = -1 }), "ServiceSpec.Task.StopGracePeriod: must be >= 0"},
		{"negative memory", mod(func(s *api.ServiceSpec) {
			s.Task.Resources = &api.ResourceRequirements{Reservations: &api.Resources{MemoryBytes: -1}}
		}), "ServiceSpec.Task.Reservations.MemoryBytes: must be >= 0"},
		{"reservation over limit", mod(func(s *api.ServiceSpec) {
			s.Task.Resources = &api.ResourceRequirements{Reservations: &api.Resources{NanoCpus: 2e9}, Limits: &api.Resources{NanoCpus: 1e9}}
		}), "ServiceSpec.Task.Reservations.NanoCPUs: must not exceed Limits.NanoCPUs"},
		{"bad constraint", mod(func(s *api.ServiceSpec) {
			s.Task.Placement = &api.Placement{Constraints: []string{"node.labels.zone=a"}}
		}), `constraint "node.labels.zone=a"`},
		{"good constraint", mod(func(s *api.ServiceSpec) {
			s.Task.Placement = &api.Placement{Constraints: []string{"node.labels.zone==a", "node.role!=manager"}}
		}), ""},
		{"bad preference", mod(func(s *api.ServiceSpec) {
			s.Task.Placement = &api.Placement{Preferences: []string{"spread=node.labels.zone", "spread=zone"}}
		}), "ServiceSpec.Task.Preferences"},
		{"good preferences", mod(func(s *api.ServiceSpec) {
			s.Task.Placement = &api.Placement{Preferences: []string{"spread=node.labels.zone", "spread=node.labels.rack"}}
		}), ""},
		{"bad restart", mod(func(s *api.ServiceSpec) { s.Task.Restart = &api.RestartPolicy{Condition: 9} }), "ServiceSpec.Task.Restart.Condition"},
		{"negative restart delay", mod(func(s *api.ServiceSpec) { s.Task.Restart = &api.RestartPolicy{Delay: -1} }), "ServiceSpec.Task.Restart.Delay: must be >= 0"},
		{"negative update delay", mod(func(s *api.ServiceSpec) { s.Update = &api.UpdateConfig{Delay: -1} }), "ServiceSpec.Update.Delay: must be >= 0"},
		{"start-first", mod(func(s *api.ServiceSpec) {
			s.Update = &api.UpdateConfig{Order: api.UpdateOrder_UPDATE_ORDER_START_FIRST}
			s.Task.Ports = []*api.PortConfig{{TargetPort: 80}}
		}), ""},
		{"start-first with a host-mode port", mod(func(s *api.ServiceSpec) {
			s.Update = &api.UpdateConfig{Order: api.UpdateOrder_UPDATE_ORDER_START_FIRST}
			s.Task.Ports = []*api.PortConfig{{TargetPort: 80}, {TargetPort: 81, PublishedPort: 8081, Mode: api.PublishMode_PUBLISH_MODE_HOST}}
		}), "ServiceSpec.Update.Order: start-first runs a slot's old and new task at once, which ServiceSpec.Ports[1]"},
		{"empty label key", mod(func(s *api.ServiceSpec) { s.Labels = map[string]string{" ": "x"} }), "ServiceSpec.Labels: keys must not be empty"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateServiceSpec(tc.spec)
			if tc.want == "" {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.ErrorIs(t, err, errdefs.ErrInvalidSpec)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestValidateNodeAndClusterSpec(t *testing.T) {
	assert.NoError(t, ValidateNodeSpec(&api.NodeSpec{Availability: api.NodeAvailability_NODE_AVAILABILITY_DRAIN}))
	assert.ErrorContains(t, ValidateNodeSpec(&api.NodeSpec{Availability: 7}), "NodeUpdate.Availability")
	assert.ErrorContains(t, ValidateNodeSpec(&api.NodeSpec{DesiredRole: 5}), "NodeUpdate.Role")
	assert.ErrorContains(t, ValidateNodeSpec(&api.NodeSpec{Labels: map[string]string{"": "x"}}), "NodeUpdate.Labels")
	assert.NoError(t, ValidateClusterSpec(&api.ClusterSpec{TaskHistoryLimit: 5, HeartbeatPeriod: int64(time.Second)}))
	assert.ErrorContains(t, ValidateClusterSpec(&api.ClusterSpec{TaskHistoryLimit: -1}), "ClusterSpec.TaskHistoryLimit: must be >= 0")
	assert.ErrorContains(t, ValidateClusterSpec(&api.ClusterSpec{HeartbeatPeriod: 1}), "ClusterSpec.HeartbeatPeriod: must be at least 10ms")
}

func gerr(err error) error { return errdefs.FromGRPC(err) }

// newCheckedStore returns an in-memory store with the immutability checker
// on: the test fails if anything modified a stored object in place, such as
// a response of a read RPC (they share the stored objects).
func newCheckedStore(t *testing.T) *state.Store {
	t.Helper()
	st := statetest.NewStore(state.Config{CheckImmutable: true})
	t.Cleanup(func() { assert.NoError(t, st.Verify(), "stored objects were modified in place") })
	return st
}

func TestServiceLifecycle(t *testing.T) {
	ctx := context.Background()
	st := newCheckedStore(t)
	s := New(st)

	resp, err := s.CreateService(ctx, &api.CreateServiceRequest{Spec: spec("web", 3)})
	require.NoError(t, err)
	svc := resp.Service
	assert.Len(t, svc.Id, 25)
	assert.Equal(t, uint64(1), svc.SpecVersion)

	_, err = s.CreateService(ctx, &api.CreateServiceRequest{Spec: spec("WEB", 1)})
	assert.ErrorIs(t, gerr(err), errdefs.ErrExist, "names are unique case-insensitively")
	_, err = s.CreateService(ctx, &api.CreateServiceRequest{Spec: spec("", 1)})
	assert.ErrorIs(t, gerr(err), errdefs.ErrInvalidSpec)

	// Lookup by ID, name and prefix.
	for _, ref := range []string{svc.Id, "web", svc.Id[:6]} {
		got, err := s.GetService(ctx, &api.GetRequest{Id: ref})
		require.NoError(t, err, ref)
		assert.Equal(t, svc.Id, got.Service.Id)
	}
	_, err = s.GetService(ctx, &api.GetRequest{Id: "nope"})
	assert.ErrorIs(t, gerr(err), errdefs.ErrNotFound)

	// Scale only: SpecVersion stays. Task change: it bumps.
	sp := spec("web", 5)
	up, err := s.UpdateService(ctx, &api.UpdateServiceRequest{Id: svc.Id, Version: svc.Meta.Version, Spec: sp})
	require.NoError(t, err)
	assert.Equal(t, uint64(1), up.Service.SpecVersion)
	_, err = s.UpdateService(ctx, &api.UpdateServiceRequest{Id: svc.Id, Version: svc.Meta.Version, Spec: sp})
	assert.ErrorIs(t, gerr(err), errdefs.ErrConflict, "stale version")
	sp2 := spec("web", 5)
	sp2.Task.Env = []string{"A=1"}
	up2, err := s.UpdateService(ctx, &api.UpdateServiceRequest{Id: svc.Id, Version: up.Service.Meta.Version, Spec: sp2})
	require.NoError(t, err)
	assert.Equal(t, uint64(2), up2.Service.SpecVersion)
	glob := spec("web", 0)
	glob.Mode = &api.ServiceSpec_Global{Global: &api.GlobalService{}}
	_, err = s.UpdateService(ctx, &api.UpdateServiceRequest{Id: svc.Id, Version: up2.Service.Meta.Version, Spec: glob})
	assert.ErrorContains(t, gerr(err), "ServiceSpec.Mode: cannot change")

	list, err := s.ListServices(ctx, &api.ListServicesRequest{})
	require.NoError(t, err)
	assert.Len(t, list.Services, 1)

	_, err = s.RemoveService(ctx, &api.RemoveRequest{Id: "web"})
	require.NoError(t, err)
	_, err = s.RemoveService(ctx, &api.RemoveRequest{Id: "web"})
	assert.ErrorIs(t, gerr(err), errdefs.ErrNotFound)
}

func TestNodesAndTasks(t *testing.T) {
	ctx := context.Background()
	st := newCheckedStore(t)
	s := New(st)
	require.NoError(t, st.Update(ctx, func(tx state.WriteTx) error {
		for _, n := range []*api.Node{
			{Id: "n1", Description: &api.NodeDescription{Hostname: "one"}, Status: &api.NodeStatus{State: api.NodeState_NODE_STATE_READY}},
			{Id: "n2", Description: &api.NodeDescription{Hostname: "two"}, Status: &api.NodeStatus{State: api.NodeState_NODE_STATE_DOWN}},
			{Id: "m1", Role: api.NodeRole_NODE_ROLE_MANAGER, Spec: &api.NodeSpec{DesiredRole: api.NodeRole_NODE_ROLE_MANAGER}},
		} {
			if err := tx.CreateNode(n); err != nil {
				return err
			}
		}
		for _, tk := range []*api.Task{
			{Id: "t1", ServiceId: "s1", Slot: 1, NodeId: "n1", DesiredState: api.TaskState_TASK_STATE_RUNNING},
			{Id: "t2", ServiceId: "s1", Slot: 2, NodeId: "n2", DesiredState: api.TaskState_TASK_STATE_SHUTDOWN},
			{Id: "t3", ServiceId: "s2", Slot: 1, NodeId: "n1", DesiredState: api.TaskState_TASK_STATE_RUNNING},
		} {
			if err := tx.CreateTask(tk); err != nil {
				return err
			}
		}
		return nil
	}))

	lt, err := s.ListTasks(ctx, &api.ListTasksRequest{ServiceIds: []string{"s1"}})
	require.NoError(t, err)
	assert.Len(t, lt.Tasks, 2)
	lt, err = s.ListTasks(ctx, &api.ListTasksRequest{NodeIds: []string{"n1"}})
	require.NoError(t, err)
	assert.Len(t, lt.Tasks, 2)
	lt, err = s.ListTasks(ctx, &api.ListTasksRequest{ServiceIds: []string{"s1"}, DesiredStates: []api.TaskState{api.TaskState_TASK_STATE_RUNNING}})
	require.NoError(t, err)
	assert.Len(t, lt.Tasks, 1)

	up, err := s.UpdateNode(ctx, &api.UpdateNodeRequest{Id: "one", Spec: &api.NodeSpec{Availability: api.NodeAvailability_NODE_AVAILABILITY_DRAIN}})
	require.NoError(t, err)
	assert.Equal(t, api.NodeAvailability_NODE_AVAILABILITY_DRAIN, up.Node.Spec.Availability)
	_, err = s.UpdateNode(ctx, &api.UpdateNodeRequest{Id: "n1", Spec: &api.NodeSpec{DesiredRole: api.NodeRole_NODE_ROLE_MANAGER}})
	assert.ErrorContains(t, gerr(err), "NodeUpdate.Role")

	_, err = s.RemoveNode(ctx, &api.RemoveRequest{Id: "n1"})
	assert.ErrorContains(t, gerr(err), "not down")
	_, err = s.RemoveNode(ctx, &api.RemoveRequest{Id: "m1", Force: true})
	assert.ErrorContains(t, gerr(err), "is a manager")
	_, err = s.RemoveNode(ctx, &api.RemoveRequest{Id: "n2"})
	require.NoError(t, err)
	_, err = s.RemoveNode(ctx, &api.RemoveRequest{Id: "n1", Force: true})
	require.NoError(t, err)
	ln, err := s.ListNodes(ctx, &api.ListNodesRequest{})
	require.NoError(t, err)
	assert.Len(t, ln.Nodes, 1)
}

// fakeWatchStream collects what Watch sends.
type fakeWatchStream struct {
	grpc.ServerStream
	ctx  context.Context
	msgs chan *api.WatchMessage
}

func (f *fakeWatchStream) Context() context.Context       { return f.ctx }
func (f *fakeWatchStream) Send(m *api.WatchMessage) error { f.msgs <- m; return nil }
func (f *fakeWatchStream) SetHeader(metadata.MD) error    { return nil }

func TestWatchFilters(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := newCheckedStore(t)
	s := New(st)
	stream := &fakeWatchStream{ctx: ctx, msgs: make(chan *api.WatchMessage, 100)}
	done := make(chan error, 1)
	go func() {
		done <- s.Watch(&api.WatchRequest{Kinds: []api.ObjectKind{api.ObjectKind_OBJECT_KIND_TASK}, ServiceIds: []string{"s1"}}, stream)
	}()
	first := <-stream.msgs
	assert.Empty(t, first.Events, "first message marks the watch as established")
	require.NoError(t, st.Update(ctx, func(tx state.WriteTx) error {
		if err := tx.CreateTask(&api.Task{Id: "other", ServiceId: "s2"}); err != nil {
			return err
		}
		return tx.CreateNode(&api.Node{Id: "n"})
	}))
	require.NoError(t, st.Update(ctx, func(tx state.WriteTx) error { return tx.CreateTask(&api.Task{Id: "mine", ServiceId: "s1"}) }))
	select {
	case m := <-stream.msgs:
		require.Len(t, m.Events, 1)
		assert.Equal(t, "mine", m.Events[0].Object.GetTask().Id)
		assert.Equal(t, api.StoreAction_KIND_CREATE, m.Events[0].Action)
	case <-time.After(5 * time.Second):
		t.Fatal("no event")
	}
	cancel()
	require.NoError(t, <-done)
}
