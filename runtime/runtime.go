package runtime

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"path/filepath"
	"strings"
	"time"
)

// Sentinel errors shared by every runtime. Implementations wrap them with
// %w, so callers test for them with errors.Is.
var (
	// ErrNotPrepared is returned by Controller.Start (and Logs) when Prepare
	// has not completed successfully yet.
	ErrNotPrepared = errors.New("runtime: task not prepared")
	// ErrNotStarted is returned by Controller.Wait when Start has not
	// completed successfully yet: there is nothing to wait for.
	ErrNotStarted = errors.New("runtime: task not started")
	// ErrShutdown is returned by Controller.Start when Shutdown was called
	// before the task was started: a task asked to stop is never started.
	ErrShutdown = errors.New("runtime: task was shut down before it started")
	// ErrAlreadyRemoved is returned by Prepare, Start and Logs (and by Wait
	// when the task never exited) after Remove was called.
	ErrAlreadyRemoved = errors.New("runtime: task already removed")
	// ErrInvalidTask wraps every validation error of Task and Spec, so an
	// agent can tell a task that can never run (reject it) from a transient
	// failure (retry it).
	ErrInvalidTask = errors.New("runtime: invalid task")
)

// DefaultStopSignal is the signal sent by Shutdown when Spec.StopSignal is
// empty.
const DefaultStopSignal = "SIGTERM"

// DefaultStopGracePeriod is how long Shutdown waits after the stop signal
// before killing the task when Spec.StopGracePeriod is 0. Ten seconds is the
// Docker default, so programs written for Docker behave the same here.
const DefaultStopGracePeriod = 10 * time.Second

// Task is what a runtime is asked to run: plain Go types, no protobuf.
type Task struct {
	ID          string // task ID, unique in the cluster
	ServiceID   string
	ServiceName string
	Slot        uint64 // replica slot (0 for global services)
	NodeID      string
	Spec        Spec
}

// Validate checks the task ID and the spec. Errors wrap ErrInvalidTask and
// name the offending field and the rule it breaks.
func (t Task) Validate() error {
	if t.ID == "" {
		return invalid("Task.ID", "must not be empty")
	}
	return t.Spec.Validate()
}

// Spec says what to run and how to stop it.
//
// Without Image, the task is a program of the node (Command is its argv)
// and the container fields below Image must be empty. With Image, the task
// is a container of that image, and Command and Args have docker's meaning
// against the image's ENTRYPOINT and CMD:
//
//   - Command set: it replaces ENTRYPOINT, and the argv is Command + Args
//     (the image's CMD is not used, as with docker run --entrypoint).
//   - Command empty: the argv is ENTRYPOINT + Args, or ENTRYPOINT + CMD
//     when Args is empty too.
type Spec struct {
	// Command is the argv of a program (no Image): Command[0] is the
	// program, looked up in the task's PATH if it contains no slash. With
	// an Image it replaces the image's ENTRYPOINT (see above).
	Command []string
	// Args are appended to Command (no Image), or replace the image's CMD.
	Args []string
	// Env holds "KEY=value" entries added after the runtime's base
	// environment (each runtime documents its base; a container's is the
	// image's); a later entry replaces an earlier one with the same key.
	Env []string
	// Dir is the working directory, an absolute path. Without Image it
	// must exist, and "" means a per-task directory the runtime creates and
	// removes; in a container "" means the image's WORKDIR (or /).
	Dir string
	// StopSignal is the signal Shutdown sends first, e.g. "SIGTERM"
	// (default), "SIGINT", "QUIT" or "3"; see ParseSignal.
	StopSignal string
	// StopGracePeriod is how long Shutdown waits after StopSignal before it
	// kills the task; 0 means DefaultStopGracePeriod.
	StopGracePeriod time.Duration
	// Resources are limits. A runtime that cannot enforce one rejects the
	// task (ErrInvalidTask) rather than run it unlimited.
	Resources Resources
	// Reservations are what the scheduler set aside for the task; a
	// container runtime turns Reservations.NanoCPUs into the task's CPU
	// weight (its share when CPUs are contended).
	Reservations Resources
	// Ports are the ports the task listens on; the runtime makes each
	// reachable and reports where through EndpointReporter.
	Ports []PortRequest

	// Image is a container image reference ("nginx:1.13",
	// "registry.example:5000/team/app@sha256:..."); "" runs a program of
	// the node. The fields below need it.
	Image string
	// RegistryAuth are the credentials to pull Image with; empty pulls
	// anonymously. Never logged.
	RegistryAuth RegistryAuth
	// User runs the container's processes as "name", "uid", "name:group" or
	// "uid:gid", names resolved in the image's /etc/passwd and /etc/group;
	// "" means the image's USER (or root).
	User string
	// Hostname is the container's host name, templates already expanded by
	// the agent; "" means the first 12 characters of the task ID, as docker
	// does.
	Hostname string
	// Mounts are bind mounts, named volumes and tmpfs mounts.
	Mounts []Mount
	// ReadOnlyRootfs mounts the image's root filesystem read-only.
	ReadOnlyRootfs bool
	// CapAdd and CapDrop change DefaultCapabilities: names as docker takes
	// them ("NET_ADMIN", "CAP_NET_ADMIN", "ALL"); drops apply first.
	CapAdd, CapDrop []string
	// Sysctls are namespaced kernel parameters set in the container.
	Sysctls map[string]string
	// Ulimits are rlimits of the container's processes; unset ones keep the
	// runtime's defaults.
	Ulimits []Ulimit
	// Init runs a minimal init as PID 1 that reaps zombies and forwards
	// signals to the command (docker run --init).
	Init bool
	// Labels are the container's labels.
	Labels map[string]string
	// HostNetwork runs the container in the node's network namespace
	// instead of one of its own; its ports are then the node's.
	HostNetwork bool
}

