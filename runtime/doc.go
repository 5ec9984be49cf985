// Package runtime defines how a Shoal worker runs tasks: the Runtime and
// Controller interfaces, the plain Task and Spec types they take, and the
// optional LogStreamer capability.
//
// A worker's agent owns the task state machine. For each task assigned to
// its node it asks the Runtime for a Controller and drives it:
//
//	Prepare → Start → Wait (…Shutdown at any time) → Remove
//
// Controllers only perform actions and report what happened; they never
// decide a transition. Every Controller method is idempotent and safe for
// concurrent use, so an agent that retries after a crash or a lost reply
// cannot start a task twice or leak it.
//
// # Implementations
//
//   - runtime/process runs each task as a host process group (os/exec, no
//     root needed); it is the default.
//   - runtime/runtimetest is a fake with no processes, scriptable per task,
//     for tests of agents and whole clusters.
//
// # Errors
//
// Implementations wrap the sentinel errors of this package (ErrNotPrepared,
// ErrNotStarted, ErrShutdown, ErrAlreadyRemoved, ErrInvalidTask) with %w;
// test them with errors.Is. A task that exits with a non-zero code is not an
// error: Wait reports it in ExitStatus.
package runtime
