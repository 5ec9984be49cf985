package shoal

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/shoalhq/shoal/runtime"
)

// ServiceMode says how many tasks a service runs.
type ServiceMode int

const (
	// Replicated services run Replicas tasks, spread over the eligible nodes.
	Replicated ServiceMode = iota
	// Global services run one task on every eligible node, including nodes
	// that join later.
	Global
)

func (m ServiceMode) String() string {
	switch m {
	case Replicated:
		return "replicated"
	case Global:
		return "global"
	}
	return fmt.Sprintf("ServiceMode(%d)", int(m))
}

// ServiceSpec declares a service: what to run and how many. The cluster keeps
// it true.
type ServiceSpec struct {
	// Name is unique in the cluster (case-insensitive): letters, digits, '-',
	// '_' and '.', starting with a letter or digit, at most 63 characters.
	Name   string
	Labels map[string]string
	// Mode is Replicated (the zero value) or Global.
	Mode ServiceMode
	// Replicas is the number of tasks of a replicated service; ignored (and
	// must be 0) for global services.
	Replicas int
	// Task is what every task of the service runs.
	Task TaskSpec
	// Update says how tasks are replaced when Task changes.
	Update UpdatePolicy
	// Ports are the ports the service publishes. Each task gets its own
	// host port for every target (see Task.Endpoints); a change of Ports
	// redeploys the tasks.
	Ports []PortConfig
}

// Protocol is a port's transport protocol.
type Protocol int

const (
	// TCP is the zero value.
	TCP Protocol = iota
	UDP
)

func (p Protocol) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return fmt.Sprintf("Protocol(%d)", int(p))
}

// PublishMode says where a published port is bound.
type PublishMode int

const (
	// Ingress publishes the port on every node through the routing mesh,
	// which forwards connections to the service's tasks (the default).
	Ingress PublishMode = iota
	// Host binds the published port only on the nodes that run a task of
	// the service, straight to that task. The scheduler then never puts two
	// tasks using the same host port and protocol on one node.
	Host
)

func (m PublishMode) String() string {
	switch m {
	case Ingress:
		return "ingress"
	case Host:
		return "host"
	}
	return fmt.Sprintf("PublishMode(%d)", int(m))
}

// PortConfig is one port of a service.
type PortConfig struct {
	// Target is the port the task listens on (1-65535). The process runtime
	// tells the task which host port to listen on instead, through PORT
	// (the first target) and SHOAL_PORT_<Target>.
	Target uint16
	// Published is the port clients connect to. In Ingress mode 0 asks the
	// manager to allocate one from 30000-32767 (reported in Service.Ports);
	// in Host mode it must be set. A published ingress port is unique in
	// the cluster: a second service asking for it is refused with
	// ErrInvalidSpec naming the service that has it.
	Published uint16
	// Protocol is TCP (the zero value) or UDP.
	Protocol Protocol
	// Mode is Ingress (the zero value) or Host.
	Mode PublishMode
}

// String returns e.g. "8080:80/tcp (ingress)".
func (p PortConfig) String() string {
	return fmt.Sprintf("%d:%d/%s (%s)", p.Published, p.Target, p.Protocol, p.Mode)
}

// TaskEndpoint is where one target port of a running task is reachable.
type TaskEndpoint struct {
	Target   uint16
	Protocol Protocol
	// Addr is the task's node address and the host port the runtime gave
	// the task, or, for runtimes that give each task its own address, that
	// address and port.
	Addr netip.AddrPort
}

