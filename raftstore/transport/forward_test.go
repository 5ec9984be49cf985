package transport

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/raftstore"
)

// scriptedPropose answers by payload, like a leader whose StateMachine returns errors for
// some entries.
func scriptedPropose(_ context.Context, data []byte) (any, error) {
	switch string(data) {
	case "ok":
		return 42, nil
	case "notfound":
		return fmt.Errorf("service web: %w", errdefs.ErrNotFound), nil
	case "conflict":
		return fmt.Errorf("task 7: %w", errdefs.ErrConflict), nil
	case "plain":
		return errors.New("boom"), nil
	case "notleader":
		return nil, raftstore.ErrNotLeader
	case "stopped":
		return nil, raftstore.ErrStopped
	case "lost":
		return nil, raftstore.ErrLeadershipLost
	case "lost-noquorum":
		return nil, fmt.Errorf("%w: %w", raftstore.ErrLeadershipLost, errdefs.ErrNoQuorum)
	case "slow":
		return nil, context.DeadlineExceeded
	}
	return nil, fmt.Errorf("unexpected payload %q", data)
}

func TestForwardOutcomes(t *testing.T) {
	a, _, _, lb := pair(t, nil)
	lb.propose = scriptedPropose
	ctx := context.Background()

	require.NoError(t, a.tr.Forward(ctx, 2, []byte("ok")))
	for payload, sentinel := range map[string]error{
		"notfound":      errdefs.ErrNotFound,
		"conflict":      errdefs.ErrConflict,
		"notleader":     errdefs.ErrNotLeader,
		"stopped":       errdefs.ErrStopped,
		"lost":          raftstore.ErrLeadershipLost,
		"lost-noquorum": errdefs.ErrNoQuorum,
		"slow":          context.DeadlineExceeded,
	} {
		err := a.tr.Forward(ctx, 2, []byte(payload))
		require.Error(t, err, payload)
		assert.ErrorIs(t, err, sentinel, "%s: %v", payload, err)
	}
	err := a.tr.Forward(ctx, 2, []byte("lost-noquorum"))
	assert.ErrorIs(t, err, raftstore.ErrLeadershipLost)
	assert.NotErrorIs(t, a.tr.Forward(ctx, 2, []byte("notfound")), errdefs.ErrNotLeader)

	err = a.tr.Forward(ctx, 2, []byte("plain"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "boom")
	assert.NotErrorIs(t, err, errdefs.ErrNotLeader)
	assert.Contains(t, a.tr.Forward(ctx, 2, []byte("service web")).Error(), "unexpected payload")
}

// leaderOnly is a Local with ProposeOnLeader: the transport must prefer it to Propose.
type leaderOnly struct {
	*fakeLocal
	calls int
}

func (l *leaderOnly) ProposeOnLeader(_ context.Context, _ []byte) (any, error) {
	l.calls++
	return nil, raftstore.ErrNotLeader
}

func TestForwardUsesProposeOnLeader(t *testing.T) {
	a, b, _, lb := pair(t, nil)
	lb.propose = func(context.Context, []byte) (any, error) { return nil, errors.New("Propose must not be called") }
	lo := &leaderOnly{fakeLocal: lb}
	b.tr.SetLocal(lo)
	err := a.tr.Forward(context.Background(), 2, []byte("x"))
	assert.ErrorIs(t, err, errdefs.ErrNotLeader)
	assert.Equal(t, 1, lo.calls)
}

func TestForwardFailures(t *testing.T) {
	a, b, la, _ := pair(t, nil)
	ctx := context.Background()

	err := a.tr.Forward(ctx, 7, []byte("ok"))
	assert.ErrorIs(t, err, errdefs.ErrNotLeader, "unknown leader: %v", err)

	require.NoError(t, a.tr.AddPeer(3, deadAddr(t)))
	err = a.tr.Forward(ctx, 3, []byte("ok"))
	assert.ErrorIs(t, err, errdefs.ErrNotLeader, "unreachable leader: %v", err)
	assert.Contains(t, err.Error(), "unreachable")

	b.tr.SetLocal(nil)
	err = a.tr.Forward(ctx, 2, []byte("ok"))
	assert.ErrorIs(t, err, errdefs.ErrNotLeader, "leader without a raft member: %v", err)

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	assert.ErrorIs(t, a.tr.Forward(cctx, 2, []byte("ok")), context.Canceled)

	// Forward to self goes to the local member.
	la.propose = scriptedPropose
	require.NoError(t, a.tr.Forward(ctx, 1, []byte("ok")))
	assert.ErrorIs(t, a.tr.Forward(ctx, 1, []byte("notfound")), errdefs.ErrNotFound)
}
