package dispatch

import (
	"reflect"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/runtime"
	"github.com/shoalhq/shoal/runtime/runtimetest"
)

// containerTask is a task with every field of its spec set.
func containerTask() *api.Task {
	return &api.Task{
		Id: "task1", ServiceId: "svc1", ServiceName: "web", Slot: 2, NodeId: "node1",
		ServiceLabels: map[string]string{"tier": "front"},
		Spec: &api.TaskSpec{
			Command: []string{"/entry"}, Args: []string{"-v"}, Env: []string{"A=1"}, Dir: "/srv",
			StopSignal: "SIGINT", StopGracePeriod: int64(3 * time.Second),
			Resources: &api.ResourceRequirements{
				Limits:       &api.Resources{NanoCpus: 2e9, MemoryBytes: 1 << 30, Pids: 100},
				Reservations: &api.Resources{NanoCpus: 1e9, MemoryBytes: 1 << 20},
			},
			Ports: []*api.PortConfig{{TargetPort: 80, PublishedPort: 8080, Mode: api.PublishMode_PUBLISH_MODE_HOST}},
			Image: "nginx:1.13@sha256:0000000000000000000000000000000000000000000000000000000000000000",
			User:  "nginx:nginx", Hostname: "{{.Service.Labels.tier}}-{{.Task.Slot}}-{{.Node.Hostname}}",
			Mounts: []*api.Mount{
				{Type: api.MountType_MOUNT_TYPE_BIND, Source: "/etc/app", Target: "/config", ReadOnly: true},
				{Type: api.MountType_MOUNT_TYPE_VOLUME, Source: "data", Target: "/data"},
				{Type: api.MountType_MOUNT_TYPE_TMPFS, Target: "/tmp", TmpfsSize: 1 << 20},
			},
			ReadOnlyRootfs: true, CapAdd: []string{"NET_ADMIN"}, CapDrop: []string{"ALL"},
			Sysctls:         map[string]string{"kernel.shmmax": "1024"},
			Ulimits:         []*api.Ulimit{{Name: "nofile", Soft: 1024, Hard: 4096}},
			Init:            true,
			ContainerLabels: map[string]string{"team": "a"},
			HostNetwork:     true,
			RegistryAuth:    &api.RegistryAuth{Username: "u", Password: "p", IdentityToken: "i", RegistryToken: "r"},
		},
	}
}

