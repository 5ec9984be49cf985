package transport

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	pb "go.etcd.io/raft/v3/raftpb"

	"github.com/shoalhq/shoal/raftstore"
)

// bigPayload is n bytes of a pattern that differs by seed, so a corrupted or truncated copy
// shows in the members' digests.
func bigPayload(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i) ^ seed
	}
	return b
}

// An entry just under raftstore's default MaxEntryBytes (larger than gRPC's default 4 MiB
// message limit) is committed on all three members over the real transport, proposed on the
// leader or forwarded from a follower; one over it is refused with ErrEntryTooLarge.
func TestClusterMaxEntryReplicates(t *testing.T) {
	c := newCluster(t, []uint64{1, 2, 3}, 0, nil, func(cfg *raftstore.Config) {
		cfg.Forwarder = cfg.Transport.(*Transport)
		// Production ticks (the harness's are 20ms): moving 8 MiB messages under the race
		// detector on a loaded machine can hold heartbeats back for longer than a 200ms
		// election timeout.
		cfg.TickInterval = raftstore.DefaultConfig().TickInterval
	})
	limit := raftstore.DefaultConfig().MaxEntryBytes
	require.Greater(t, limit, 4<<20, "the test must exceed gRPC's default limit")
	require.Less(t, limit+1024, MaxMessageBytes)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()

	require.NoError(t, c.propose(bigPayload(limit-1, 1)))
	c.converged(1)
	f := c.follower()
	_, err := f.node.Propose(ctx, bigPayload(limit-1, 2))
	require.NoError(t, err, "forwarded through the Forward RPC")
	c.converged(2)
	for _, cm := range c.members {
		n, _ := cm.sm.digest()
		assert.Equal(t, 2, n, "member %d", cm.id)
		assert.Zero(t, cm.m.tr.Stats().StreamFailures, "member %d", cm.id)
	}

	tooBig := bigPayload(limit+1, 3)
	_, err = c.leader().node.Propose(ctx, tooBig)
	require.ErrorIs(t, err, raftstore.ErrEntryTooLarge)
	assert.Contains(t, err.Error(), fmt.Sprintf("%d bytes exceeds the limit of %d bytes", limit+1, limit))
	f = c.follower()
	_, err = f.node.Propose(ctx, tooBig)
	require.ErrorIs(t, err, raftstore.ErrEntryTooLarge)
	// A forward that bypasses the follower's own check is refused by the leader, and the
	// sentinel survives the trip.
	err = f.m.tr.Forward(ctx, f.node.Leader(), tooBig)
	require.ErrorIs(t, err, raftstore.ErrEntryTooLarge)

	require.NoError(t, c.propose([]byte("small")))
	c.converged(3)
}

// A raft message too large for any gRPC message is dropped alone: the stream and the messages
// queued with it survive.
func TestOversizedMessageDroppedWithoutBreakingStream(t *testing.T) {
	dst := startMember(t, testConfig(2))
	src := startMember(t, testConfig(1))
	recv := newFakeLocal()
	dst.tr.SetLocal(recv)
	src.tr.SetLocal(newFakeLocal())
	require.NoError(t, src.tr.AddPeer(2, dst.addr))

	huge := msg(pb.MsgApp, 1, 2, 1)
	huge.Entries = []*pb.Entry{{Data: make([]byte, MaxMessageBytes)}}
	src.tr.Send([]*pb.Message{msg(pb.MsgHeartbeat, 1, 2, 0), huge, msg(pb.MsgHeartbeat, 1, 2, 2)})
	require.Eventually(t, func() bool { return len(recv.steps()) == 2 }, waitFor, tick)
	assert.Equal(t, uint64(1), src.tr.Stats().Dropped)
	assert.Zero(t, src.tr.Stats().StreamFailures)
}
