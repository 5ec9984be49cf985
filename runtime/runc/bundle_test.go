package runc

import (
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/runtime"
)

func TestArgv(t *testing.T) {
	img := imageConfig{Entrypoint: []string{"/entry"}, Cmd: []string{"cmd-arg"}}
	tests := []struct {
		name    string
		command []string
		args    []string
		img     imageConfig
		want    []string
	}{
		{"image entrypoint and cmd", nil, nil, img, []string{"/entry", "cmd-arg"}},
		{"args replace cmd", nil, []string{"a", "b"}, img, []string{"/entry", "a", "b"}},
		{"command replaces entrypoint and drops cmd", []string{"/bin/sh"}, nil, img, []string{"/bin/sh"}},
		{"command and args", []string{"/bin/sh", "-c"}, []string{"echo hi"}, img, []string{"/bin/sh", "-c", "echo hi"}},
		{"cmd only image", nil, nil, imageConfig{Cmd: []string{"/app", "-v"}}, []string{"/app", "-v"}},
		{"args on a cmd-only image", nil, []string{"/other"}, imageConfig{Cmd: []string{"/app"}}, []string{"/other"}},
		{"nothing", nil, nil, imageConfig{}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, argv(runtime.Spec{Command: tt.command, Args: tt.args}, tt.img))
		})
	}
}

func TestEnvironment(t *testing.T) {
	img := imageConfig{Env: []string{"PATH=/img/bin", "LANG=C", "HOME=/imghome"}}
	got := environment(runtime.Spec{Env: []string{"LANG=en_US.UTF-8", "EXTRA=1"}}, img, "web-1", "/root")
	assert.Equal(t, []string{"PATH=/img/bin", "LANG=en_US.UTF-8", "HOME=/imghome", "HOSTNAME=web-1", "EXTRA=1"}, got)

	got = environment(runtime.Spec{}, imageConfig{}, "h", "")
	assert.Equal(t, []string{"PATH=" + defaultPath, "HOSTNAME=h", "HOME=/"}, got)
}

func testInput() bundleInput {
	return bundleInput{
		Task: runtime.Task{ID: "task1", Spec: runtime.Spec{
			Image: "example/app:1",
			Resources: runtime.Resources{
				NanoCPUs: 1.5e9, MemoryBytes: 64 << 20, Pids: 100,
			},
			Reservations: runtime.Resources{NanoCPUs: 5e8},
			Mounts: []runtime.Mount{
				{Type: runtime.MountBind, Source: "/srv/data", Target: "/data", ReadOnly: true},
				{Type: runtime.MountVolume, Source: "cache", Target: "/cache/"},
				{Type: runtime.MountTmpfs, Target: "/scratch", TmpfsSize: 1 << 20},
			},
			CapAdd:   []string{"net_admin"},
			CapDrop:  []string{"CAP_MKNOD"},
			Sysctls:  map[string]string{"net.ipv4.ip_unprivileged_port_start": "0"},
			Ulimits:  []runtime.Ulimit{{Name: "nproc", Soft: 10, Hard: 20}, {Name: "nofile", Soft: -1, Hard: -1}},
			Labels:   map[string]string{"team": "web"},
			Init:     true,
			User:     "app",
			Hostname: "web-1",
		}},
		Image:       imageConfig{Entrypoint: []string{"/app"}, WorkingDir: "/work"},
		Rootfs:      "/var/lib/x/rootfs",
		User:        resolvedUser{UID: 1000, GID: 1000, AdditionalGIDs: []uint32{27}, Home: "/home/app"},
		NetnsPath:   "/run/netns/task1",
		Hostname:    "web-1",
		HostsFile:   "/state/hosts",
		InitPath:    "/usr/bin/tini-static",
		VolumePaths: map[string]string{"cache": "/state/volumes/cache/_data"},
		CgroupsPath: "/shoal/task1",
	}
}