// TaskSpec says what a task runs and where it may run.
type TaskSpec struct {
	// Command is the program and its arguments; Command[0] is looked up in
	// PATH if it has no slash. Required without Image; with Image it
	// replaces the image's ENTRYPOINT and drops its CMD.
	Command []string
	// Args follow Command. With Image and no Command the task runs the
	// image's ENTRYPOINT + Args, or ENTRYPOINT + CMD when Args is empty.
	Args []string
	// Image makes the task a container of that image ("nginx:1.13"); the
	// manager pins a tag to its digest where it can (see Service.Warnings).
	// The fields from here to RegistryAuth need it.
	Image string
	// User is "name", "uid", "name:group" or "uid:gid" of the image; ""
	// means the image's USER.
	User string
	// Hostname is a text/template the task's node expands: .Service.ID,
	// .Service.Name, .Service.Labels, .Task.ID, .Task.Slot (the node ID for
	// a global service), .Task.Name ("<service>.<slot>.<task ID>"), .Node.ID,
	// .Node.Hostname, .Node.Platform.OS, .Node.Platform.Architecture; ""
	// means the task ID's first 12 characters.
	Hostname string
	Mounts   []Mount
	// ReadOnlyRootfs mounts the image's filesystem read-only.
	ReadOnlyRootfs bool
	// CapAdd and CapDrop change docker's default capabilities ("NET_ADMIN",
	// "CAP_SYS_TIME", "ALL"); drops apply first.
	CapAdd, CapDrop []string
	// Sysctls are namespaced kernel parameters: kernel.msg*, kernel.sem,
	// kernel.shm*, fs.mqueue.*, and net.* without HostNetwork.
	Sysctls map[string]string
	Ulimits []Ulimit
	// Init runs an init as PID 1 that reaps zombies and forwards signals.
	Init bool
	// ContainerLabels are the container's (Labels are the service's).
	ContainerLabels map[string]string
	// HostNetwork runs the container in its node's network namespace.
	HostNetwork bool
	// RegistryAuth are the credentials to pull Image with, sent only to the
	// nodes that run the task; no answer of the API includes them. On
	// UpdateService nil keeps the stored ones, an empty one removes them.
	RegistryAuth *RegistryAuth
	// Env holds KEY=value pairs added to the task's environment.
	Env []string
	// Dir is the working directory; empty means a directory per task that the
	// runtime creates.
	Dir string
	// StopSignal is sent to stop the task (default SIGTERM); after
	// StopGracePeriod (default 10s) the task is killed.
	StopSignal      string
	StopGracePeriod time.Duration
	// Reservations are resources the scheduler sets aside on the task's node.
	Reservations Resources
	// Limits cap what the task may use, where the runtime can enforce them.
	Limits Resources
	// Constraints restrict placement, e.g. "node.labels.zone==a",
	// "node.role!=manager", "node.hostname==web-1", "node.platform.os==linux".
	Constraints []string
	// Preferences spread the tasks evenly over the values of node labels,
	// outermost first ("spread=node.labels.zone", then
	// "spread=node.labels.rack" within each zone), as docker's
	// --placement-pref: each value gets an equal share whatever its number
	// of nodes, and nodes without the label form one more group.
	Preferences []string
	// MaxReplicasPerNode caps the tasks of this service on one node (0: no cap).
	MaxReplicasPerNode int
	// Restart says when a task that ended is replaced.
	Restart RestartPolicy
	// ForceUpdate, changed to any other value, redeploys every task even if
	// nothing else in the spec changed.
	ForceUpdate uint64
	// HealthCheck is how the task's node tells whether the task serves. nil
	// means the image's HEALTHCHECK, if the image has one (and no check for
	// a task without an image). A task with a check enters the routing mesh
	// once healthy and leaves it when unhealthy; an unhealthy task is
	// stopped, marked TaskFailed with the probe's output, and replaced
	// under Restart.
	HealthCheck *HealthCheck
}

// HealthCheck is a task's health check: exactly one test (Command, HTTP or
// TCP), or Disable alone. The task is starting until a probe succeeds
// (failures within StartPeriod do not count), healthy after a success, and
// unhealthy after Retries consecutive failures; a task that recovers
// within Retries is left alone.
type HealthCheck struct {
	// Command runs in the task's environment (inside its container, or as a
	// program of the node with the task's environment and working
	// directory); exit code 0 is healthy. Command[0] is the program, as
	// docker's HEALTHCHECK CMD form: no shell is involved.
	Command []string
	// HTTP is a GET against the task's endpoint of one of its target ports.
	HTTP *HTTPCheck
	// TCP is a connect to the task's endpoint of one of its target ports.
	TCP *TCPCheck
	// Interval is the time between probes once the start period is over;
	// 0 means 30s (docker's default).
	Interval time.Duration
	// Timeout bounds one probe: one that takes longer fails; 0 means 30s.
	Timeout time.Duration
	// Retries is how many consecutive failures make the task unhealthy;
	// 0 means 3.
	Retries int
	// StartPeriod is the time after the start during which failures do not
	// count (a success still makes the task healthy); 0 means none.
	StartPeriod time.Duration
	// StartInterval is the time between probes within StartPeriod; 0 means
	// 5s.
	StartInterval time.Duration
	// Disable switches off the image's HEALTHCHECK; no test may be set
	// with it.
	Disable bool
}

// HTTPCheck is an HTTP GET of Path on the task's endpoint of target port
// Port, which must be a TCP target of the service's Ports (for the process
// runtime, the node's address and the task's host port).
type HTTPCheck struct {
	Port uint16
	// Path is the request's path; "" means "/".
	Path string
	// Status is the range of healthy status codes; the zero value means
	// 200-399.
	Status StatusRange
}

// StatusRange is an inclusive range of HTTP status codes.
type StatusRange struct {
	Min, Max int
}

// TCPCheck is a TCP connect to the task's endpoint of target port Port,
// which must be a TCP target of the service's Ports; a connection accepted
// within the timeout is healthy.
type TCPCheck struct {
	Port uint16
}

// HealthState is a task's health as its node's checks see it.
type HealthState int

