// Package orchestrator holds the reconcilers that run on the Raft leader and
// keep the cluster's desired state true by writing to the object store.
//
// One Orchestrator runs per leadership term: the node creates it with New
// when it becomes leader, calls Start, and calls Stop when it loses
// leadership. It runs these reconcilers over the store
// (internal/state), all on one event loop driven by watch events, with a
// periodic full sweep as a safety net:
//
//   - replicated services: slots 1..Replicas each hold one task; scaling
//     down marks the tasks of the highest slots REMOVE (never-assigned ones
//     are deleted at once).
//   - global services: one task per eligible node (READY, ACTIVE, matching
//     the placement constraints), including nodes that join later; tasks on
//     DOWN or drained nodes, or nodes that stop matching, are shut down; a
//     paused node keeps its task but gets no new one.
//   - node handling: replicated tasks on a DOWN, drained or removed node are
//     replaced in the same slot (the old task's desired state becomes
//     SHUTDOWN).
//   - restarts: a task that ends while wanted running is replaced in its slot
//     according to the restart policy (condition, delay, max attempts within
//     a window); a task not restarted keeps its slot.
//   - updates: when a service's SpecVersion changes, its tasks are replaced
//     Parallelism slots at a time (0 means 1), waiting Delay after each new
//     task reaches RUNNING; Service.UpdateStatus follows the update.
//     Stop-first (the default) stops a slot's old task before its new one
//     starts; start-first starts the new one next to the old, which is told
//     to stop only once the new one is RUNNING (its agent then drains it
//     from the routing mesh), so the slot serves throughout.
//   - the reaper: tasks marked REMOVE are deleted once they stopped (or never
//     started, or their node is lost); each slot keeps at most the cluster's
//     TaskHistoryLimit dead tasks (Config.DefaultTaskHistoryLimit when the
//     cluster says 0; a negative limit keeps none), oldest deleted first.
//
// # Failover
//
// Every decision is computed from one consistent read of the store and the
// clock, and written with the versions read (a concurrent change makes the
// write fail with a conflict, and the plan is computed again). Nothing is
// kept in memory that the store cannot rebuild, so a new leader's
// Orchestrator continues an update or a restart delay where the old one
// stopped. Restart delays run from the dead task's status timestamp; update
// delays from the status timestamp of the last new task that reached
// RUNNING. Restart attempts are counted from the dead tasks of the slot, so
// the reaper keeps at least MaxAttempts of them.
//
// # Caveats
//
// Updates never roll back; an UpdateStatus of PAUSED (set by another
// component) stops new slots from being updated. A start-first update of a
// global service runs the new task on the same node as the old one, so a
// host-mode published port keeps the new task from being placed until the
// old one is gone. A task that was
// shut down without being asked is restarted, but is not counted as an
// attempt toward MaxAttempts.
package orchestrator
