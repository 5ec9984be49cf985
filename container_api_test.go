package shoal_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal"
	"github.com/shoalhq/shoal/runtime"
	"github.com/shoalhq/shoal/runtime/runtimetest"
	"github.com/shoalhq/shoal/shoaltest"
)

const containerSecret = "hunter2-registry-password"

func containerServiceSpec() shoal.ServiceSpec {
	return shoal.ServiceSpec{
		Name:     "web",
		Labels:   map[string]string{"tier": "front"},
		Replicas: 1,
		Task: shoal.TaskSpec{
			Image:    "127.0.0.1:1/library/nginx:1.13",
			Command:  []string{"/docker-entrypoint.sh"},
			Args:     []string{"nginx", "-g", "daemon off;"},
			User:     "101:101",
			Hostname: "{{.Service.Labels.tier}}-{{.Task.Slot}}-{{.Node.Hostname}}",
			Mounts: []shoal.Mount{
				{Type: shoal.MountBind, Source: "/etc/app", Target: "/config", ReadOnly: true},
				{Type: shoal.MountVolume, Source: "cache", Target: "/var/cache/nginx"},
				{Type: shoal.MountTmpfs, Target: "/tmp", TmpfsSize: 1 << 20},
			},
			ReadOnlyRootfs:  true,
			CapAdd:          []string{"NET_ADMIN"},
			CapDrop:         []string{"ALL"},
			Sysctls:         map[string]string{"net.core.somaxconn": "1024"},
			Ulimits:         []shoal.Ulimit{{Name: "nofile", Soft: 1024, Hard: 4096}},
			Init:            true,
			ContainerLabels: map[string]string{"team": "a"},
			RegistryAuth:    &shoal.RegistryAuth{Username: "deploy", Password: containerSecret},
			Reservations:    shoal.Resources{MemoryBytes: 64 << 20},
			Limits:          shoal.Resources{MemoryBytes: 128 << 20, Pids: 200},
		},
	}
}

// runningContainer returns the runtime task the fake runtime of the node
// running service svc's task was given, waiting for a running one with
// spec version at least minVersion, and the IDs of the nodes that hold a
// task of the service.
func runningContainer(t *testing.T, c *shoaltest.Cluster, svc string, minVersion uint64) (runtime.Task, []string) {
	t.Helper()
	var task *shoal.Task
	c.WaitFor("a running task of the new spec", func() bool {
		for _, tk := range c.Tasks(svc) {
			if tk.Status.State == shoal.TaskRunning && tk.SpecVersion >= minVersion {
				task = tk
				return true
			}
		}
		return false
	})
	var got runtime.Task
	var holders []string
	for _, w := range c.Workers() {
		for _, rt := range w.Fake().Tasks() {
			if rt.ServiceID != svc {
				continue
			}
			holders = append(holders, w.ID())
			if rt.ID == task.ID {
				got = rt
			}
		}
	}
	require.Equal(t, task.ID, got.ID, "the task's node runs it")
	return got, holders
}

