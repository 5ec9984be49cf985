package controlapi

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/state"
)

func containerSpec(name string) *api.ServiceSpec {
	return &api.ServiceSpec{
		Name:   name,
		Labels: map[string]string{"tier": "front"},
		Mode:   &api.ServiceSpec_Replicated{Replicated: &api.ReplicatedService{Replicas: 1}},
		Task:   &api.TaskSpec{Image: "nginx:1.13"},
	}
}

func TestValidateContainerSpec(t *testing.T) {
	task := func(f func(t *api.TaskSpec)) *api.ServiceSpec {
		s := containerSpec("web")
		f(s.Task)
		return s
	}
	program := func(f func(t *api.TaskSpec)) *api.ServiceSpec {
		s := containerSpec("web")
		s.Task = &api.TaskSpec{Command: []string{"server"}}
		f(s.Task)
		return s
	}
	bind := api.MountType_MOUNT_TYPE_BIND
	volume := api.MountType_MOUNT_TYPE_VOLUME
	tmpfs := api.MountType_MOUNT_TYPE_TMPFS
	tests := []struct {
		name string
		spec *api.ServiceSpec
		want string // "" = valid
	}{
		{"image without command", containerSpec("web"), ""},
		{"every field", task(func(t *api.TaskSpec) {
			t.Image = "registry.example:5000/team/app:v2@sha256:" + digest0
			t.Command, t.Args, t.User = []string{"/entry"}, []string{"-v"}, "1000:1000"
			t.Hostname = "{{.Service.Name}}-{{.Task.Slot}}-{{.Service.Labels.tier}}-{{.Node.Hostname}}"
			t.Mounts = []*api.Mount{{Type: bind, Source: "/etc/app", Target: "/config", ReadOnly: true},
				{Type: volume, Source: "data.1", Target: "/data"}, {Type: tmpfs, Target: "/tmp", TmpfsSize: 1 << 20}}
			t.ReadOnlyRootfs, t.Init, t.HostNetwork = true, true, true
			t.CapAdd, t.CapDrop = []string{"net_admin", "CAP_SYS_TIME"}, []string{"ALL"}
			t.Sysctls = map[string]string{"kernel.shmmax": "1", "fs.mqueue.msg_max": "10"}
			t.Ulimits = []*api.Ulimit{{Name: "nofile", Soft: 1024, Hard: 4096}, {Name: "core", Soft: -1, Hard: -1}}
			t.ContainerLabels = map[string]string{"team": "a"}
			t.RegistryAuth = &api.RegistryAuth{Username: "u", Password: "p"}
			t.Resources = &api.ResourceRequirements{Limits: &api.Resources{Pids: 100}}
		}), ""},
		{"program with args", program(func(t *api.TaskSpec) { t.Args = []string{"-v"} }), ""},
		{"no command, no image", program(func(t *api.TaskSpec) { t.Command = nil }),
			"ServiceSpec.Task.Command: is required (the program and its arguments) unless ServiceSpec.Task.Image is set"},
		{"empty program with image", task(func(t *api.TaskSpec) { t.Command = []string{""} }), "ServiceSpec.Task.Command[0]: program must not be empty"},
		{"upper-case image", task(func(t *api.TaskSpec) { t.Image = "Nginx:1.13" }), `ServiceSpec.Task.Image: "Nginx:1.13" is not an image reference`},
		{"empty tag", task(func(t *api.TaskSpec) { t.Image = "nginx:" }), `ServiceSpec.Task.Image: "nginx:" is not an image reference`},
		{"short digest", task(func(t *api.TaskSpec) { t.Image = "nginx@sha256:abc" }), "ServiceSpec.Task.Image"},
		{"space in image", task(func(t *api.TaskSpec) { t.Image = "nginx 1.13" }), "ServiceSpec.Task.Image"},
		{"relative bind source", task(func(t *api.TaskSpec) {
			t.Mounts = []*api.Mount{{Type: tmpfs, Target: "/tmp"}, {Type: bind, Source: "etc/app", Target: "/config"}}
		}), `ServiceSpec.Task.Mounts[1].Source: a bind mount's source must be an absolute path on the node, got "etc/app"`},
		{"empty bind source", task(func(t *api.TaskSpec) { t.Mounts = []*api.Mount{{Type: bind, Target: "/config"}} }),
			"ServiceSpec.Task.Mounts[0].Source: a bind mount's source must be an absolute path"},
		{"bad volume name", task(func(t *api.TaskSpec) { t.Mounts = []*api.Mount{{Type: volume, Source: "a/b", Target: "/data"}} }),
			"ServiceSpec.Task.Mounts[0].Source: a volume's name must be letters"},
		{"volume without a name", task(func(t *api.TaskSpec) { t.Mounts = []*api.Mount{{Type: volume, Target: "/data"}} }),
			"ServiceSpec.Task.Mounts[0].Source: a volume's name"},
		{"tmpfs with a source", task(func(t *api.TaskSpec) { t.Mounts = []*api.Mount{{Type: tmpfs, Source: "/x", Target: "/tmp"}} }),
			"ServiceSpec.Task.Mounts[0].Source: must be empty for a tmpfs mount"},
		{"tmpfs size on a bind", task(func(t *api.TaskSpec) {
			t.Mounts = []*api.Mount{{Type: bind, Source: "/x", Target: "/x", TmpfsSize: 10}}
		}), "ServiceSpec.Task.Mounts[0].TmpfsSize: is only for tmpfs mounts"},
		{"relative target", task(func(t *api.TaskSpec) { t.Mounts = []*api.Mount{{Type: tmpfs, Target: "tmp"}} }),
			`ServiceSpec.Task.Mounts[0].Target: must be an absolute path in the container, got "tmp"`},
		{"duplicate target", task(func(t *api.TaskSpec) {
			t.Mounts = []*api.Mount{{Type: tmpfs, Target: "/data"}, {Type: volume, Source: "d", Target: "/data/"}}
		}), "ServiceSpec.Task.Mounts[1].Target: /data is already the target of ServiceSpec.Task.Mounts[0]"},
		{"unknown mount type", task(func(t *api.TaskSpec) { t.Mounts = []*api.Mount{{Type: 7, Target: "/x"}} }),
			"ServiceSpec.Task.Mounts[0].Type"},
		{"negative pids limit", task(func(t *api.TaskSpec) {
			t.Resources = &api.ResourceRequirements{Limits: &api.Resources{Pids: -1}}
		}), "ServiceSpec.Task.Limits.Pids: must be >= 0"},
		{"reserved pids", task(func(t *api.TaskSpec) {
			t.Resources = &api.ResourceRequirements{Reservations: &api.Resources{Pids: 10}}
		}), "ServiceSpec.Task.Reservations.Pids: must be 0"},
		{"negative memory limit", task(func(t *api.TaskSpec) {
			t.Resources = &api.ResourceRequirements{Limits: &api.Resources{MemoryBytes: -1}}
		}), "ServiceSpec.Task.Limits.MemoryBytes: must be >= 0"},
		{"unknown capability added", task(func(t *api.TaskSpec) { t.CapAdd = []string{"NET_ADMIN", "CAP_FLY"} }),
			`ServiceSpec.Task.CapAdd[1]: unknown capability "CAP_FLY"`},
		{"unknown capability dropped", task(func(t *api.TaskSpec) { t.CapDrop = []string{"FLY"} }),
			`ServiceSpec.Task.CapDrop[0]: unknown capability "FLY"`},
		{"user with three parts", task(func(t *api.TaskSpec) { t.User = "a:b:c" }), "ServiceSpec.Task.User: must be name, uid"},
		{"user with a space", task(func(t *api.TaskSpec) { t.User = "web user" }), "ServiceSpec.Task.User"},
		{"template does not parse", task(func(t *api.TaskSpec) { t.Hostname = "{{.Service.Name" }),
			`ServiceSpec.Task.Hostname: template "{{.Service.Name"`},
		{"template field unknown", task(func(t *api.TaskSpec) { t.Hostname = "{{.Foo}}" }),
			"ServiceSpec.Task.Hostname: template \"{{.Foo}}\": template: :1:2: executing \"\" at <.Foo>: can't evaluate field Foo"},
		{"template error without the sample", task(func(t *api.TaskSpec) { t.Hostname = "{{.Foo}}" }),
			"can't evaluate field Foo in type dispatch.templateContext: invalid spec"},
		{"template label missing", task(func(t *api.TaskSpec) { t.Hostname = "{{.Service.Labels.zone}}" }),
			`map has no entry for key "zone"`},
		{"global template", func() *api.ServiceSpec {
			s := task(func(t *api.TaskSpec) { t.Hostname = "{{.Service.Name}}-{{.Node.ID}}" })
			s.Mode = &api.ServiceSpec_Global{Global: &api.GlobalService{}}
			return s
		}(), ""},
		{"hostname with a space", task(func(t *api.TaskSpec) { t.Hostname = "my host" }),
			"ServiceSpec.Task.Hostname: must be at most 64 characters without spaces or '/'"},
		{"template that expands to a bad hostname", task(func(t *api.TaskSpec) { t.Hostname = "{{ .Task.Slot }} x" }),
			`ServiceSpec.Task.Hostname: must be at most 64 characters without spaces or '/' ("{{ .Task.Slot }} x" is "1 x" for a sample task)`},
		{"sysctl not namespaced", task(func(t *api.TaskSpec) { t.Sysctls = map[string]string{"vm.swappiness": "1"} }),
			"ServiceSpec.Task.Sysctls[vm.swappiness]: only namespaced sysctls may be set"},
		{"net sysctl with host network", task(func(t *api.TaskSpec) {
			t.HostNetwork, t.Sysctls = true, map[string]string{"net.core.somaxconn": "1024"}
		}), "ServiceSpec.Task.Sysctls[net.core.somaxconn]"},
		{"net sysctl", task(func(t *api.TaskSpec) { t.Sysctls = map[string]string{"net.core.somaxconn": "1024"} }), ""},
		{"unknown ulimit", task(func(t *api.TaskSpec) { t.Ulimits = []*api.Ulimit{{Name: "files", Soft: 1, Hard: 1}} }),
			`ServiceSpec.Task.Ulimits[0].Name: unknown limit "files"`},
		{"ulimit soft over hard", task(func(t *api.TaskSpec) { t.Ulimits = []*api.Ulimit{{Name: "nofile", Soft: 10, Hard: 5}} }),
			"ServiceSpec.Task.Ulimits[0].Soft: must not exceed Hard"},
		{"ulimit below -1", task(func(t *api.TaskSpec) { t.Ulimits = []*api.Ulimit{{Name: "nofile", Soft: -2, Hard: 5}} }),
			"ServiceSpec.Task.Ulimits[0]: limits must be -1 (unlimited) or more"},
		{"ulimit twice", task(func(t *api.TaskSpec) {
			t.Ulimits = []*api.Ulimit{{Name: "nproc", Soft: 1, Hard: 1}, {Name: "nproc", Soft: 2, Hard: 2}}
		}), `ServiceSpec.Task.Ulimits[1].Name: "nproc" is already set by ServiceSpec.Task.Ulimits[0]`},
		{"empty container label key", task(func(t *api.TaskSpec) { t.ContainerLabels = map[string]string{"": "x"} }),
			"ServiceSpec.Task.ContainerLabels: keys must not be empty"},
		{"user without image", program(func(t *api.TaskSpec) { t.User = "nobody" }), "ServiceSpec.Task.User: needs ServiceSpec.Task.Image"},
		{"hostname without image", program(func(t *api.TaskSpec) { t.Hostname = "x" }), "ServiceSpec.Task.Hostname: needs ServiceSpec.Task.Image"},
		{"mounts without image", program(func(t *api.TaskSpec) { t.Mounts = []*api.Mount{{Type: tmpfs, Target: "/tmp"}} }),
			"ServiceSpec.Task.Mounts: needs ServiceSpec.Task.Image"},
		{"read-only rootfs without image", program(func(t *api.TaskSpec) { t.ReadOnlyRootfs = true }), "ServiceSpec.Task.ReadOnlyRootfs: needs"},
		{"cap add without image", program(func(t *api.TaskSpec) { t.CapAdd = []string{"NET_ADMIN"} }), "ServiceSpec.Task.CapAdd: needs"},
		{"cap drop without image", program(func(t *api.TaskSpec) { t.CapDrop = []string{"NET_RAW"} }), "ServiceSpec.Task.CapDrop: needs"},
		{"sysctls without image", program(func(t *api.TaskSpec) { t.Sysctls = map[string]string{"kernel.shmmax": "1"} }), "ServiceSpec.Task.Sysctls: needs"},
		{"ulimits without image", program(func(t *api.TaskSpec) { t.Ulimits = []*api.Ulimit{{Name: "nofile", Soft: 1, Hard: 1}} }),
			"ServiceSpec.Task.Ulimits: needs"},
		{"init without image", program(func(t *api.TaskSpec) { t.Init = true }), "ServiceSpec.Task.Init: needs"},
		{"labels without image", program(func(t *api.TaskSpec) { t.ContainerLabels = map[string]string{"a": "b"} }),
			"ServiceSpec.Task.ContainerLabels: needs ServiceSpec.Task.Image"},
		{"registry auth without image", program(func(t *api.TaskSpec) { t.RegistryAuth = &api.RegistryAuth{Username: "u"} }),
			"ServiceSpec.Task.RegistryAuth: needs"},
		{"host network without image", program(func(t *api.TaskSpec) { t.HostNetwork = true }), "ServiceSpec.Task.HostNetwork: needs ServiceSpec.Task.Image"},
	}
	ctx := context.Background()
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
			assert.NotContains(t, err.Error(), "runtime: invalid task", "the runtime's error is reported as the API's")

			// Nothing is written: neither a new service nor an update.
			st := newCheckedStore(t)
			s := New(st)
			_, err = s.CreateService(ctx, &api.CreateServiceRequest{Spec: tc.spec})
			assert.ErrorIs(t, gerr(err), errdefs.ErrInvalidSpec)
			resp, err := s.CreateService(ctx, &api.CreateServiceRequest{Spec: containerSpec("other")})
			require.NoError(t, err)
			before := proto.Clone(resp.Service).(*api.Service)
			upd := proto.Clone(tc.spec).(*api.ServiceSpec)
			upd.Name = "other"
			_, err = s.UpdateService(ctx, &api.UpdateServiceRequest{Id: before.GetId(), Version: before.GetMeta().GetVersion(), Spec: upd})
			assert.ErrorIs(t, gerr(err), errdefs.ErrInvalidSpec)
			st.View(func(tx state.ReadTx) {
				all, err := tx.FindServices(state.All())
				require.NoError(t, err)
				require.Len(t, all, 1)
				assert.True(t, proto.Equal(before, all[0]), "the update wrote nothing")
			})
		})
	}
}

