package runc

import (
	"fmt"
	"path"
	"sort"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/shoalhq/shoal/runtime"
)

// defaultPath is the PATH of a container whose image sets none (docker's).
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// initTarget is where the init binary appears in a container with
// Spec.Init; /dev is a tmpfs of the container's own, so the mount point can
// be made even when the root filesystem is read-only (docker uses it too).
const initTarget = "/dev/init"

// cpuPeriod is the CFS period of CPU quotas, in microseconds (the kernel's
// and docker's default): a quota of NanoCPUs/1e9 CPUs is NanoCPUs/1e4 µs
// per period.
const cpuPeriod = 100000

// imageConfig is the part of an image's configuration a bundle needs.
type imageConfig struct {
	Entrypoint, Cmd, Env []string
	WorkingDir           string
}

// resolvedUser is the user the container's processes run as.
type resolvedUser struct {
	UID, GID       uint32
	AdditionalGIDs []uint32
	Home           string
}

// bundleInput is everything a container's OCI configuration is made from;
// buildSpec is a pure function of it.
type bundleInput struct {
	Task   runtime.Task
	Image  imageConfig
	Rootfs string // absolute path of the prepared root filesystem
	User   resolvedUser
	// NetnsPath is the network namespace to join; "" with Spec.HostNetwork.
	NetnsPath string
	// Hostname is the container's host name (Spec.Hostname or the default).
	Hostname string
	// HostsFile, HostnameFile and ResolvConf are files on the node
	// bind-mounted at /etc/hosts, /etc/hostname and /etc/resolv.conf; ""
	// leaves the image's.
	HostsFile, HostnameFile, ResolvConf string
	// InitPath is the init binary on the node, used with Spec.Init.
	InitPath string
	// VolumePaths maps a volume name of Spec.Mounts to its directory.
	VolumePaths map[string]string
	// CgroupsPath is the container's cgroup, relative to the cgroup roots.
	CgroupsPath string
	// Seccomp is the syscall filter; nil runs without one.
	Seccomp func(*specs.Spec) (*specs.LinuxSeccomp, error)
}

// argv returns the container's command line with docker's rules (see
// runtime.Spec): Command replaces ENTRYPOINT and drops CMD; Args replace
// CMD.
func argv(s runtime.Spec, img imageConfig) []string {
	var out []string
	if len(s.Command) > 0 {
		out = append(out, s.Command...)
		out = append(out, s.Args...)
		return out
	}
	out = append(out, img.Entrypoint...)
	if len(s.Args) > 0 {
		out = append(out, s.Args...)
	} else {
		out = append(out, img.Cmd...)
	}
	return out
}

// environment merges the image's environment, the container's defaults and
// the spec's, later keys replacing earlier ones, keeping first-seen order.
func environment(s runtime.Spec, img imageConfig, hostname, home string) []string {
	var order []string
	vals := make(map[string]string)
	set := func(kv string) {
		k, _, _ := strings.Cut(kv, "=")
		if _, ok := vals[k]; !ok {
			order = append(order, k)
		}
		vals[k] = kv
	}
	set("PATH=" + defaultPath)
	for _, kv := range img.Env {
		set(kv)
	}
	set("HOSTNAME=" + hostname)
	if home == "" {
		home = "/"
	}
	if _, ok := vals["HOME"]; !ok {
		set("HOME=" + home)
	}
	for _, kv := range s.Env {
		set(kv)
	}
	out := make([]string, len(order))
	for i, k := range order {
		out[i] = vals[k]
	}
	return out
}

// rlimitType maps a runtime.Ulimit name to the OCI spec's rlimit type.
func rlimitType(name string) string { return "RLIMIT_" + strings.ToUpper(name) }

// maskedPaths and readonlyPaths are docker's: kernel interfaces a container
// must not read (masked) or write (read-only).
var maskedPaths = []string{
	"/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys",
	"/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
	"/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
}

var readonlyPaths = []string{
	"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
}

// defaultMounts are docker's: proc, a private /dev with its pts and shm,
// mqueue, a read-only sysfs and cgroup tree.
func defaultMounts() []specs.Mount {
	sysOpts := []string{"nosuid", "noexec", "nodev", "ro"}
	m := []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: sysOpts},
		{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"ro", "nosuid", "noexec", "nodev"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
	}
	return m
}