// Health states.
const (
	// HealthNone: the task has no health check (or has not started).
	HealthNone HealthState = iota
	// HealthStarting: no probe has succeeded yet.
	HealthStarting
	// HealthHealthy: the last probe succeeded, or fewer than Retries failed
	// since the last success.
	HealthHealthy
	// HealthUnhealthy: Retries consecutive probes failed.
	HealthUnhealthy
)

func (h HealthState) String() string {
	switch h {
	case HealthNone:
		return "none"
	case HealthStarting:
		return "starting"
	case HealthHealthy:
		return "healthy"
	case HealthUnhealthy:
		return "unhealthy"
	}
	return fmt.Sprintf("HealthState(%d)", int(h))
}

// Resources are CPU and memory amounts.
type Resources struct {
	// NanoCPUs is CPU in units of 1e-9 CPUs (1e9 = one CPU).
	NanoCPUs int64
	// MemoryBytes is memory in bytes.
	MemoryBytes int64
	// Pids caps a task's processes and threads (a limit only: it must be 0
	// in Reservations).
	Pids int64
}

// MountType is the kind of a Mount.
type MountType int

const (
	// MountBind shows Source, an absolute path on the node, at Target.
	MountBind MountType = iota
	// MountVolume mounts the node's volume named Source (letters, digits,
	// '_', '.', '-'), created on first use and kept after the task.
	MountVolume
	// MountTmpfs mounts a fresh tmpfs (no Source) of TmpfsSize bytes at most
	// (0: half the node's memory).
	MountTmpfs
)

func (m MountType) String() string {
	if m >= 0 && int(m) < len(mountTypeNames) {
		return mountTypeNames[m]
	}
	return fmt.Sprintf("MountType(%d)", int(m))
}

var mountTypeNames = [...]string{"bind", "volume", "tmpfs"}

// Mount is a filesystem a container sees at Target, an absolute path that
// no other mount of the task has.
type Mount struct {
	Type           MountType
	Source, Target string
	ReadOnly       bool
	TmpfsSize      int64
}

// Ulimit is an rlimit of a container's processes: Name as docker's --ulimit
// takes it ("nofile", "nproc", ...), -1 for unlimited, Soft at most Hard.
type Ulimit struct {
	Name       string
	Soft, Hard int64
}

// RegistryAuth are credentials to pull a private image: Username and
// Password, an IdentityToken (OAuth2 refresh token) or a RegistryToken
// (bearer token). String and GoString never print the secrets.
type RegistryAuth struct {
	Username, Password, IdentityToken, RegistryToken string
}

func (a RegistryAuth) String() string   { return runtime.RegistryAuth(a).String() }
func (a RegistryAuth) GoString() string { return a.String() }

// RestartCondition says which endings of a task lead to a replacement.
type RestartCondition int

const (
	// RestartAny replaces a task however it ends (the default).
	RestartAny RestartCondition = iota
	// RestartOnFailure replaces a task that failed (non-zero exit, rejected).
	RestartOnFailure
	// RestartNever never replaces a task that ended.
	RestartNever
)

func (c RestartCondition) String() string {
	switch c {
	case RestartAny:
		return "any"
	case RestartOnFailure:
		return "on-failure"
	case RestartNever:
		return "none"
	}
	return fmt.Sprintf("RestartCondition(%d)", int(c))
}

// RestartPolicy says when and how often a task that ended is replaced.
type RestartPolicy struct {
	Condition RestartCondition
	// Delay is the wait between a task's end (it exited, failed or was
	// rejected) and its replacement's start; 0 means the cluster's default
	// (Config.RestartDelay, 5s). A task whose node went down or was drained
	// is replaced at once, with no delay: the task did not fail, its node
	// did.
	Delay time.Duration
	// MaxAttempts limits replacements within Window (0: no limit; Window 0:
	// over the service's life).
	MaxAttempts int
	Window      time.Duration
}

// UpdateOrder says whether an old task stops before its replacement starts.
type UpdateOrder int

const (
	// StopFirst stops the old task, then starts the new one (the default).
	StopFirst UpdateOrder = iota
	// StartFirst starts the new task before the old one stops.
	StartFirst
)

func (o UpdateOrder) String() string {
	if o == StartFirst {
		return "start-first"
	}
	return "stop-first"
}

// UpdatePolicy says how a service's tasks are replaced when its TaskSpec
// changes.
type UpdatePolicy struct {
	// Parallelism is how many tasks are replaced at once (0 means 1).
	Parallelism int
	// Delay is the wait between replacements.
	Delay time.Duration
	// Order is StopFirst (the default) or StartFirst.
	Order UpdateOrder
}

// UpdateState is the progress of a service update.
type UpdateState int

// Update states.
const (
	UpdateNone UpdateState = iota
	UpdateUpdating
	UpdateCompleted
	UpdatePaused
)

