// Package scheduler decides where tasks run: it filters nodes and spreads
// tasks over the ones that remain.
//
// It is a pure package: no network, no store, no goroutines, no clock. A
// driver in the manager converts store objects to Node and Task, keeps a
// Scheduler up to date (UpsertNode, RemoveNode, AddTask, RemoveTask), calls
// Schedule with the pending tasks and commits the returned decisions. The
// same state and input always give the same decisions.
//
// # Filters
//
// A node can take a task when, in this order:
//
//   - its State is NodeReady;
//   - its Availability is AvailabilityActive (not paused, not drained);
//   - it satisfies every constraint of the task (see ParseConstraint);
//   - its free CPU and memory (capacity minus the reservations of the tasks
//     recorded on it) cover the task's reservations;
//   - it runs fewer tasks of the service than MaxReplicasPerNode (0: no limit).
//
// # Spread
//
// Pending tasks with the same service, spec version, constraints,
// reservations and replica limit form a group placed in one pass: the nodes
// are filtered once, then each task goes to the candidate with the fewest
// tasks of the service, then the fewest tasks in total, then the smallest
// node ID. A node that fills up leaves the candidates. A pass therefore costs
// O(N + k log N) for a group of k tasks on N nodes.
//
// # Unplaced tasks
//
// A task that fits nowhere gets a Decision with an empty NodeID and a Reason
// that counts the nodes each filter rejected, for example
//
//	no suitable node (1 node not ready; 2 nodes drained; 3 nodes lack 1 GiB memory)
//
// The task stays pending; the driver retries it when Generation changes
// (nodes or tasks changed).
//
// # Constraints
//
// Constraints are written "<attribute>==<value>" or "<attribute>!=<value>"
// with the attributes node.id, node.hostname, node.role, node.platform.os,
// node.platform.arch and node.labels.<key>. Hostname, role, OS and
// architecture compare case-insensitively, as in Docker; node IDs and label
// values compare exactly. A node without the label fails == and passes !=.
//
// # Concurrency
//
// A Scheduler is not safe for concurrent use; its driver owns it.
package scheduler
