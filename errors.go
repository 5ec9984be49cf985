package shoal

import (
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/keys"
	"github.com/shoalhq/shoal/internal/nodesec"
)

// Sentinel errors. Errors returned by Shoal wrap these; match them with
// errors.Is, never by their text. They match across the network too: an
// error returned by a remote manager through Dial is matched the same way.
var (
	// ErrNotFound: no object with that ID (or name).
	ErrNotFound = errdefs.ErrNotFound
	// ErrConflict: the object was changed since it was read; read it again
	// and retry.
	ErrConflict = errdefs.ErrConflict
	// ErrExist: an object with that ID or name already exists.
	ErrExist = errdefs.ErrExist
	// ErrInvalidSpec: a spec or request failed validation; the message names
	// the field and the rule.
	ErrInvalidSpec = errdefs.ErrInvalidSpec
	// ErrNotLeader: the operation needs the leader manager.
	ErrNotLeader = errdefs.ErrNotLeader
	// ErrNoQuorum: too few managers are reachable to commit a write; the
	// message says how many are reachable and how many are needed. Reads
	// still work.
	ErrNoQuorum = errdefs.ErrNoQuorum
	// ErrNotManager: the operation needs a manager node.
	ErrNotManager = errdefs.ErrNotManager
	// ErrStopped: the node has stopped.
	ErrStopped = errdefs.ErrStopped
	// ErrInvalidToken: the join token is malformed or was not accepted.
	ErrInvalidToken = errdefs.ErrInvalidToken
	// ErrTooLarge: the write is larger than one Raft log entry may be (8 MiB
	// by default); nothing was written. Split it into smaller writes.
	ErrTooLarge = errdefs.ErrTooLarge
)

// Errors of a node's own key material.
var (
	// ErrCertificateExpired: the node's certificate expired while it was
	// offline; it must join again with a join token (Join with the same
	// Config replaces the expired node).
	ErrCertificateExpired = nodesec.ErrCertificateExpired
	// ErrLocked: the manager's data key is wrapped with the cluster's unlock
	// key (autolock); call Node.Unlock.
	ErrLocked = keys.ErrLocked
	// ErrWrongUnlockKey: the unlock key does not open this manager's data key.
	ErrWrongUnlockKey = keys.ErrWrongUnlockKey
	// ErrInvalidUnlockKey: the text is not an unlock key (SHLKEY-1-...).
	ErrInvalidUnlockKey = keys.ErrInvalidUnlockKey
)
