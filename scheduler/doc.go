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
// preferences, reservations, replica limit and host ports form a group
// placed in one pass: the nodes are filtered once, then each task goes to
// the candidate with the fewest tasks of the service, then the fewest tasks
// in total, then the smallest node ID. A node that fills up leaves the
// candidates. A pass therefore costs O(N + k log N) for a group of k tasks on
// N nodes.
//
// # Preferences
//
// A task's Preferences (see ParsePreference), written as Docker's
// --placement-pref spread=node.labels.<key>, spread the tasks over the
// values of node labels before the spread over nodes. The nodes with the
// same value of the first preference's label form a group, and the nodes
// without the label one more group; the next preference splits each group
// the same way, and so on. Each task goes, level by level, to the group with
// the fewest tasks of the service, then the smaller label value, the group
// without the label last; within the last level's group it goes to a node
// as above. A group counts the tasks of the service on all its described
// nodes, including those recorded before the pass and those that take no
// more; it is skipped when none of its nodes passes the filters. Groups
// weigh the same whatever their number of nodes, as in Docker: with zones of
// 1, 2 and 5 nodes, 9 tasks land 3, 3 and 3. An empty label value is a value
// of its own, not a missing label.
//
// A group with L levels of preferences costs O(N·L) more, a label lookup
// per node and level to build its tree of groups, and each task
// O(L log G + log N) for G groups a level. In BenchmarkSchedule, one level
// adds about 5% to a pass of 10,000 tasks on 1,000 nodes, and makes a pass
// of 1,000 tasks on 100,000 nodes, where building the tree dominates, about
// 4 times as long (20 ms). Filters and the explanation of a task that fits
// nowhere are the same with and without preferences.
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