// Port protocols, the values of PortRequest.Protocol.
const (
	ProtocolTCP = "tcp"
	ProtocolUDP = "udp"
)

// PortRequest is one port a task listens on.
type PortRequest struct {
	// Target is the port the task's program is written for (1-65535).
	Target uint16
	// Protocol is ProtocolTCP ("" means TCP too) or ProtocolUDP.
	Protocol string
	// HostPort is the node port to use (a host-mode published port); 0 lets
	// the runtime pick a free one.
	HostPort uint16
}

// EffectiveProtocol returns Protocol, or ProtocolTCP when it is empty.
func (p PortRequest) EffectiveProtocol() string {
	if p.Protocol == "" {
		return ProtocolTCP
	}
	return p.Protocol
}

// Resources are per-task amounts: limits in Spec.Resources, what the
// scheduler set aside in Spec.Reservations. Zero means unlimited (or
// nothing reserved).
type Resources struct {
	NanoCPUs    int64 // CPU in units of 1e-9 CPUs (1e9 = one CPU)
	MemoryBytes int64 // memory in bytes
	Pids        int64 // most processes and threads at once (limits only)
}

// Validate checks every field of the spec. Errors wrap ErrInvalidTask and
// name the field and the rule, e.g. "Spec.Command: must not be empty".
func (s Spec) Validate() error {
	if s.Image == "" {
		if len(s.Command) == 0 {
			return invalid("Spec.Command", "must not be empty (or set Spec.Image)")
		}
		if err := s.validateNoContainer(); err != nil {
			return err
		}
	} else if err := s.validateContainer(); err != nil {
		return err
	}
	if len(s.Command) > 0 && s.Command[0] == "" {
		return invalid("Spec.Command[0]", "program must not be empty")
	}
	for i, arg := range s.Args {
		if strings.IndexByte(arg, 0) >= 0 {
			return invalid(fmt.Sprintf("Spec.Args[%d]", i), "must not contain NUL bytes")
		}
	}
	for i, arg := range s.Command {
		if strings.IndexByte(arg, 0) >= 0 {
			return invalid(fmt.Sprintf("Spec.Command[%d]", i), "must not contain NUL bytes")
		}
	}
	for i, kv := range s.Env {
		field := fmt.Sprintf("Spec.Env[%d]", i)
		k, _, ok := strings.Cut(kv, "=")
		switch {
		case !ok:
			return invalid(field, "must have the form KEY=value")
		case k == "":
			return invalid(field, "key must not be empty")
		case strings.IndexByte(kv, 0) >= 0:
			return invalid(field, "must not contain NUL bytes")
		}
	}
	if s.Dir != "" && !filepath.IsAbs(s.Dir) {
		return invalid("Spec.Dir", "must be an absolute path or empty")
	}
	if s.StopSignal != "" {
		if _, err := ParseSignal(s.StopSignal); err != nil {
			return fmt.Errorf("%w: Spec.StopSignal: %w", ErrInvalidTask, err)
		}
	}
	if s.StopGracePeriod < 0 {
		return invalid("Spec.StopGracePeriod", "must not be negative")
	}
	if s.Resources.NanoCPUs < 0 {
		return invalid("Spec.Resources.NanoCPUs", "must not be negative")
	}
	if s.Resources.MemoryBytes < 0 {
		return invalid("Spec.Resources.MemoryBytes", "must not be negative")
	}
	if s.Resources.Pids < 0 {
		return invalid("Spec.Resources.Pids", "must not be negative")
	}
	if s.Reservations.NanoCPUs < 0 {
		return invalid("Spec.Reservations.NanoCPUs", "must not be negative")
	}
	if s.Reservations.MemoryBytes < 0 {
		return invalid("Spec.Reservations.MemoryBytes", "must not be negative")
	}
	if s.Reservations.Pids != 0 {
		return invalid("Spec.Reservations.Pids", "must be 0: processes are only limited, never reserved")
	}
	targets := make(map[PortRequest]int, len(s.Ports))
	hosts := make(map[PortRequest]int, len(s.Ports))
	for i, p := range s.Ports {
		field := fmt.Sprintf("Spec.Ports[%d]", i)
		if p.Target == 0 {
			return invalid(field+".Target", "must be 1-65535")
		}
		proto := p.EffectiveProtocol()
		if proto != ProtocolTCP && proto != ProtocolUDP {
			return invalid(field+".Protocol", fmt.Sprintf("must be %q or %q, got %q", ProtocolTCP, ProtocolUDP, p.Protocol))
		}
		tk := PortRequest{Target: p.Target, Protocol: proto}
		if j, dup := targets[tk]; dup {
			return invalid(field+".Target", fmt.Sprintf("%d/%s is already listed in Spec.Ports[%d]", p.Target, proto, j))
		}
		targets[tk] = i
		if p.HostPort != 0 {
			hk := PortRequest{HostPort: p.HostPort, Protocol: proto}
			if j, dup := hosts[hk]; dup {
				return invalid(field+".HostPort", fmt.Sprintf("%d/%s is already used by Spec.Ports[%d]", p.HostPort, proto, j))
			}
			hosts[hk] = i
		}
	}
	return nil
}