const digest0 = "0000000000000000000000000000000000000000000000000000000000000000"

// FuzzValidateContainerSpec checks that any image, hostname template, user
// and mount either pass or are refused with ErrInvalidSpec naming a public
// field, never with the runtime's names.
func FuzzValidateContainerSpec(f *testing.F) {
	f.Add("nginx:1.13", "{{.Task.Name}}", "1000:1000", "/data", "/srv")
	f.Add("Nginx", "{{.Foo}}", "a:b:c", "data", "rel")
	f.Add("nginx@sha256:"+digest0, "{{", "", "", "/")
	f.Fuzz(func(t *testing.T, image, hostname, user, source, target string) {
		s := containerSpec("web")
		s.Task.Image, s.Task.Hostname, s.Task.User = image, hostname, user
		s.Task.Mounts = []*api.Mount{{Type: api.MountType_MOUNT_TYPE_BIND, Source: source, Target: target}}
		err := ValidateServiceSpec(s)
		if err == nil {
			return
		}
		if !errors.Is(err, errdefs.ErrInvalidSpec) || !strings.HasPrefix(err.Error(), "ServiceSpec.") ||
			strings.HasPrefix(err.Error(), "ServiceSpec.Task: ") || strings.Contains(err.Error(), "runtime: invalid task") {
			t.Fatalf("%v", err)
		}
	})
}

// BenchmarkValidateContainerSpec is the cost validation adds to a service
// write with every container field and a hostname template.
func BenchmarkValidateContainerSpec(b *testing.B) {
	s := containerSpec("web")
	s.Task.Hostname = "{{.Service.Name}}-{{.Task.Slot}}-{{.Node.Hostname}}"
	s.Task.Mounts = []*api.Mount{{Type: api.MountType_MOUNT_TYPE_VOLUME, Source: "data", Target: "/data"}}
	s.Task.CapAdd, s.Task.User = []string{"NET_ADMIN"}, "1000:1000"
	s.Task.Ulimits = []*api.Ulimit{{Name: "nofile", Soft: 1024, Hard: 4096}}
	b.ReportAllocs()
	for b.Loop() {
		if err := ValidateServiceSpec(s); err != nil {
			b.Fatal(err)
		}
	}
}