// TestContainerServiceEndToEnd: every container field of a public TaskSpec
// reaches the runtime of the node that runs the task, the hostname expanded
// for it, with the registry credentials; no answer of the API (reads,
// writes, watch events) carries the credentials and no log line has them.
func TestContainerServiceEndToEnd(t *testing.T) {
	var logs lockedBuffer // every node's log, every level
	c := shoaltest.Start(t, shoaltest.Options{Workers: 2,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	ctx := ctxT(t)
	cl := c.Client()
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	events, err := cl.Watch(wctx, shoal.WatchFilter{})
	require.NoError(t, err)

	spec := containerServiceSpec()
	svc, err := cl.CreateService(ctx, spec)
	require.NoError(t, err)
	require.Len(t, svc.Warnings, 1, "the manager has no image resolver: the tag is kept")
	assert.Contains(t, svc.Warnings[0], "image 127.0.0.1:1/library/nginx:1.13 could not be accessed on a registry to record its digest")
	assert.Nil(t, svc.Spec.Task.RegistryAuth, "CreateService's answer")
	want := spec.Task
	want.RegistryAuth = nil
	assert.Equal(t, want, svc.Spec.Task, "every field comes back as written, but the credentials")

	got, holders := runningContainer(t, c, svc.ID, 1)
	assert.Len(t, holders, 1, "only the task's node has it")
	node := c.NodeByID(got.NodeID)
	require.NotNil(t, node)
	assert.Equal(t, runtime.Spec{
		Command: spec.Task.Command, Args: spec.Task.Args, Image: "127.0.0.1:1/library/nginx:1.13",
		RegistryAuth: runtime.RegistryAuth{Username: "deploy", Password: containerSecret},
		User:         "101:101", Hostname: "front-1-" + node.Name,
		Mounts: []runtime.Mount{
			{Type: runtime.MountBind, Source: "/etc/app", Target: "/config", ReadOnly: true},
			{Type: runtime.MountVolume, Source: "cache", Target: "/var/cache/nginx"},
			{Type: runtime.MountTmpfs, Target: "/tmp", TmpfsSize: 1 << 20},
		},
		ReadOnlyRootfs: true, CapAdd: []string{"NET_ADMIN"}, CapDrop: []string{"ALL"},
		Sysctls: map[string]string{"net.core.somaxconn": "1024"},
		Ulimits: []runtime.Ulimit{{Name: "nofile", Soft: 1024, Hard: 4096}},
		Init:    true, Labels: map[string]string{"team": "a"},
		Reservations: runtime.Resources{MemoryBytes: 64 << 20},
		Resources:    runtime.Resources{MemoryBytes: 128 << 20, Pids: 200},
	}, got.Spec)

	// No read path returns the credentials.
	read, err := cl.GetService(ctx, svc.ID)
	require.NoError(t, err)
	assert.Nil(t, read.Spec.Task.RegistryAuth, "GetService")
	assert.Empty(t, read.Warnings, "warnings are only on the answers of writes")
	list, err := cl.ListServices(ctx)
	require.NoError(t, err)
	for _, s := range list {
		assert.Nil(t, s.Spec.Task.RegistryAuth, "ListServices")
	}
	tasks, err := cl.ListTasks(ctx, shoal.TaskFilter{Service: svc.ID})
	require.NoError(t, err)
	require.NotEmpty(t, tasks)
	for _, tk := range tasks {
		assert.Nil(t, tk.Spec.RegistryAuth, "ListTasks")
		one, err := cl.GetTask(ctx, tk.ID)
		require.NoError(t, err)
		assert.Nil(t, one.Spec.RegistryAuth, "GetTask")
	}

	// An update without credentials keeps them: the redeployed task still
	// pulls with them. The answer has none.
	up := updateContainerService(t, cl, svc.ID, func(s *shoal.ServiceSpec) { s.Task.ForceUpdate++ })
	assert.Nil(t, up.Spec.Task.RegistryAuth, "UpdateService's answer")
	assert.Empty(t, up.Warnings, "the image did not change: nothing to pin")
	got, _ = runningContainer(t, c, svc.ID, up.SpecVersion)
	assert.Equal(t, containerSecret, got.Spec.RegistryAuth.Password, "kept by an update without credentials")

	// An empty RegistryAuth removes them.
	up = updateContainerService(t, cl, svc.ID, func(s *shoal.ServiceSpec) {
		s.Task.ForceUpdate++
		s.Task.RegistryAuth = &shoal.RegistryAuth{}
	})
	got, _ = runningContainer(t, c, svc.ID, up.SpecVersion)
	assert.True(t, got.Spec.RegistryAuth.Empty(), "removed by an empty RegistryAuth")

	// Every watch event so far, old objects included.
	stopWatch()
	n := 0
	for e := range events {
		n++
		for _, s := range []*shoal.Service{e.Service, e.OldService} {
			if s != nil {
				assert.Nil(t, s.Spec.Task.RegistryAuth, "a watch event of service %s", s.ID)
			}
		}
		for _, tk := range []*shoal.Task{e.Task, e.OldTask} {
			if tk != nil {
				assert.Nil(t, tk.Spec.RegistryAuth, "a watch event of task %s", tk.ID)
			}
		}
	}
	assert.Positive(t, n, "the watch saw the service and its tasks")

	assert.NotContains(t, logs.Tail(1<<20), containerSecret, "no log line has the credentials")
	auth := shoal.RegistryAuth{Username: "deploy", Password: containerSecret, IdentityToken: containerSecret, RegistryToken: containerSecret}
	for _, s := range []string{fmt.Sprint(auth), fmt.Sprintf("%v %+v %#v %s", &auth, auth, auth, auth), fmt.Sprintf("%#v", spec.Task)} {
		assert.NotContains(t, s, containerSecret)
	}
}

// updateContainerService applies edit to the service's spec as read, again
// while the update orchestrator's own writes (its update status) conflict.
func updateContainerService(t *testing.T, cl *shoal.Client, id string, edit func(*shoal.ServiceSpec)) *shoal.Service {
	t.Helper()
	ctx := ctxT(t)
	for range 20 {
		cur, err := cl.GetService(ctx, id)
		require.NoError(t, err)
		spec := cur.Spec
		edit(&spec)
		up, err := cl.UpdateService(ctx, id, cur.Version, spec)
		if errors.Is(err, shoal.ErrConflict) {
			continue
		}
		require.NoError(t, err)
		return up
	}
	t.Fatal("UpdateService kept conflicting")
	return nil
}

// TestContainerSpecRefused: bad container fields are refused through the
// public client with ErrInvalidSpec naming the public field, and nothing is
// created.
func TestContainerSpecRefused(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{})
	ctx := ctxT(t)
	tests := []struct {
		name string
		edit func(*shoal.TaskSpec)
		want string
	}{
		{"bad image", func(t *shoal.TaskSpec) { t.Image = "NGINX" }, "ServiceSpec.Task.Image"},
		{"no command, no image", func(t *shoal.TaskSpec) { t.Image, t.Command = "", nil }, "ServiceSpec.Task.Command: is required"},
		{"relative bind", func(t *shoal.TaskSpec) { t.Mounts[0].Source = "etc/app" }, "ServiceSpec.Task.Mounts[0].Source: a bind mount's source must be an absolute path"},
		{"unknown mount type", func(t *shoal.TaskSpec) { t.Mounts[1].Type = 9 }, "ServiceSpec.Task.Mounts[1].Type: must be MountBind, MountVolume or MountTmpfs, got 9"},
		{"tmpfs source", func(t *shoal.TaskSpec) { t.Mounts[2].Source = "x" }, "ServiceSpec.Task.Mounts[2].Source: must be empty for a tmpfs mount"},
		{"reserved pids", func(t *shoal.TaskSpec) { t.Reservations.Pids = 1 }, "ServiceSpec.Task.Reservations.Pids: must be 0"},
		{"negative pids", func(t *shoal.TaskSpec) { t.Limits.Pids = -1 }, "ServiceSpec.Task.Limits.Pids: must be >= 0"},
		{"template", func(t *shoal.TaskSpec) { t.Hostname = "{{.Task.Nmae}}" }, "ServiceSpec.Task.Hostname: template"},
		{"capability", func(t *shoal.TaskSpec) { t.CapAdd = []string{"CAP_FLY"} }, `ServiceSpec.Task.CapAdd[0]: unknown capability "CAP_FLY"`},
		{"ulimit", func(t *shoal.TaskSpec) { t.Ulimits[0].Soft = 5000 }, "ServiceSpec.Task.Ulimits[0].Soft: must not exceed Hard"},
		{"sysctl", func(t *shoal.TaskSpec) { t.Sysctls = map[string]string{"vm.swappiness": "0"} }, "ServiceSpec.Task.Sysctls[vm.swappiness]"},
		{"container field without image", func(t *shoal.TaskSpec) {
			*t = shoal.TaskSpec{Command: []string{"server"}, Init: true}
		}, "ServiceSpec.Task.Init: needs ServiceSpec.Task.Image"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			spec := containerServiceSpec()
			spec.Task.Mounts = append([]shoal.Mount(nil), spec.Task.Mounts...)
			spec.Task.Ulimits = append([]shoal.Ulimit(nil), spec.Task.Ulimits...)
			tc.edit(&spec.Task)
			_, err := c.Client().CreateService(ctx, spec)
			require.ErrorIs(t, err, shoal.ErrInvalidSpec)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
	list, err := c.Client().ListServices(ctx)
	require.NoError(t, err)
	assert.Empty(t, list, "nothing was created")
}

func TestContainerMountTypeString(t *testing.T) {
	for typ, want := range map[shoal.MountType]string{shoal.MountBind: "bind", shoal.MountVolume: "volume",
		shoal.MountTmpfs: "tmpfs", shoal.MountType(7): "MountType(7)", shoal.MountType(-1): "MountType(-1)"} {
		assert.Equal(t, want, typ.String())
	}
}

// A container service: the image, its command against the image's
// ENTRYPOINT and CMD, a hostname template, mounts and the credentials to
// pull with, which the API never returns.
func ExampleClient_CreateService_container() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := exampleDir()
	defer os.RemoveAll(dir)
	mgr, err := shoal.Init(ctx, shoal.Config{StateDir: dir, ListenAddr: "127.0.0.1:0", Runtime: runtimetest.New()})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer mgr.Stop(context.Background())
	auth := &shoal.RegistryAuth{Username: "deploy", Password: "s3cret"}
	svc, err := mgr.Client().CreateService(ctx, shoal.ServiceSpec{Name: "web", Replicas: 2, Task: shoal.TaskSpec{
		Image:        "127.0.0.1:1/library/nginx:1.13",
		Args:         []string{"nginx", "-g", "daemon off;"}, // replace the image's CMD
		Hostname:     "{{.Service.Name}}-{{.Task.Slot}}",
		Mounts:       []shoal.Mount{{Type: shoal.MountVolume, Source: "cache", Target: "/var/cache/nginx"}},
		RegistryAuth: auth,
	}})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(auth)
	fmt.Println("credentials returned:", svc.Spec.Task.RegistryAuth != nil)
	fmt.Println("warnings:", len(svc.Warnings)) // the tag could not be pinned to a digest
	// Output:
	// registry credentials of "deploy" (password redacted)
	// credentials returned: false
	// warnings: 1
}
