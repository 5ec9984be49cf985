// Package process is Shoal's default runtime: it runs each task as a plain
// host process with os/exec, needing no root and no container engine.
//
// # Task directory
//
// Every task gets Config.Dir/<taskID>/:
//
//	stdout.log   the task's standard output (appended; never truncated)
//	stderr.log   the task's standard error
//	work/        HOME, and the working directory unless Spec.Dir is set
//
// Remove deletes work/ always, and the log files too unless Config.KeepLogs
// (the default keeps them). Spec.Dir, owned by the caller, is never deleted.
// Task IDs must be safe as a file name: [A-Za-z0-9_.-], not starting with '.'.
//
// # Environment
//
// A task does not inherit the host's environment. It gets, in order (a
// later entry with the same key wins):
//
//	the host variables named in Config.PassEnv (default: PATH only;
//	    PATH=DefaultPath if the host has none)
//	HOME=<work dir>
//	SHOAL_TASK_ID, SHOAL_TASK_DIR (=<work dir>), SHOAL_SERVICE_ID,
//	    SHOAL_SERVICE_NAME, SHOAL_TASK_SLOT, SHOAL_NODE_ID
//	Spec.Env
//	with Spec.Ports, set at Start: PORT (the host port of the first
//	    port), SHOAL_PORT_<target> and, for UDP, SHOAL_PORT_<target>_UDP
//
// # Ports
//
// Each Spec.Ports entry gets its own host port: HostPort when set, else a
// free one found by binding port 0 and closing it just before the program
// starts (another program may take it in between; the task then fails to
// bind and is replaced). The program listens on the port it is told, and
// the controller's Endpoints reports it with an unspecified address: the
// task is reachable on its node's addresses.
//
// Command[0] without a slash is looked up in that environment's PATH
// (absolute entries only), at Prepare; a relative path with a slash is
// relative to the working directory.
//
// # Processes and signals
//
// The program runs in its own process group (Setpgid) with stdin from
// /dev/null, and the group is the task: Shutdown sends Spec.StopSignal to
// the whole group, waits Spec.StopGracePeriod, then sends SIGKILL to the
// group; when the main process exits, whatever it left running in its group
// is killed. A process that calls setsid or setpgid itself escapes the
// group and is not tracked. Exactly one goroutine per started task waits
// for the process; it ends when the process exits, and Remove waits for it,
// so no goroutine outlives Remove.
//
// Exec (runtime.Execer, used by health checks) runs another program of the
// node next to a started task: the task's environment with its port
// variables, its working directory, Command[0] looked up in its PATH, in a
// process group of its own that is killed when the call's context ends.
//
// ExitStatus.Code is the exit code, or -1 with ExitStatus.Signal set when a
// signal killed the process.
//
// # Limits
//
// A task with limits (Spec.Resources) or an image is rejected
// (runtime.ErrInvalidTask): a plain process has no cgroup here, and a limit
// that is not enforced must not look as if it were. Spec.Reservations are
// only the scheduler's concern and are accepted. Spec.Args are appended to
// Spec.Command. Log files grow without bound while the task runs. Use
// runtime/runc for containers, enforced limits and isolation.
package process
