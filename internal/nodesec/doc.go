// Package nodesec is a node's TLS identity: its key and certificate under
// StateDir/certificates, the trusted roots, the join handshake that obtains
// them, and the renewal loop that keeps them current.
//
// The model:
//
//   - Init creates the cluster's root CA (kept in the replicated cluster
//     object) and the first manager's certificate (Security.Init).
//   - A joining node fetches the root CA from the manager without trusting
//     it, checks its digest against the token, checks that the manager's own
//     certificate chains to it and names a manager, then sends a CSR with the
//     token and receives its certificate (Security.Join). Its private key
//     never leaves the node.
//   - Every connection is TLS 1.3 with the node's certificate on both sides
//     (ServerTLS, ClientCreds, DialOptions).
//   - The renewal loop renews at a random point between 50% and 80% of the
//     validity, when the node's role changes, and when a root CA rotation asks
//     for a certificate from the new root. The trusted roots follow the
//     cluster's trust bundle (FollowRoots).
//
// # Concurrency
//
// Security's methods are safe for concurrent use. Every change to the
// credentials (renewal, role change, trust bundle) happens under one lock
// (renewMu), so a renewal and a trust change never interleave. The renewal
// loop is one goroutine, started by Start and ended by Stop
// (internal/lifecycle).
package nodesec