// EffectiveStopSignal returns StopSignal in canonical form ("SIGTERM"),
// or DefaultStopSignal when it is empty or invalid (Validate reports the
// latter).
func (s Spec) EffectiveStopSignal() string {
	if s.StopSignal == "" {
		return DefaultStopSignal
	}
	sig, err := ParseSignal(s.StopSignal)
	if err != nil {
		return DefaultStopSignal
	}
	return SignalName(sig)
}

// EffectiveStopGracePeriod returns StopGracePeriod, or
// DefaultStopGracePeriod when it is not positive.
func (s Spec) EffectiveStopGracePeriod() time.Duration {
	if s.StopGracePeriod <= 0 {
		return DefaultStopGracePeriod
	}
	return s.StopGracePeriod
}

func invalid(field, rule string) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalidTask, field, rule)
}

// Runtime makes controllers. Implementations are safe for concurrent use.
type Runtime interface {
	// Controller returns the controller of task t. It starts nothing and
	// does no I/O beyond validation; an invalid task gets an error wrapping
	// ErrInvalidTask. It may be called concurrently for different tasks.
	Controller(t Task) (Controller, error)
}

// Controller drives one task through its lifecycle. The agent calls
// Prepare, Start, then Wait; Shutdown may be called at any time and
// concurrently with Wait; Remove last. Every method is idempotent and safe
// for concurrent use; the agent owns the task state machine and decides
// every transition, a controller only performs actions.
type Controller interface {
	// Prepare gets the task ready to start (resolve the program, create the
	// task directory and log files). Calling it again after it succeeded is
	// a no-op. Returns ErrAlreadyRemoved after Remove, ctx.Err() if ctx is
	// done, or an error wrapping ErrInvalidTask if the task can never run.
	Prepare(ctx context.Context) error
	// Start starts the task and returns once it is started; it does not wait
	// for it to exit. Calling it again after it succeeded is a no-op, even
	// once the task has exited. Returns ErrNotPrepared before Prepare,
	// ErrShutdown after Shutdown, ErrAlreadyRemoved after Remove.
	Start(ctx context.Context) error
	// Wait blocks until the task exits and returns its ExitStatus, or
	// returns ctx.Err() when ctx is done first. It may be called many times
	// and concurrently; every call gets the same ExitStatus. A non-zero exit
	// is reported in ExitStatus, not as an error; the error is for failures
	// of the runtime itself. Returns ErrNotStarted before Start.
	Wait(ctx context.Context) (ExitStatus, error)
	// Shutdown sends the stop signal, waits the grace period, then kills the
	// task (its whole process group or container). It returns nil once the
	// task has exited, or ctx.Err() if ctx ends first (the kill after the
	// grace period still happens). Before Start it only records that the
	// task must never start; after exit or Remove it is a no-op. Safe to
	// call concurrently with Wait and with itself.
	Shutdown(ctx context.Context) error
	// Remove releases everything: kills the task if it still runs, deletes
	// runtime-owned directories and, per the runtime's configuration, the
	// logs. It returns ctx.Err() if ctx ends first; calling it again resumes
	// the clean-up. Once it returned nil, every later call returns nil.
	Remove(ctx context.Context) error
}

