// Package node is a cluster node's lifecycle: its identity and node.json,
// its gRPC server (switchable manager services behind a gate and the
// per-RPC authorization), its TLS identity (internal/nodesec), its manager
// part (internal/manager), its agent (dispatch.Agent), its routing-mesh
// part (internal/mesh), and role changes between worker and manager while
// it runs.
//
// # Goroutines and locks
//
// A started node owns: the gRPC server's Serve goroutine; the role loop
// (roleChanger.run, applying promotions and demotions one at a time); the renewal
// loop (owned by Security); the agent's goroutines; the mesh's apply and
// sync loops; and, while it is a manager, the manager part's goroutines.
// Stop ends them all, in reverse order of their start.
//
// Node.mu guards the fields marked "mu" below: the lifecycle flags, the
// identity, the address and the data key state. roleChanger.mu guards the wanted
// role and the cancel func of a promotion in progress. unlockMu serialises
// Unlock calls. The current manager part is an atomic pointer, read without
// a lock by the server's interceptors.
package node
