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
// Every session message also carries what the node needs to join the
// cluster's gossip membership (the routing mesh's endpoint table): the
// cluster's gossip keys, the one to encrypt with first, and the gossip
// addresses of up to 8 other nodes (NodeDescription.GossipAddr), READY
// nodes first, taken in node-ID order starting after the node's own ID so
// that nodes join different peers. The dispatcher sends a fresh message at
// once when the node's role, the trusted roots or the gossip keys change in
// the store (each phase of a key rotation), and checks the rest (the
// manager list, the peers) once per heartbeat period.
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
// # Routing mesh
//
// A RUNNING task whose desired state is RUNNING publishes one
// PublishedEndpoint per port of its spec in ingress mode with a published
// port, at the address the runtime reports for the target port
// (runtime.EndpointReporter); host-mode ports are not part of the mesh. The
// agent tells the host of every change of the node's set through
// AgentConfig.OnEndpoints (one goroutine, changes may be coalesced) and
// Agent.Endpoints returns it. A task that ends by itself leaves the set at
// once. A task with published endpoints that must stop (desired SHUTDOWN,
// or removed from the assignments) is drained first: its endpoints are
// withdrawn, the agent waits until OnEndpoints has been told, then lets the
// task run for AgentConfig.DrainDelay so that no node's mesh sends it new
// connections, and only then stops it. With AgentConfig.ConfirmWithdrawal
// the drain also lasts until every node confirmed the withdrawal, at most
// AgentConfig.DrainTimeout. Agent.Stop cuts a drain short.
//
// # Health checks
//
// A running task with a health check (its spec's, else its image's
// HEALTHCHECK through runtime.ImageHealthchecker, unless the spec disables
// it) has one goroutine that probes it, on AgentConfig.Clock, and ends with
// the task: a command through the controller's runtime.Execer (exit code 0
// is healthy), an HTTP GET or a TCP connect to the runtime's endpoint of
// the checked target port (an unspecified address is the node's loopback).
// Each probe is bounded by the check's timeout and its output by
// HealthOutputLimit. The task is starting until a probe succeeds (failures
// within the start period do not count; probes are the start interval
// apart then), healthy after a success, and unhealthy after Retries
// consecutive failures; the defaults are docker's (DefaultHealthInterval
// and the others). A health change is reported as the RUNNING status again
// with the new health and a greater health_seq, which orders reports of
// the same state on both sides. A task with a check publishes its
// endpoints only once healthy; an unhealthy task is withdrawn from the
// mesh, drained as above, stopped, and reported FAILED with the probe's
// output as its error, so the orchestrator replaces it under its restart
// policy. Failures fewer than Retries in a row leave the task alone. A
// task re-adopted after a restart of the agent (LiveRestore) that was
// healthy stays healthy and in the mesh, and its probes go on.
//
// Agent.Stop leaves gracefully: with a session open it calls Leave, shuts
// every task down, sends the tasks' final statuses (SHUTDOWN for those it
// stopped) and waits for the dispatcher to acknowledge them, all bounded by
// Stop's context, then closes the session. From the moment Stop begins the
// agent opens no new session. Without a session it only shuts the tasks
// down; the manager then notices the missed heartbeats.
//
// # Security
//
// Every connection between an agent and a dispatcher is mutual TLS 1.3:
// the agent dials with AgentConfig.TransportCredentials (the node's
// credentials from package pki, verifying the manager against
// pki.ManagerServerName), and the node's gRPC server that serves the
// Dispatcher authorizes each RPC from the caller's certificate, which
// identifies the node: a worker may act only for its own node ID. NewAgent
// refuses a configuration without credentials unless AgentConfig.Insecure
// asks for plaintext, which is for tests only.
//
// # Leadership
//
// A dispatcher serves only while its manager leads. The node makes a new
// Dispatcher each time it becomes leader; at Start it gives every node that
// was READY a grace period to reconnect, after which silent nodes are
// marked DOWN, so a worker that died while there was no leader is noticed.
package dispatch