func (s UpdateState) String() string {
	switch s {
	case UpdateNone:
		return "none"
	case UpdateUpdating:
		return "updating"
	case UpdateCompleted:
		return "completed"
	case UpdatePaused:
		return "paused"
	}
	return fmt.Sprintf("UpdateState(%d)", int(s))
}

// UpdateStatus reports a service update's progress.
type UpdateStatus struct {
	State       UpdateState
	StartedAt   time.Time
	CompletedAt time.Time
	Message     string
}

// Version identifies one state of a stored object. Updates carry the version
// they were made from; an update from a stale version fails with ErrConflict.
type Version uint64

// Meta is common to every stored object.
type Meta struct {
	Version   Version
	CreatedAt time.Time
	UpdatedAt time.Time
}

// Service is a declared service as the cluster stores it.
type Service struct {
	ID string
	Meta
	Spec ServiceSpec
	// SpecVersion increases each time Spec.Task changes; tasks record the
	// SpecVersion they were made from.
	SpecVersion  uint64
	UpdateStatus UpdateStatus
	// Ports are Spec.Ports as the manager allocated them: every Published
	// filled in. Spec keeps the ports as they were written, so an update
	// from Spec asks for the same allocation again (and keeps it).
	Ports []PortConfig
	// Warnings are set only on what CreateService and UpdateService return,
	// e.g. that the image could not be pinned to a digest.
	Warnings []string
	// Progress counts the service's tasks when GetService or ListServices
	// answered (zero elsewhere).
	Progress ServiceProgress
}

// ServiceProgress is what docker service ls shows as REPLICAS 3/5.
type ServiceProgress struct {
	// Desired is the replicas, or the tasks a global service wants running.
	Desired int
	// Running counts the tasks running and wanted running; Updated those of
	// them that run the service's current spec.
	Running, Updated int
}

// String returns "running/desired", as docker prints it.
func (p ServiceProgress) String() string { return fmt.Sprintf("%d/%d", p.Running, p.Desired) }

// TaskState is a task's place in its life. States only move forward.
type TaskState int

// Task states, in order.
const (
	TaskNew TaskState = iota
	TaskPending
	TaskAssigned
	TaskAccepted
	TaskPreparing
	TaskReady
	TaskStarting
	TaskRunning
	TaskComplete
	TaskShutdown
	TaskFailed
	TaskRejected
	TaskOrphaned
	TaskRemove
)

var taskStateNames = [...]string{"new", "pending", "assigned", "accepted", "preparing", "ready",
	"starting", "running", "complete", "shutdown", "failed", "rejected", "orphaned", "remove"}

func (s TaskState) String() string {
	if s >= 0 && int(s) < len(taskStateNames) {
		return taskStateNames[s]
	}
	return fmt.Sprintf("TaskState(%d)", int(s))
}

// Terminal reports whether a task in this state has ended.
func (s TaskState) Terminal() bool { return s >= TaskComplete }

// TaskStatus is what is known of a task's actual state.
type TaskStatus struct {
	State     TaskState
	Timestamp time.Time
	Message   string
	Err       string
	ExitCode  int
	// Health is the task's health while it runs (HealthNone without a
	// check); a task that ended keeps the health it had last.
	Health HealthState
	// HealthOutput is the output of the probe that set Health (at most 4
	// KiB): a command's output and exit code, an HTTP status and body, or
	// why the probe failed. The node reports health changes only, not
	// every probe, so that probes cost the cluster's log nothing while the
	// health holds; an unhealthy task's Err carries the same output.
	HealthOutput string
}

// Task is one instance of a service, placed on one node.
type Task struct {
	ID string
	Meta
	ServiceID   string
	ServiceName string
	// Slot is the replica number of a replicated service's task (1-based); 0
	// for global services.
	Slot uint64
	// NodeID is the node the task is assigned to ("" while pending).
	NodeID       string
	Spec         TaskSpec
	SpecVersion  uint64
	DesiredState TaskState
	Status       TaskStatus
	// Endpoints are where the task's target ports are reachable, one per
	// port of the service, reported by the task's node once the task runs
	// (empty before, and again once the task ended).
	Endpoints []TaskEndpoint
}

// Name returns the task's display name: service.slot (replicated) or
// service.nodeID (global), like docker service ps.
func (t *Task) Name() string {
	if t.Slot > 0 {
		return fmt.Sprintf("%s.%d", t.ServiceName, t.Slot)
	}
	return t.ServiceName + "." + t.NodeID
}

// TaskFilter selects tasks in ListTasks; empty fields match everything.
type TaskFilter struct {
	Service string // service ID or name
	Node    string // node ID
	// DesiredStates, if set, limits the tasks to these desired states.
	DesiredStates []TaskState
	Slot          uint64
}
