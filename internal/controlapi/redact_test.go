package controlapi

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/gossipkeys"
	"github.com/shoalhq/shoal/internal/state"
)

func TestRedactHidesGossipKeys(t *testing.T) {
	g, err := gossipkeys.NewKeys(time.Unix(1000, 0))
	require.NoError(t, err)
	c := &api.Cluster{Id: "c", Gossip: g}
	r := Redact(c)
	assert.Empty(t, r.GetGossip().GetKeys())
	assert.Len(t, c.Gossip.Keys, 1, "the stored object is not modified")
}

func TestRedactServiceAndTask(t *testing.T) {
	auth := &api.RegistryAuth{Username: "u", Password: "secret"}
	svc := &api.Service{Id: "s", Spec: &api.ServiceSpec{Task: &api.TaskSpec{Image: "nginx", RegistryAuth: auth}}}
	r := RedactService(svc)
	assert.Nil(t, r.GetSpec().GetTask().GetRegistryAuth())
	assert.Equal(t, "nginx", r.GetSpec().GetTask().GetImage())
	assert.Same(t, auth, svc.Spec.Task.RegistryAuth, "the stored object is not modified")
	plain := &api.Service{Id: "p", Spec: &api.ServiceSpec{Task: &api.TaskSpec{Image: "nginx"}}}
	assert.Same(t, plain, RedactService(plain), "nothing to redact: no copy")

	task := &api.Task{Id: "t", Spec: &api.TaskSpec{Image: "nginx", RegistryAuth: auth}}
	rt := RedactTask(task)
	assert.Nil(t, rt.GetSpec().GetRegistryAuth())
	assert.Equal(t, "t", rt.GetId())
	assert.Same(t, auth, task.Spec.RegistryAuth)
	assert.Nil(t, RedactTask(nil))
	assert.Nil(t, RedactService(nil))
}

// secretSpec is a container service whose credentials must never come back.
func secretSpec(name string) *api.ServiceSpec {
	s := containerSpec(name)
	s.Task.RegistryAuth = &api.RegistryAuth{Username: "u", Password: "hunter2", IdentityToken: "it", RegistryToken: "rt"}
	return s
}

func assertNoSecret(t *testing.T, what string, m proto.Message) {
	t.Helper()
	b, err := protojson.Marshal(m)
	require.NoError(t, err)
	for _, secret := range []string{"hunter2", `"it"`, `"rt"`, "registryAuth", "registry_auth"} {
		assert.NotContains(t, string(b), secret, "%s leaks the registry credentials", what)
	}
}

// TestRegistryAuthNeverReturned stores a service and a task with registry
// credentials and reads them back through every RPC and the watch: the
// store keeps them, no answer carries them.
func TestRegistryAuthNeverReturned(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := newCheckedStore(t)
	s := New(st)
	stream := &fakeWatchStream{ctx: ctx, msgs: make(chan *api.WatchMessage, 100)}
	done := make(chan error, 1)
	go func() { done <- s.Watch(&api.WatchRequest{}, stream) }()
	<-stream.msgs

	created, err := s.CreateService(ctx, &api.CreateServiceRequest{Spec: secretSpec("web")})
	require.NoError(t, err)
	assertNoSecret(t, "CreateService", created)
	id := created.Service.Id
	var stored *api.Service
	st.View(func(tx state.ReadTx) { stored = tx.GetService(id) })
	require.Equal(t, "hunter2", stored.GetSpec().GetTask().GetRegistryAuth().GetPassword(), "the store keeps them")

	task := &api.Task{Id: "t1", ServiceId: id, Spec: proto.Clone(stored.Spec.Task).(*api.TaskSpec)}
	require.NoError(t, st.Update(ctx, func(tx state.WriteTx) error { return tx.CreateTask(task) }))
	require.NoError(t, st.Update(ctx, func(tx state.WriteTx) error {
		return tx.ModifyTask("t1", func(x *api.Task) error { x.NodeId = "n1"; return nil })
	}))

	got, err := s.GetService(ctx, &api.GetRequest{Id: id})
	require.NoError(t, err)
	assertNoSecret(t, "GetService", got)
	ls, err := s.ListServices(ctx, &api.ListServicesRequest{})
	require.NoError(t, err)
	assertNoSecret(t, "ListServices", ls)
	gt, err := s.GetTask(ctx, &api.GetRequest{Id: "t1"})
	require.NoError(t, err)
	assertNoSecret(t, "GetTask", gt)
	lt, err := s.ListTasks(ctx, &api.ListTasksRequest{})
	require.NoError(t, err)
	require.Len(t, lt.Tasks, 1)
	assertNoSecret(t, "ListTasks", lt)
	upd := containerSpec("web")
	upd.Task.Image = "nginx:1.14"
	updated, err := s.UpdateService(ctx, &api.UpdateServiceRequest{Id: id, Version: got.Service.Meta.Version, Spec: upd})
	require.NoError(t, err)
	assertNoSecret(t, "UpdateService", updated)
	_, err = s.RemoveService(ctx, &api.RemoveRequest{Id: id})
	require.NoError(t, err)

	// Created, updated (with the old object), task created and modified,
	// service updated and removed: every event, old objects included.
	var events []*api.WatchEvent
	require.Eventually(t, func() bool {
		for {
			select {
			case m := <-stream.msgs:
				events = append(events, m.Events...)
			default:
				return len(events) >= 5
			}
		}
	}, 5*time.Second, 5*time.Millisecond)
	for _, e := range events {
		assertNoSecret(t, "a watch event", e)
	}
	cancel()
	require.NoError(t, <-done)
}