func TestRuntimeTask(t *testing.T) {
	full := runtime.Task{
		ID: "task1", ServiceID: "svc1", ServiceName: "web", Slot: 2, NodeID: "node1",
		Spec: runtime.Spec{
			Command: []string{"/entry"}, Args: []string{"-v"}, Env: []string{"A=1"}, Dir: "/srv",
			StopSignal: "SIGINT", StopGracePeriod: 3 * time.Second,
			Resources:    runtime.Resources{NanoCPUs: 2e9, MemoryBytes: 1 << 30, Pids: 100},
			Reservations: runtime.Resources{NanoCPUs: 1e9, MemoryBytes: 1 << 20},
			Ports:        []runtime.PortRequest{{Target: 80, Protocol: runtime.ProtocolTCP, HostPort: 8080}},
			Image:        "nginx:1.13@sha256:0000000000000000000000000000000000000000000000000000000000000000",
			RegistryAuth: runtime.RegistryAuth{Username: "u", Password: "p", IdentityToken: "i", RegistryToken: "r"},
			User:         "nginx:nginx", Hostname: "front-2-host-a",
			Mounts: []runtime.Mount{
				{Type: runtime.MountBind, Source: "/etc/app", Target: "/config", ReadOnly: true},
				{Type: runtime.MountVolume, Source: "data", Target: "/data"},
				{Type: runtime.MountTmpfs, Target: "/tmp", TmpfsSize: 1 << 20},
			},
			ReadOnlyRootfs: true, CapAdd: []string{"NET_ADMIN"}, CapDrop: []string{"ALL"},
			Sysctls: map[string]string{"kernel.shmmax": "1024"},
			Ulimits: []runtime.Ulimit{{Name: "nofile", Soft: 1024, Hard: 4096}},
			Init:    true, Labels: map[string]string{"team": "a"}, HostNetwork: true,
		},
	}
	tests := []struct {
		name    string
		task    func() *api.Task
		node    *api.NodeDescription
		want    runtime.Task
		wantErr string
	}{
		{name: "every field", task: containerTask, node: &api.NodeDescription{Hostname: "host-a"}, want: full},
		{name: "program", task: func() *api.Task {
			return &api.Task{Id: "t", Spec: &api.TaskSpec{Command: []string{"sleep"}, Args: []string{"10"}}}
		}, want: runtime.Task{ID: "t", Spec: runtime.Spec{Command: []string{"sleep"}, Args: []string{"10"}}}},
		{name: "no spec", task: func() *api.Task { return &api.Task{Id: "t"} }, want: runtime.Task{ID: "t"}},
		{name: "global hostname", task: func() *api.Task {
			return &api.Task{Id: "t", ServiceName: "agent", NodeId: "n9", Spec: &api.TaskSpec{Image: "busybox", Hostname: "{{.Task.Name}}"}}
		}, want: runtime.Task{ID: "t", ServiceName: "agent", NodeID: "n9", Spec: runtime.Spec{Image: "busybox", Hostname: "agent.n9.t"}}},
		{name: "unknown mount type keeps its number", task: func() *api.Task {
			return &api.Task{Id: "t", Spec: &api.TaskSpec{Image: "busybox", Mounts: []*api.Mount{{Type: 7, Target: "/x"}}}}
		}, want: runtime.Task{ID: "t", Spec: runtime.Spec{Image: "busybox", Mounts: []runtime.Mount{{Type: "7", Target: "/x"}}}}},
		{name: "template that does not execute", task: func() *api.Task {
			return &api.Task{Id: "t", Spec: &api.TaskSpec{Image: "busybox", Hostname: "{{.Service.Labels.zone}}"}}
		}, wantErr: `Spec.Hostname: template "{{.Service.Labels.zone}}"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := RuntimeTask(tc.task(), tc.node)
			if tc.wantErr != "" {
				require.ErrorIs(t, err, runtime.ErrInvalidTask)
				assert.Contains(t, err.Error(), tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
	// The full case sets every field of runtime.Spec: one added there and
	// not converted here fails.
	v := reflect.ValueOf(full.Spec)
	for i := range v.NumField() {
		assert.False(t, v.Field(i).IsZero(), "runtime.Spec.%s is not covered", v.Type().Field(i).Name)
	}
	got, err := RuntimeTask(containerTask(), &api.NodeDescription{Hostname: "host-a"})
	require.NoError(t, err)
	require.NoError(t, got.Validate(), "the converted task is valid")
}

func TestRuntimeTaskCopies(t *testing.T) {
	task := containerTask()
	got, err := RuntimeTask(task, nil)
	require.NoError(t, err)
	got.Spec.Command[0] = "changed"
	got.Spec.Sysctls["kernel.shmmax"] = "1"
	got.Spec.Labels["team"] = "b"
	assert.Equal(t, "/entry", task.Spec.Command[0])
	assert.Equal(t, "1024", task.Spec.Sysctls["kernel.shmmax"])
	assert.Equal(t, "a", task.Spec.ContainerLabels["team"])
}

// TestAgentExpandsHostname runs container tasks through an agent: the
// runtime gets the hostname expanded for the agent's node, and a template
// that does not execute there makes the task REJECTED with the error.
func TestAgentExpandsHostname(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	good := assignedTask("good", "n1")
	good.ServiceLabels = map[string]string{"tier": "front"}
	good.Spec = &api.TaskSpec{Image: "busybox", Hostname: "{{.Service.Labels.tier}}-{{.Task.Slot}}-{{.Node.Hostname}}",
		RegistryAuth: &api.RegistryAuth{Username: "u", Password: "p"}}
	bad := assignedTask("bad", "n1")
	bad.Spec = &api.TaskSpec{Image: "busybox", Hostname: "{{.Service.Labels.zone}}"}
	createTask(t, st, good)
	createTask(t, st, bad)
	s := startServer(t, st, agentServerConfig(), "")
	rt := runtimetest.New()
	startAgent(t, agentConfig("n1", newManagerList(s.addr).get, rt))
	sv := storeView{st}

	requireTaskState(t, sv, "good", api.TaskState_TASK_STATE_RUNNING)
	var got runtime.Task
	for _, rtask := range rt.Tasks() {
		if rtask.ID == "good" {
			got = rtask
		}
	}
	assert.Equal(t, "front-1-n1-host", got.Spec.Hostname)
	assert.Equal(t, runtime.RegistryAuth{Username: "u", Password: "p"}, got.Spec.RegistryAuth)

	requireTaskState(t, sv, "bad", api.TaskState_TASK_STATE_REJECTED)
	st1 := getTask(st, "bad").GetStatus()
	assert.Contains(t, st1.GetErr(), `Spec.Hostname: template "{{.Service.Labels.zone}}"`)
	assert.Contains(t, st1.GetErr(), `map has no entry for key "zone"`)
	_, known := rt.State("bad")
	assert.False(t, known, "the runtime never saw the rejected task")
}

// BenchmarkRuntimeTask is the agent's cost per task it starts: the
// conversion with a hostname template; BenchmarkRuntimeTaskPlain without.
func BenchmarkRuntimeTask(b *testing.B) {
	task, node := containerTask(), &api.NodeDescription{Hostname: "host-a"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := RuntimeTask(task, node); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRuntimeTaskPlain(b *testing.B) {
	task := containerTask()
	task.Spec.Hostname = "web"
	b.ReportAllocs()
	for b.Loop() {
		if _, err := RuntimeTask(task, nil); err != nil {
			b.Fatal(err)
		}
	}
}