// ExitStatus describes how a task ended.
type ExitStatus struct {
	Code    int    // exit code; -1 if killed by a signal
	Signal  string // signal name ("SIGKILL") if killed by one, else ""
	Message string // human-readable, e.g. "exit code 3" or "killed by SIGKILL after 10s grace period"
}

// Success reports whether the task exited by itself with code 0.
func (e ExitStatus) Success() bool { return e.Code == 0 && e.Signal == "" }

// String returns Message, or a description built from Code and Signal.
func (e ExitStatus) String() string {
	if e.Message != "" {
		return e.Message
	}
	if e.Signal != "" {
		return "killed by " + e.Signal
	}
	return fmt.Sprintf("exit code %d", e.Code)
}

// Endpoint is where one target port of a started task is reachable.
type Endpoint struct {
	Target   uint16
	Protocol string // ProtocolTCP or ProtocolUDP
	// Addr is the address and port to connect to. An unspecified address
	// (0.0.0.0, or the zero netip.Addr) means the address of the task's
	// node: runtimes that run tasks in the node's network (the process
	// runtime) report only the host port; runtimes that give each task its
	// own address report that address.
	Addr netip.AddrPort
}

// EndpointReporter is an optional capability of a Controller, found by type
// assertion: the runtime tells where the task's Spec.Ports are reachable.
type EndpointReporter interface {
	// Endpoints returns one Endpoint per Spec.Ports entry, in the same
	// order, once Start succeeded (nil before, and for a task without
	// ports). The result is the caller's to keep. Safe for concurrent use.
	Endpoints() []Endpoint
}

// LogStreamer is an optional capability of a Controller, found by type
// assertion: it streams the task's output as kept by the runtime.
type LogStreamer interface {
	// Logs returns a reader of the task's output selected by opts. The
	// reader must be closed; Close unblocks a pending Read. Safe for
	// concurrent use, and several readers may be open at once. Returns
	// ErrNotPrepared before Prepare and ErrAlreadyRemoved after Remove.
	Logs(ctx context.Context, opts LogOptions) (io.ReadCloser, error)
}