// TestRegistryAuthUpdateRule: an update without credentials keeps the
// stored ones (clients never see them), an empty one removes them, and a
// spec without an image keeps none.
func TestRegistryAuthUpdateRule(t *testing.T) {
	ctx := context.Background()
	st := newCheckedStore(t)
	s := New(st)
	storedAuth := func(id string) *api.RegistryAuth {
		var svc *api.Service
		st.View(func(tx state.ReadTx) { svc = tx.GetService(id) })
		return svc.GetSpec().GetTask().GetRegistryAuth()
	}
	update := func(id string, spec *api.ServiceSpec) *api.Service {
		t.Helper()
		cur, err := s.GetService(ctx, &api.GetRequest{Id: id})
		require.NoError(t, err)
		resp, err := s.UpdateService(ctx, &api.UpdateServiceRequest{Id: id, Version: cur.Service.Meta.Version, Spec: spec})
		require.NoError(t, err)
		return resp.Service
	}

	empty := containerSpec("empty")
	empty.Task.RegistryAuth = &api.RegistryAuth{}
	resp, err := s.CreateService(ctx, &api.CreateServiceRequest{Spec: empty})
	require.NoError(t, err)
	assert.Nil(t, storedAuth(resp.Service.Id), "empty credentials are not stored")

	resp, err = s.CreateService(ctx, &api.CreateServiceRequest{Spec: secretSpec("web")})
	require.NoError(t, err)
	id := resp.Service.Id
	want := secretSpec("web").Task.RegistryAuth

	scaled := containerSpec("web")
	scaled.Mode = &api.ServiceSpec_Replicated{Replicated: &api.ReplicatedService{Replicas: 5}}
	svc := update(id, scaled)
	assert.True(t, proto.Equal(want, storedAuth(id)), "nil keeps the stored credentials")
	assert.Equal(t, uint64(1), svc.SpecVersion, "the task spec did not change: no redeploy")

	other := secretSpec("web")
	other.Task.RegistryAuth.Password = "new"
	svc = update(id, other)
	assert.Equal(t, "new", storedAuth(id).GetPassword(), "new credentials replace the stored ones")
	assert.Equal(t, uint64(2), svc.SpecVersion, "new credentials redeploy")

	removed := containerSpec("web")
	removed.Task.RegistryAuth = &api.RegistryAuth{}
	svc = update(id, removed)
	assert.Nil(t, storedAuth(id), "an empty RegistryAuth removes them")
	assert.Equal(t, uint64(3), svc.SpecVersion)

	update(id, secretSpec("web"))
	program := containerSpec("web")
	program.Task = &api.TaskSpec{Command: []string{"server"}}
	update(id, program)
	assert.Nil(t, storedAuth(id), "a spec without an image keeps no credentials")
}
