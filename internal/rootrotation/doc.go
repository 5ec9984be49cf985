// Package rootrotation completes a root CA rotation on the Raft leader.
//
// A rotation (see internal/ca) is started by the control API and ends when
// every node that is not DOWN holds a certificate from the new root: then
// ca.FinishRootRotation makes the new root the only one and replaces the
// join tokens. The Completer watches for the changes that can bring that
// moment (the cluster object, and nodes joining, leaving or recording a
// certificate from another root) and checks again after each. It also
// checks every Config.Interval on its clock: that is how it notices a node
// going DOWN, since node status changes are not among the watched ones.
//
// # Failover
//
// The rotation's state is the cluster object and each node's
// CertRootDigest, all in the store; the Completer keeps nothing else, so a
// new leader's Completer finishes a rotation its predecessor did not.
//
// # Concurrency
//
// A Completer's methods are safe for concurrent use; its loop is one
// goroutine, started by Start and ended by Stop.
package rootrotation