// Log stream names for LogOptions.Stream.
const (
	StreamStdout = "stdout"
	StreamStderr = "stderr"
)

// LogOptions selects what LogStreamer.Logs returns.
type LogOptions struct {
	// Stream is StreamStdout, StreamStderr, or "" for both. With "" the two
	// streams are merged chunk by chunk as the runtime reads them: the
	// order within each stream is kept, the order between them is only
	// approximate because runtimes keep them apart without timestamps.
	Stream string
	// Follow keeps the reader open after the output kept so far, returning
	// new output as it is written, until the task exits (then io.EOF once
	// everything is read), the task is removed, or ctx ends (then ctx.Err()).
	Follow bool
}

// Validate checks Stream.
func (o LogOptions) Validate() error {
	switch o.Stream {
	case "", StreamStdout, StreamStderr:
		return nil
	}
	return fmt.Errorf("LogOptions.Stream: must be %q, %q or empty, got %q", StreamStdout, StreamStderr, o.Stream)
}

// ExecRequest is a command to run inside a started task's environment.
type ExecRequest struct {
	// Command is the argv; Command[0] is looked up in the task's PATH.
	Command []string
	// Env is added to the task's environment.
	Env []string
	// User and Dir override the task's ("" keeps them).
	User string
	Dir  string
	// Stdout and Stderr receive the command's output; nil discards it.
	Stdout, Stderr io.Writer
}

// Execer is an optional capability of a Controller, found by type
// assertion: it runs another command in the task's environment (inside its
// container, for a container runtime), as health checks need.
type Execer interface {
	// Exec runs req in the started task and returns its exit code once it
	// exits; a non-zero code is not an error. When ctx ends first the
	// command is killed and ctx.Err() returned. Returns ErrNotStarted
	// before Start and an error once the task has exited. Safe for
	// concurrent use.
	Exec(ctx context.Context, req ExecRequest) (exitCode int, err error)
}

// Restorer is an optional capability of a Runtime, found by type assertion:
// its tasks can outlive the agent that started them (docker's
// live-restore). An agent that starts again asks it for each task the
// manager says this node runs before deciding that the task was lost.
type Restorer interface {
	// Restore returns a controller of task t, already started, if the
	// runtime still has t from an earlier run of the agent: Wait reports its
	// exit (at once if it exited meanwhile), Shutdown and Remove work as
	// for any started task. ok is false if the runtime knows nothing of t.
	// Safe for concurrent use for different tasks.
	Restore(ctx context.Context, t Task) (ctl Controller, ok bool, err error)
	// Restorable lists the IDs of the tasks the runtime still has from
	// earlier runs (running or exited), so that an agent can discard those
	// no longer assigned to it.
	Restorable(ctx context.Context) ([]string, error)
	// Discard stops (stop signal, grace period, kill) and removes a task of
	// an earlier run that the agent no longer has, knowing only its ID.
	// Unknown IDs are a no-op.
	Discard(ctx context.Context, taskID string) error
}

// Detacher is an optional capability of a Controller, found by type
// assertion, of runtimes that are Restorers: Detach lets go of a started
// task without stopping it, so that a later Restore picks it up; the
// controller must not be used afterwards. Idempotent.
type Detacher interface {
	Detach() error
}

// HealthConfig is the health check a task's image declares (docker's
// HEALTHCHECK). Zero durations and Retries mean the agent's defaults.
type HealthConfig struct {
	// Test is {"CMD", args...}, {"CMD-SHELL", command} or {"NONE"} (no
	// check).
	Test          []string
	Interval      time.Duration
	Timeout       time.Duration
	StartPeriod   time.Duration
	StartInterval time.Duration
	Retries       int
}

// ImageHealthchecker is an optional capability of a Controller, found by
// type assertion, of runtimes that run images: the health check the task's
// image declares, which the agent runs when the task's spec sets none.
type ImageHealthchecker interface {
	// ImageHealthcheck returns the image's HEALTHCHECK once Prepare
	// succeeded (and for a restored task); nil before, and when the image
	// declares none. The result is the caller's to keep. Safe for
	// concurrent use.
	ImageHealthcheck() *HealthConfig
}
