// Package errdefs holds the sentinel errors shared by Shoal's internal
// packages. The root package re-exports them, so errors.Is works on errors
// returned anywhere in the module.
package errdefs

import "errors"

var (
	// ErrNotFound: the object with that ID does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict: the object changed since it was read (stale version).
	ErrConflict = errors.New("conflict: object was changed by another writer; read it again and retry")
	// ErrExist: an object with that ID or name already exists.
	ErrExist = errors.New("already exists")
	// ErrInvalidSpec: a spec or request failed validation.
	ErrInvalidSpec = errors.New("invalid spec")
	// ErrNotLeader: the operation needs the Raft leader.
	ErrNotLeader = errors.New("this manager is not the leader")
	// ErrNotManager: the operation needs a manager node.
	ErrNotManager = errors.New("this node is not a manager")
	// ErrStopped: the component was stopped.
	ErrStopped = errors.New("stopped")
	// ErrNoQuorum: too few managers are reachable to commit a write.
	ErrNoQuorum = errors.New("no quorum")
	// ErrInvalidToken: the join token is malformed or not accepted.
	ErrInvalidToken = errors.New("invalid join token")
	// ErrTooLarge: a write is larger than the replicated log accepts.
	ErrTooLarge = errors.New("too large")
)
