// Package manager is a node's manager part: the object store, the Raft
// member and its transport, the control, join and CA servers, the autolock
// keeper, and the loops that keep them in step with the cluster (peers,
// role check, trust bundle, leadership), plus the components that run only
// while this manager leads (orchestrator, scheduler, dispatcher,
// membership, root CA rotation, gossip key rotation).
//
// A node starts its manager part when it starts as a manager or is
// promoted, and stops it when it stops or is demoted.
//
// # Concurrency
//
// Start and Stop are called by the node's lifecycle and role loop, one at a
// time. The other methods are safe for concurrent use once Start returned.
// Goroutines (peer loop, role check, leadership loop, autolock and trust
// loop) are started by Start and ended by Stop; the leader term's
// components are started and stopped by the leadership loop, under termMu,
// which guards the current term. armed (atomic) is set once the log is
// loaded.
//
// # Failover
//
// Nothing here holds state the store cannot rebuild: a new leader starts a
// fresh term from the replicated state.
package manager