// defaultDevices are the device nodes a container may use (runc creates
// null, zero, full, random, urandom and tty; pts and the console come with
// /dev/pts): docker's allow list for the devices cgroup.
func defaultDevices() []specs.LinuxDeviceCgroup {
	c := func(t string, major, minor int64, access string) specs.LinuxDeviceCgroup {
		return specs.LinuxDeviceCgroup{Allow: true, Type: t, Major: &major, Minor: &minor, Access: access}
	}
	wild := int64(-1)
	return []specs.LinuxDeviceCgroup{
		{Allow: false, Access: "rwm"},
		c("c", 1, 3, "rwm"),      // null
		c("c", 1, 5, "rwm"),      // zero
		c("c", 1, 7, "rwm"),      // full
		c("c", 1, 8, "rwm"),      // random
		c("c", 1, 9, "rwm"),      // urandom
		c("c", 5, 0, "rwm"),      // tty
		c("c", 5, 1, "rwm"),      // console
		c("c", 5, 2, "rwm"),      // ptmx
		c("c", 136, wild, "rwm"), // pts
		c("c", 10, 200, "rwm"),   // tun
	}
}

// buildSpec makes the OCI runtime configuration of a container.
func buildSpec(in bundleInput) (*specs.Spec, error) {
	s := in.Task.Spec
	args := argv(s, in.Image)
	if len(args) == 0 {
		return nil, fmt.Errorf("%w: Spec.Command: the image has no ENTRYPOINT or CMD, so the task must give a command", runtime.ErrInvalidTask)
	}
	if s.Init {
		if in.InitPath == "" {
			return nil, fmt.Errorf("%w: Spec.Init: this node has no init binary: install tini (Debian's tini package provides tini-static) or set runc.Config.InitPath", runtime.ErrInvalidTask)
		}
		args = append([]string{initTarget, "--"}, args...)
	}
	cwd := s.Dir
	if cwd == "" {
		cwd = in.Image.WorkingDir
	}
	if cwd == "" {
		cwd = "/"
	}
	caps := s.Capabilities()
	proc := &specs.Process{
		User: specs.User{UID: in.User.UID, GID: in.User.GID, AdditionalGids: append([]uint32(nil), in.User.AdditionalGIDs...)},
		Args: args,
		Env:  environment(s, in.Image, in.Hostname, in.User.Home),
		Cwd:  cwd,
		Capabilities: &specs.LinuxCapabilities{
			Bounding:  caps,
			Effective: caps,
			Permitted: caps,
		},
		NoNewPrivileges: true,
		Rlimits:         rlimits(s.Ulimits),
	}
	spec := &specs.Spec{
		Version:  specs.Version,
		Process:  proc,
		Root:     &specs.Root{Path: in.Rootfs, Readonly: s.ReadOnlyRootfs},
		Hostname: in.Hostname,
		Mounts:   defaultMounts(),
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace},
				{Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace},
				{Type: specs.MountNamespace},
			},
			Resources:     resources(s),
			CgroupsPath:   in.CgroupsPath,
			MaskedPaths:   append([]string(nil), maskedPaths...),
			ReadonlyPaths: append([]string(nil), readonlyPaths...),
		},
		Annotations: copyLabels(s.Labels),
	}
	if !s.HostNetwork {
		spec.Linux.Namespaces = append(spec.Linux.Namespaces, specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: in.NetnsPath})
	}
	if len(s.Sysctls) > 0 {
		spec.Linux.Sysctl = make(map[string]string, len(s.Sysctls))
		for k, v := range s.Sysctls {
			spec.Linux.Sysctl[k] = v
		}
	}
	for _, f := range []struct{ src, dst string }{
		{in.HostsFile, "/etc/hosts"}, {in.HostnameFile, "/etc/hostname"}, {in.ResolvConf, "/etc/resolv.conf"},
	} {
		if f.src != "" {
			spec.Mounts = append(spec.Mounts, specs.Mount{Destination: f.dst, Type: "bind", Source: f.src, Options: []string{"rbind", "rprivate"}})
		}
	}
	if s.Init {
		spec.Mounts = append(spec.Mounts, specs.Mount{Destination: initTarget, Type: "bind", Source: in.InitPath, Options: []string{"bind", "ro", "nosuid", "nodev"}})
	}
	for i, m := range s.Mounts {
		om, err := ociMount(m, in.VolumePaths)
		if err != nil {
			return nil, fmt.Errorf("%w: Spec.Mounts[%d]: %w", runtime.ErrInvalidTask, i, err)
		}
		spec.Mounts = append(spec.Mounts, om)
	}
	if in.Seccomp != nil {
		sc, err := in.Seccomp(spec)
		if err != nil {
			return nil, fmt.Errorf("runc: seccomp profile: %w", err)
		}
		spec.Linux.Seccomp = sc
	}
	return spec, nil
}

