package runtime

import (
	"fmt"
	"path"
	"regexp"
	"sort"
	"strings"
)

// Mount types, the values of Mount.Type.
const (
	// MountBind makes Source, an absolute path on the node, visible at
	// Target.
	MountBind = "bind"
	// MountVolume mounts the named local volume Source, created under the
	// runtime's state directory on first use and kept after the task.
	MountVolume = "volume"
	// MountTmpfs mounts a fresh tmpfs, TmpfsSize bytes at most.
	MountTmpfs = "tmpfs"
)

// Mount is one filesystem a container sees at Target.
type Mount struct {
	// Type is MountBind, MountVolume or MountTmpfs.
	Type string
	// Source is the node path (bind, absolute), the volume name (volume:
	// letters, digits, '_', '.', '-', starting with a letter or digit), or
	// empty (tmpfs).
	Source string
	// Target is the absolute path inside the container; no two mounts of a
	// task share one.
	Target string
	// ReadOnly mounts it read-only.
	ReadOnly bool
	// TmpfsSize caps a tmpfs in bytes; 0 means the kernel's default (half
	// of the node's memory). Only for MountTmpfs.
	TmpfsSize int64
}

// Ulimit is one resource limit (setrlimit(2)) of a container's processes.
type Ulimit struct {
	// Name is the limit without its RLIMIT_ prefix, in lower case: "nofile",
	// "nproc", "core", ...; see UlimitNames.
	Name string
	// Soft and Hard are the limits; -1 means unlimited. Soft must not
	// exceed Hard.
	Soft, Hard int64
}

// UlimitNames are the names Ulimit.Name accepts (docker's --ulimit names).
var UlimitNames = []string{
	"as", "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue",
	"nice", "nofile", "nproc", "rss", "rtprio", "rttime", "sigpending", "stack",
}

// RegistryAuth are credentials for pulling a private image (docker's
// --with-registry-auth). Either Username and Password, or IdentityToken (an
// OAuth2 refresh token), or RegistryToken (a bearer token sent as is).
// Its String and GoString methods never print the secrets.
type RegistryAuth struct {
	Username      string
	Password      string
	IdentityToken string
	RegistryToken string
}

// Empty reports whether no credential is set.
func (a RegistryAuth) Empty() bool {
	return a == RegistryAuth{}
}

// String describes the credentials without their secrets.
func (a RegistryAuth) String() string {
	switch {
	case a.Empty():
		return "no registry credentials"
	case a.Username != "":
		return fmt.Sprintf("registry credentials of %q (password redacted)", a.Username)
	default:
		return "registry token (redacted)"
	}
}

// GoString is String, so %#v does not print the secrets either.
func (a RegistryAuth) GoString() string { return a.String() }

// DefaultCapabilities are the capabilities a container gets before
// Spec.CapAdd and Spec.CapDrop apply: docker's default set.
var DefaultCapabilities = []string{
	"CAP_AUDIT_WRITE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID",
	"CAP_KILL", "CAP_MKNOD", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SETFCAP",
	"CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID", "CAP_SYS_CHROOT",
}

// AllCapabilities are the Linux capabilities by name, in kernel order.
var AllCapabilities = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
	"CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
	"CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
	"CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
	"CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
	"CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
	"CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
	"CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
	"CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
}

// NormalizeCapability returns the canonical name of a capability given as
// docker accepts it ("net_admin", "NET_ADMIN", "CAP_NET_ADMIN"), or "ALL";
// ok is false for an unknown name.
func NormalizeCapability(name string) (canonical string, ok bool) {
	up := strings.ToUpper(name)
	if up == "ALL" {
		return "ALL", true
	}
	if !strings.HasPrefix(up, "CAP_") {
		up = "CAP_" + up
	}
	for _, c := range AllCapabilities {
		if c == up {
			return c, true
		}
	}
	return "", false
}

