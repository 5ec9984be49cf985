// Package autolock keeps a manager's data key file wrapped the way the
// cluster object says. The data key encrypts the manager's Raft log; with
// autolock on (ClusterSpec.Autolock) the file must be wrapped with the
// cluster's unlock key (Cluster.UnlockKey), so that a manager that restarts
// stays locked until it is given that key, and with autolock off it is kept
// plain. A Keeper runs on every manager, leader or not.
//
// The Keeper watches the cluster object and, whenever it changes, compares
// the unlock key the cluster wants with the one the file is wrapped with,
// and rewraps the file (keys.RewrapDataKey) when they differ: autolock
// turned on wraps it, a rotated unlock key rewraps it, autolock turned off
// unwraps it. The data key itself never changes, so nothing encrypted with
// it is touched.
//
// From New on, the Keeper owns the "current wrap key": the unlock key the
// file is wrapped with (nil: plain), given as Config.Wrapped and updated
// after every rewrap. Wrapped reports it. While the Keeper runs it is the
// only writer of the data key file: the node must stop it before it removes
// or replaces the file (a manager demoted to worker).
//
// Failures are handled so that the file is never left in doubt:
//
//   - an unlock key in the cluster object that does not parse is logged and
//     the file is left as it is (a later change of the cluster object is
//     looked at again);
//   - a cluster object that is absent (not yet replicated, or not in this
//     store) leaves the file as it is: absence says nothing about autolock;
//   - a rewrap that fails (an I/O error, a missing file, a Wrapped key that
//     does not open it) leaves the file as it was (RewrapDataKey replaces it
//     atomically) and is tried again Config.RetryInterval later on
//     Config.Clock, and at every change of the cluster object, until it
//     succeeds; when the file turns out to be wrapped as wanted already, the
//     Keeper takes that key as the current one without writing.
//
// # Concurrency
//
// A Keeper owns one goroutine, started by Start and ended by Stop; every
// look at the cluster object and every rewrap runs on it, so rewraps never
// overlap. Start, Stop and Wrapped may be called from any goroutine.
//
// # Failover
//
// A Keeper keeps no state the store cannot rebuild: what the file should be
// is read from the cluster object each time, and the current wrap key is
// what the file holds. A store restored from a snapshot ends the watch
// (state.ErrWatchReset); the Keeper watches again and looks at the restored
// cluster object at once.
package autolock
