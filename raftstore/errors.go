package raftstore

import (
	"errors"
	"fmt"

	"github.com/shoalhq/shoal/internal/errdefs"
)

var (
	// ErrStopped is returned by calls on a node that is not running: never started, stopped,
	// or failed (see Node.Err). It is errdefs.ErrStopped, so it survives a trip over gRPC.
	ErrStopped = errdefs.ErrStopped
	// ErrNotLeader is returned when an operation needs the raft leader and this member is not
	// it (Propose without a Forwarder, membership changes, TransferLeadership). Nothing was
	// proposed; it is safe to retry on the leader. It is errdefs.ErrNotLeader.
	ErrNotLeader = errdefs.ErrNotLeader
	// ErrNoQuorum is matched (errors.Is) by every QuorumError: too few voters are reachable to
	// commit a write, or a membership change would leave too few. It is errdefs.ErrNoQuorum.
	ErrNoQuorum = errdefs.ErrNoQuorum
	// ErrLeadershipLost is returned by Propose when this member lost leadership while the
	// entry was in flight. The outcome is unknown: the new leader may still commit the entry.
	// When no new leader was known at that moment, the error also wraps a QuorumError.
	ErrLeadershipLost = errors.New("raftstore: leadership lost while proposing; outcome unknown")
	// ErrEntryTooLarge is matched (errors.Is) by the error Propose returns for data longer
	// than Config.MaxEntryBytes; the message names the size and the limit. Nothing was
	// proposed. Split the write, or raise the limit on every member.
	ErrEntryTooLarge = fmt.Errorf("raftstore: entry %w", errdefs.ErrTooLarge)
	// ErrCorrupt is wrapped by errors about a database file that cannot be read as a raftstore
	// log (damaged, truncated, or not a raftstore file). The message names the file.
	ErrCorrupt = errors.New("database corrupt")
)

// QuorumError says that a write cannot be committed, or a membership change would make writes
// impossible, because too few voting members (managers) are reachable. errors.Is(err,
// ErrNoQuorum) is true for it.
//
// Reachable counts the voters this member has heard from within the last election timeout,
// itself included when it is a voter. On a leader that is exact (raft's own activity tracking);
// on a member without a leader it is a lower bound: followers only hear from the leader and from
// candidates, so a member may be reachable without this member knowing it.
type QuorumError struct {
	// Reachable is the number of voters known to be reachable.
	Reachable int
	// Voters is the number of voters in the configuration considered.
	Voters int
	// Needed is the quorum of that configuration: Voters/2+1.
	Needed int
}

// Error says, e.g., "no quorum: 1 of 3 managers reachable, 2 needed".
func (e *QuorumError) Error() string {
	return fmt.Sprintf("no quorum: %d of %d managers reachable, %d needed", e.Reachable, e.Voters, e.Needed)
}

// Is makes errors.Is(err, ErrNoQuorum) true.
func (e *QuorumError) Is(target error) bool { return target == ErrNoQuorum }

// ResultError turns Propose's results into one error, the shape a Forwarder carries back from
// the leader: err if non-nil, otherwise val if val is an error, otherwise nil. The receiving side
// of a Forwarder calls it on the leader's ProposeOnLeader results.
func ResultError(val any, err error) error {
	if err != nil {
		return err
	}
	if e, ok := val.(error); ok {
		return e
	}
	return nil
}