// Capabilities returns the capability set of a container: the default set,
// then CapDrop removed ("ALL" drops every one), then CapAdd added ("ALL"
// adds every one), as docker applies them. Unknown names are skipped
// (Validate reports them). The result is sorted.
func (s Spec) Capabilities() []string {
	set := make(map[string]bool)
	for _, c := range DefaultCapabilities {
		set[c] = true
	}
	for _, name := range s.CapDrop {
		c, ok := NormalizeCapability(name)
		switch {
		case !ok:
		case c == "ALL":
			clear(set)
		default:
			delete(set, c)
		}
	}
	for _, name := range s.CapAdd {
		c, ok := NormalizeCapability(name)
		switch {
		case !ok:
		case c == "ALL":
			for _, all := range AllCapabilities {
				set[all] = true
			}
		default:
			set[c] = true
		}
	}
	out := make([]string, 0, len(set))
	for c := range set {
		out = append(out, c)
	}
	sort.Strings(out)
	return out
}

var (
	volumeName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)
	userPart   = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]*$`)
)

// ValidateUser checks a user given as "name", "uid", "name:group" or
// "uid:gid" ("" means the image's user).
func ValidateUser(u string) error {
	if u == "" {
		return nil
	}
	parts := strings.Split(u, ":")
	if len(parts) > 2 {
		return fmt.Errorf("must be name, uid, name:group or uid:gid, got %q", u)
	}
	for _, p := range parts {
		if len(p) > 32 || !userPart.MatchString(p) {
			return fmt.Errorf("must be name, uid, name:group or uid:gid (names of letters, digits, '_', '.', '-', at most 32), got %q", u)
		}
	}
	return nil
}

// namespacedSysctl reports whether a sysctl is one the kernel keeps per
// namespace (docker's rule: only those may be set in a container); net.*
// belongs to the network namespace, so not with host networking.
func namespacedSysctl(key string, hostNetwork bool) bool {
	switch key {
	case "kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem",
		"kernel.shmall", "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced":
		return true
	}
	if strings.HasPrefix(key, "fs.mqueue.") {
		return true
	}
	return strings.HasPrefix(key, "net.") && !hostNetwork
}

// validateContainer checks the container fields of s, a spec with an
// Image. Errors wrap ErrInvalidTask.
func (s Spec) validateContainer() error {
	if strings.ContainsAny(s.Image, " \t\r\n\x00") {
		return invalid("Spec.Image", "must be an image reference without spaces")
	}
	if err := ValidateUser(s.User); err != nil {
		return invalid("Spec.User", err.Error())
	}
	if len(s.Hostname) > 64 || strings.ContainsAny(s.Hostname, " \t\r\n\x00/") {
		return invalid("Spec.Hostname", "must be at most 64 characters without spaces or '/'")
	}
	targets := make(map[string]int, len(s.Mounts))
	for i, m := range s.Mounts {
		field := fmt.Sprintf("Spec.Mounts[%d]", i)
		switch m.Type {
		case MountBind:
			if !path.IsAbs(m.Source) {
				return invalid(field+".Source", fmt.Sprintf("a bind mount's source must be an absolute path on the node, got %q", m.Source))
			}
		case MountVolume:
			if !volumeName.MatchString(m.Source) || len(m.Source) > 255 {
				return invalid(field+".Source", fmt.Sprintf("a volume's name must be letters, digits, '_', '.', '-', starting with a letter or digit, got %q", m.Source))
			}
		case MountTmpfs:
			if m.Source != "" {
				return invalid(field+".Source", "must be empty for a tmpfs mount")
			}
		default:
			return invalid(field+".Type", fmt.Sprintf("must be %q, %q or %q, got %q", MountBind, MountVolume, MountTmpfs, m.Type))
		}
		if m.TmpfsSize < 0 {
			return invalid(field+".TmpfsSize", "must not be negative")
		}
		if m.TmpfsSize != 0 && m.Type != MountTmpfs {
			return invalid(field+".TmpfsSize", "is only for tmpfs mounts")
		}
		if !path.IsAbs(m.Target) || strings.IndexByte(m.Target, 0) >= 0 {
			return invalid(field+".Target", fmt.Sprintf("must be an absolute path in the container, got %q", m.Target))
		}
		t := path.Clean(m.Target)
		if t == "/" {
			return invalid(field+".Target", "must not be the container's root")
		}
		if j, dup := targets[t]; dup {
			return invalid(field+".Target", fmt.Sprintf("%s is already the target of Spec.Mounts[%d]", t, j))
		}
		targets[t] = i
	}
	for i, c := range s.CapAdd {
		if _, ok := NormalizeCapability(c); !ok {
			return invalid(fmt.Sprintf("Spec.CapAdd[%d]", i), fmt.Sprintf("unknown capability %q", c))
		}
	}
	for i, c := range s.CapDrop {
		if _, ok := NormalizeCapability(c); !ok {
			return invalid(fmt.Sprintf("Spec.CapDrop[%d]", i), fmt.Sprintf("unknown capability %q", c))
		}
	}
	for k := range s.Sysctls {
		if !namespacedSysctl(k, s.HostNetwork) {
			return invalid("Spec.Sysctls["+k+"]", "only namespaced sysctls may be set: kernel.msg*, kernel.sem, kernel.shm*, fs.mqueue.*, and net.* without host networking")
		}
	}
	seen := make(map[string]int, len(s.Ulimits))
	for i, u := range s.Ulimits {
		field := fmt.Sprintf("Spec.Ulimits[%d]", i)
		if !knownUlimit(u.Name) {
			return invalid(field+".Name", fmt.Sprintf("unknown limit %q (one of %s)", u.Name, strings.Join(UlimitNames, ", ")))
		}
		if j, dup := seen[u.Name]; dup {
			return invalid(field+".Name", fmt.Sprintf("%q is already set by Spec.Ulimits[%d]", u.Name, j))
		}
		seen[u.Name] = i
		if u.Soft < -1 || u.Hard < -1 {
			return invalid(field, "limits must be -1 (unlimited) or more")
		}
		if u.Hard != -1 && (u.Soft == -1 || u.Soft > u.Hard) {
			return invalid(field+".Soft", "must not exceed Hard")
		}
	}
	for k := range s.Labels {
		if k == "" {
			return invalid("Spec.Labels", "keys must not be empty")
		}
	}
	return nil
}

// validateNoContainer reports the first container-only field set on a spec
// without an Image: those fields mean something only for a container.
func (s Spec) validateNoContainer() error {
	switch {
	case s.User != "":
		return invalid("Spec.User", "needs Spec.Image: only a container runs as a user of its image")
	case s.Hostname != "":
		return invalid("Spec.Hostname", "needs Spec.Image")
	case len(s.Mounts) > 0:
		return invalid("Spec.Mounts", "needs Spec.Image")
	case s.ReadOnlyRootfs:
		return invalid("Spec.ReadOnlyRootfs", "needs Spec.Image")
	case len(s.CapAdd) > 0 || len(s.CapDrop) > 0:
		return invalid("Spec.CapAdd", "needs Spec.Image")
	case len(s.Sysctls) > 0:
		return invalid("Spec.Sysctls", "needs Spec.Image")
	case len(s.Ulimits) > 0:
		return invalid("Spec.Ulimits", "needs Spec.Image")
	case s.Init:
		return invalid("Spec.Init", "needs Spec.Image")
	case len(s.Labels) > 0:
		return invalid("Spec.Labels", "needs Spec.Image: labels are a container's")
	case !s.RegistryAuth.Empty():
		return invalid("Spec.RegistryAuth", "needs Spec.Image")
	}
	return nil
}

func knownUlimit(name string) bool {
	for _, n := range UlimitNames {
		if n == name {
			return true
		}
	}
	return false
}
