// Package runc is Shoal's container runtime: each task is an OCI container
// run by the runc binary (Debian's runc package; Config.Runc), from an
// image of runtime/image, in a network namespace of its own on the node's
// bridge (runtime/network), or in the node's network with
// Spec.HostNetwork. It needs root.
//
// # The container
//
// Prepare pulls the image (shared with every container of it), mounts the
// container's root filesystem (overlayfs over the image's layers), resolves
// the user in the image's /etc/passwd and /etc/group, attaches the
// container to the bridge (an address from the node's pool, reported as the
// task's endpoint, so the routing mesh balances straight to it), creates
// its named volumes under Dir/volumes and writes its OCI bundle. The
// bundle's config.json is built with github.com/opencontainers/runtime-spec
// types:
//
//   - pid, ipc, uts, mount and network namespaces (the network one is the
//     bridge's, or none with host networking);
//   - docker's default mounts (proc, a private /dev with pts, shm and
//     mqueue, a read-only sysfs and cgroup tree), masked and read-only
//     paths, capability set (changed by Spec.CapAdd and CapDrop), device
//     allow list and seccomp profile (github.com/moby/profiles/seccomp, the
//     profile docker ships), and no-new-privileges;
//   - cgroups under Config.CgroupParent/<taskID>: the memory limit (with no
//     extra swap), a CFS quota from NanoCPUs over a 100ms period, a pids
//     limit, and CPU shares from the reserved CPUs (1024 per CPU); runc
//     applies them on cgroup v1 and v2 alike;
//   - rlimits from Spec.Ulimits (others are the node's, as with docker),
//     namespaced sysctls, the hostname, and /etc/hosts, /etc/hostname and
//     /etc/resolv.conf of the container's own (a resolv.conf without the
//     node's loopback nameservers, which a container cannot reach);
//   - with Spec.Init, tini (Config.InitPath; Debian's tini-static) as PID
//     1 at /dev/init, which reaps zombies and forwards signals.
//
// The command follows docker's rules against the image's ENTRYPOINT and
// CMD (see runtime.Spec); the environment is the image's, then PATH,
// HOSTNAME and HOME where the image sets none, then Spec.Env.
//
// A pull that fails while the store has the image (pulled before, or
// loaded with Images().LoadLayout or LoadTarball) runs the node's copy,
// with a warning in the log, as docker does. Otherwise a pull that the
// registry refuses (unauthorized, not found, a digest that does not match,
// no manifest for the node's platform, an unsafe layer) fails Prepare with
// an error wrapping runtime.ErrInvalidTask, so the agent reports the task
// REJECTED with the registry's reason.
//
// # The shim, and containers that outlive the agent
//
// Start runs the container under a shim (package runtime/runc/shim): by
// default this program's own executable, started again with
// SHOAL_RUNC_SHIM set (the shim package's init function turns such a run
// into the shim before main runs, so nothing has to be installed); the
// small command runtime/runc/cmd/shoal-runc-shim, set as Config.ShimPath,
// starts faster and uses less memory per container. Prepare starts the
// shim early, so that its start overlaps the mount and the network
// namespace; it waits on a pipe for Start's go (and exits if the pipe
// closes without one), and Start waits on another pipe, which the shim
// closes once runc has started the container or failed to. The shim runs in a
// session of its own, makes itself a child subreaper, runs `runc run
// --detach`, so the container's init becomes its child, copies the
// container's stdout and stderr into size-capped rotated files
// (Config.LogMaxBytes, LogMaxFiles), reaps the container and writes its
// exit status to the container's directory. The host program may stop or
// crash meanwhile: the container and its logging go on.
//
// A Runtime on the same Dir, in a later run of the host program, finds
// those containers (runtime.Restorer): Restore adopts a running container
// (the shim's PID and start time are checked, so a reused PID is not taken
// for it) and reports the exit status of one that exited meanwhile; a
// container whose shim was killed is killed too, since nothing would
// record its end. Detach lets go of a container without stopping it.
//
// The controller waits for its shim through a pidfd (Linux 5.3 or later)
// on Go's poller: no thread is held per container.
//
// # Directory
//
//	Dir/containers/<taskID>/   task.json (no credentials), prepared.json,
//	                           bundle/config.json, shim.json, shim.pid,
//	                           started.json or start-error, exit.json,
//	                           logs/stdout.log[.N], logs/stderr.log[.N],
//	                           hosts, hostname, resolv.conf, shim.log, runc.log
//	Dir/volumes/<name>/_data   named volumes, kept after their tasks
//	Dir/runc/                  runc's own state (runc --root)
//	Dir/images/, Dir/network/  the image store and the bridge's leases,
//	                           unless Config says otherwise
//	Dir/logs/<taskID>/         logs of removed containers, with KeepLogs
//
// # Stopping
//
// Shutdown sends the stop signal (Spec.StopSignal, else the image's
// STOPSIGNAL, else SIGTERM) to the container's init, waits the grace
// period, then sends SIGKILL; as for any PID 1, a signal the program does
// not handle is ignored by the kernel, which is what Spec.Init is for. The
// exit code decides COMPLETE or FAILED as with the process runtime. Remove
// kills what still runs, deletes the container from runc, unmounts its root
// filesystem, detaches it from the bridge and deletes its directory.
//
// # Limits of this runtime
//
// A new named volume starts empty: the image's content at its target is not
// copied into it. No AppArmor or SELinux profile is applied. Container
// addresses on the bridge are reachable from their own node; other nodes
// reach them once the pools are routed between nodes (overlay networks do
// that).
package runc