func TestBuildSpec(t *testing.T) {
	s, err := buildSpec(testInput())
	require.NoError(t, err)

	assert.Equal(t, []string{initTarget, "--", "/app"}, s.Process.Args)
	assert.Equal(t, "/work", s.Process.Cwd)
	assert.Equal(t, specs.User{UID: 1000, GID: 1000, AdditionalGids: []uint32{27}}, s.Process.User)
	assert.True(t, s.Process.NoNewPrivileges)
	assert.Contains(t, s.Process.Capabilities.Bounding, "CAP_NET_ADMIN")
	assert.NotContains(t, s.Process.Capabilities.Bounding, "CAP_MKNOD")
	assert.Equal(t, s.Process.Capabilities.Bounding, s.Process.Capabilities.Effective)
	assert.Empty(t, s.Process.Capabilities.Ambient)
	assert.Equal(t, []specs.POSIXRlimit{
		{Type: "RLIMIT_NOFILE", Hard: ^uint64(0), Soft: ^uint64(0)},
		{Type: "RLIMIT_NPROC", Hard: 20, Soft: 10},
	}, s.Process.Rlimits)
	assert.Equal(t, "web-1", s.Hostname)
	assert.Equal(t, "/var/lib/x/rootfs", s.Root.Path)
	assert.False(t, s.Root.Readonly)
	assert.Equal(t, map[string]string{"team": "web"}, s.Annotations)

	var nsTypes []specs.LinuxNamespaceType
	for _, ns := range s.Linux.Namespaces {
		nsTypes = append(nsTypes, ns.Type)
		if ns.Type == specs.NetworkNamespace {
			assert.Equal(t, "/run/netns/task1", ns.Path)
		}
	}
	assert.ElementsMatch(t, []specs.LinuxNamespaceType{specs.PIDNamespace, specs.IPCNamespace, specs.UTSNamespace, specs.MountNamespace, specs.NetworkNamespace}, nsTypes)

	res := s.Linux.Resources
	require.NotNil(t, res.Memory)
	assert.Equal(t, int64(64<<20), *res.Memory.Limit)
	assert.Equal(t, int64(64<<20), *res.Memory.Swap)
	require.NotNil(t, res.CPU)
	assert.Equal(t, int64(150000), *res.CPU.Quota)
	assert.Equal(t, uint64(100000), *res.CPU.Period)
	assert.Equal(t, uint64(512), *res.CPU.Shares)
	assert.Equal(t, int64(100), *res.Pids.Limit)
	assert.False(t, res.Devices[0].Allow, "the device list starts by denying every device")
	assert.Equal(t, "/shoal/task1", s.Linux.CgroupsPath)
	assert.Contains(t, s.Linux.MaskedPaths, "/proc/kcore")
	assert.Contains(t, s.Linux.ReadonlyPaths, "/proc/sys")
	assert.Equal(t, map[string]string{"net.ipv4.ip_unprivileged_port_start": "0"}, s.Linux.Sysctl)

	mounts := map[string]specs.Mount{}
	for _, m := range s.Mounts {
		mounts[m.Destination] = m
	}
	for _, d := range []string{"/proc", "/dev", "/dev/pts", "/sys", "/sys/fs/cgroup", "/dev/mqueue", "/dev/shm", "/etc/hosts", initTarget} {
		assert.Contains(t, mounts, d)
	}
	assert.NotContains(t, mounts, "/etc/resolv.conf", "an empty file path leaves the image's")
	assert.Equal(t, specs.Mount{Destination: "/data", Type: "bind", Source: "/srv/data", Options: []string{"rbind", "rprivate", "ro"}}, mounts["/data"])
	assert.Equal(t, specs.Mount{Destination: "/cache", Type: "bind", Source: "/state/volumes/cache/_data", Options: []string{"rbind", "rprivate", "rw"}}, mounts["/cache"])
	assert.Equal(t, specs.Mount{Destination: "/scratch", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "rw", "size=1048576"}}, mounts["/scratch"])
	assert.Equal(t, "/usr/bin/tini-static", mounts[initTarget].Source)
}

func TestBuildSpecHostNetworkAndReadOnly(t *testing.T) {
	in := testInput()
	in.Task.Spec.HostNetwork = true
	in.Task.Spec.ReadOnlyRootfs = true
	in.Task.Spec.Sysctls = nil
	in.NetnsPath = ""
	s, err := buildSpec(in)
	require.NoError(t, err)
	for _, ns := range s.Linux.Namespaces {
		assert.NotEqual(t, specs.NetworkNamespace, ns.Type)
	}
	assert.True(t, s.Root.Readonly)
}

func TestBuildSpecRefusals(t *testing.T) {
	in := testInput()
	in.Task.Spec.Init = false
	in.Image = imageConfig{}
	_, err := buildSpec(in)
	require.ErrorIs(t, err, runtime.ErrInvalidTask)
	assert.Contains(t, err.Error(), "Spec.Command")

	in = testInput()
	in.InitPath = ""
	_, err = buildSpec(in)
	require.ErrorIs(t, err, runtime.ErrInvalidTask)
	assert.Contains(t, err.Error(), "tini")

	in = testInput()
	in.VolumePaths = nil
	_, err = buildSpec(in)
	require.ErrorIs(t, err, runtime.ErrInvalidTask)
	assert.Contains(t, err.Error(), "Spec.Mounts[1]")
}

func TestResourcesTinyQuota(t *testing.T) {
	r := resources(runtime.Spec{Resources: runtime.Resources{NanoCPUs: 1}, Reservations: runtime.Resources{NanoCPUs: 1}})
	assert.Equal(t, int64(1000), *r.CPU.Quota, "the kernel's minimum quota")
	assert.Equal(t, uint64(2), *r.CPU.Shares, "the kernel's minimum weight")
	r = resources(runtime.Spec{})
	assert.Nil(t, r.CPU)
	assert.Nil(t, r.Memory)
	assert.Nil(t, r.Pids)
}

func TestCapabilities(t *testing.T) {
	tests := []struct {
		name      string
		add, drop []string
		has, lack []string
	}{
		{"default", nil, nil, []string{"CAP_CHOWN", "CAP_NET_BIND_SERVICE"}, []string{"CAP_SYS_ADMIN", "CAP_NET_ADMIN"}},
		{"add", []string{"sys_admin"}, nil, []string{"CAP_SYS_ADMIN", "CAP_CHOWN"}, nil},
		{"drop all add one", []string{"NET_BIND_SERVICE"}, []string{"ALL"}, []string{"CAP_NET_BIND_SERVICE"}, []string{"CAP_CHOWN"}},
		{"add all", []string{"all"}, nil, []string{"CAP_BPF", "CAP_SYS_ADMIN"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			caps := runtime.Spec{CapAdd: tt.add, CapDrop: tt.drop}.Capabilities()
			for _, c := range tt.has {
				assert.Contains(t, caps, c)
			}
			for _, c := range tt.lack {
				assert.NotContains(t, caps, c)
			}
		})
	}
}