// ociMount converts one of the task's mounts.
func ociMount(m runtime.Mount, volumes map[string]string) (specs.Mount, error) {
	ro := "rw"
	if m.ReadOnly {
		ro = "ro"
	}
	target := path.Clean(m.Target)
	switch m.Type {
	case runtime.MountBind:
		return specs.Mount{Destination: target, Type: "bind", Source: m.Source, Options: []string{"rbind", "rprivate", ro}}, nil
	case runtime.MountVolume:
		src, ok := volumes[m.Source]
		if !ok {
			return specs.Mount{}, fmt.Errorf("volume %q was not prepared", m.Source)
		}
		return specs.Mount{Destination: target, Type: "bind", Source: src, Options: []string{"rbind", "rprivate", ro}}, nil
	case runtime.MountTmpfs:
		opts := []string{"nosuid", "nodev", ro}
		if m.TmpfsSize > 0 {
			opts = append(opts, fmt.Sprintf("size=%d", m.TmpfsSize))
		}
		return specs.Mount{Destination: target, Type: "tmpfs", Source: "tmpfs", Options: opts}, nil
	}
	return specs.Mount{}, fmt.Errorf("unknown mount type %q", m.Type)
}

// resources turns limits and reservations into cgroup settings: memory
// limit without extra swap, a CFS quota from NanoCPUs, a pids limit, CPU
// shares from the reserved CPUs (1024 per CPU, docker's scale, at least 2,
// the kernel's minimum), and docker's device allow list.
func resources(s runtime.Spec) *specs.LinuxResources {
	r := &specs.LinuxResources{Devices: defaultDevices()}
	if m := s.Resources.MemoryBytes; m > 0 {
		swap := m // memory+swap equal to memory: the limit is not stretched by swap
		r.Memory = &specs.LinuxMemory{Limit: &m, Swap: &swap}
	}
	if n := s.Resources.NanoCPUs; n > 0 || s.Reservations.NanoCPUs > 0 {
		r.CPU = &specs.LinuxCPU{}
		if n > 0 {
			quota := n * cpuPeriod / 1e9
			if quota < 1000 {
				quota = 1000 // the kernel refuses quotas under 1ms
			}
			period := uint64(cpuPeriod)
			r.CPU.Quota, r.CPU.Period = &quota, &period
		}
		if res := s.Reservations.NanoCPUs; res > 0 {
			shares := uint64(res * 1024 / 1e9)
			if shares < 2 {
				shares = 2
			}
			r.CPU.Shares = &shares
		}
	}
	if p := s.Resources.Pids; p > 0 {
		r.Pids = &specs.LinuxPids{Limit: &p}
	}
	return r
}

// rlimits are the task's Ulimits; limits it does not set are the ones the
// container inherits from the node (the shim's), as with docker's daemon.
func rlimits(us []runtime.Ulimit) []specs.POSIXRlimit {
	if len(us) == 0 {
		return nil
	}
	byType := make(map[string]specs.POSIXRlimit)
	for _, u := range us {
		byType[rlimitType(u.Name)] = specs.POSIXRlimit{Type: rlimitType(u.Name), Soft: rlimitValue(u.Soft), Hard: rlimitValue(u.Hard)}
	}
	out := make([]specs.POSIXRlimit, 0, len(byType))
	for _, l := range byType {
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Type < out[j].Type })
	return out
}

// rlimitValue maps -1 (unlimited) to RLIM_INFINITY.
func rlimitValue(v int64) uint64 {
	if v < 0 {
		return ^uint64(0)
	}
	return uint64(v)
}

func copyLabels(l map[string]string) map[string]string {
	if len(l) == 0 {
		return nil
	}
	out := make(map[string]string, len(l))
	for k, v := range l {
		out[k] = v
	}
	return out
}
