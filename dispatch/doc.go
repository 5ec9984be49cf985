// Package dispatch is the protocol between managers and workers.
//
// The manager side is the Dispatcher, a gRPC service (api.DispatcherServer)
// that the Raft leader runs over the object store. The worker side is the
// Agent, which keeps a session with the dispatcher and runs the tasks
// assigned to its node through a pluggable runtime.Runtime.
//
// # Protocol
//
// A worker's agent opens a Session; the dispatcher marks the node READY and
// sends the session ID and the heartbeat period. The agent then sends a
// Heartbeat every period (the dispatcher adds ±10% jitter so that workers
// reconnecting together spread out); a node that misses
// GracePeriodMultiplier periods (3 by default) is marked DOWN with the
// message "heartbeat failure" and its session ends. The Assignments stream
// sends the node's complete task set first, then increments: tasks added or
// whose desired state or spec changed, and tasks removed. The agent reports
// the status of its own tasks with UpdateTaskStatus; the dispatcher refuses
// reports about tasks that are not assigned to the reporting node, queues
// the latest status per task, and writes the queue in one store transaction
// per StatusBatchInterval, answering each RPC once its reports are written.
//
// A worker that stops gracefully says so with Leave: the dispatcher marks
// the node DOWN at once with the message NodeLeftMessage ("node stopped"),
// so the orchestrator replaces its tasks and the scheduler places nothing
// more on it without waiting for the heartbeat deadline. The session is no
// longer subject to the deadline but stays valid for UpdateTaskStatus until
// the agent closes it, so the agent can report how its tasks ended. A later
// Session of the node (it restarted) marks it READY again.
//
// # Agent behaviour
//
// The agent drives each task's runtime.Controller through the task state
// machine ACCEPTED → PREPARING → READY → STARTING → RUNNING → COMPLETE,
// FAILED (with the exit code), REJECTED or SHUTDOWN, and never reports a
// state backward. On any session failure it backs off (exponential with
// jitter, capped) and tries the next manager. Its tasks keep running while
// no manager is reachable; status changes queue (latest per task) and are
// sent when a session opens again, and the new complete assignment set is
// reconciled: tasks no longer assigned are stopped and removed, tasks to be
// shut down are shut down, new tasks are started.
//
// Agent.Stop leaves gracefully: with a session open it calls Leave, shuts
// every task down, sends the tasks' final statuses (SHUTDOWN for those it
// stopped) and waits for the dispatcher to acknowledge them, all bounded by
// Stop's context, then closes the session. From the moment Stop begins the
// agent opens no new session. Without a session it only shuts the tasks
// down; the manager then notices the missed heartbeats.
//
// # Leadership
//
// A dispatcher serves only while its manager leads. The node makes a new
// Dispatcher each time it becomes leader; at Start it gives every node that
// was READY a grace period to reconnect, after which silent nodes are
// marked DOWN, so a worker that died while there was no leader is noticed.
package dispatch
