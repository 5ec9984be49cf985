package manager

import (
	"context"
	"time"

	"github.com/shoalhq/shoal/internal/clock"
)

// roleCheck covers what neither the Raft log nor a dispatcher session can
// tell a manager: that it was demoted or removed while it was down or cut
// off (the leader no longer sends it anything, and a manager without an
// agent has no session). While this member hears no leader for three
// election timeouts, it asks the other managers for its own node object; an
// up-to-date (not stale) answer from a majority that it is no longer a
// manager calls notManager, once, and ends the check.
type roleCheck struct {
	clock    clock.Clock
	election time.Duration
	// hasLeader reports whether the member follows a working leader.
	hasLeader func(ctx context.Context) bool
	// stillManager asks the other managers, each bounded by timeout.
	stillManager func(ctx context.Context, timeout time.Duration) bool
	notManager   func()
}

// run checks once per election timeout until ctx ends or notManager ran.
// The timer is armed again only once a check is over, so an armed timer
// means the loop waits (tests rely on it).
func (rc *roleCheck) run(ctx context.Context) {
	t := rc.clock.NewTimer(rc.election)
	defer t.Stop()
	var leaderless time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
		if rc.check(ctx, &leaderless) {
			return
		}
		t.Reset(rc.election)
	}
}

// check is one round: it reports whether the check is over (notManager
// ran). leaderless is when this member last started hearing no leader
// (zero while it hears one).
func (rc *roleCheck) check(ctx context.Context, leaderless *time.Time) bool {
	if rc.hasLeader(ctx) {
		*leaderless = time.Time{}
		return false
	}
	now := rc.clock.Now()
	if leaderless.IsZero() {
		*leaderless = now
	}
	if now.Sub(*leaderless) < 3*rc.election {
		return false
	}
	*leaderless = now // ask again after as long, if still leaderless
	// A new mTLS connection each: not an election timeout under load.
	if !rc.stillManager(ctx, max(rc.election, 3*time.Second)) {
		rc.notManager()
		return true
	}
	return false
}
