package dispatch

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/state"
)

func createGossipNode(t *testing.T, st *state.Store, id string, s api.NodeState, gossipAddr string) {
	t.Helper()
	require.NoError(t, st.Update(context.Background(), func(tx state.WriteTx) error {
		return tx.CreateNode(&api.Node{Id: id, Status: &api.NodeStatus{State: s},
			Description: &api.NodeDescription{Hostname: id + "-host", GossipAddr: gossipAddr}})
	}))
}

func setGossipKeys(t *testing.T, st *state.Store, keys ...[]byte) {
	t.Helper()
	require.NoError(t, st.UpdateRetry(context.Background(), 10, func(tx state.WriteTx) error {
		cs, err := tx.FindClusters(state.All())
		if err != nil {
			return err
		}
		if len(cs) == 0 {
			return tx.CreateCluster(&api.Cluster{Id: "c1", Spec: &api.ClusterSpec{Name: "default"},
				Gossip: &api.GossipKeys{Keys: keys}})
		}
		c := cs[0]
		c.Gossip = &api.GossipKeys{Keys: keys, RotationPhase: c.GetGossip().GetRotationPhase() + 1}
		return tx.UpdateCluster(c)
	}))
}

// recvSession receives the next session message, failing the test if none
// comes within waitFor (the stream's context is cancelled at cleanup, which
// ends the receiving goroutine).
func recvSession(t *testing.T, stream api.Dispatcher_SessionClient) *api.SessionMessage {
	t.Helper()
	type result struct {
		msg *api.SessionMessage
		err error
	}
	ch := make(chan result, 1)
	go func() {
		m, err := stream.Recv()
		ch <- result{m, err}
	}()
	select {
	case r := <-ch:
		require.NoError(t, r.err)
		return r.msg
	case <-time.After(waitFor):
		t.Fatal("no session message")
		return nil
	}
}

func TestSessionCarriesGossipKeysAndPeers(t *testing.T) {
	st := newStore(t)
	k1, k2 := []byte("0123456789abcdef0123456789abcdef"), []byte("fedcba9876543210fedcba9876543210")
	setGossipKeys(t, st, k1, k2)
	createGossipNode(t, st, "n1", api.NodeState_NODE_STATE_READY, "10.0.0.1:7946")
	createGossipNode(t, st, "n2", api.NodeState_NODE_STATE_UNKNOWN, "") // its session sets its address
	createGossipNode(t, st, "n3", api.NodeState_NODE_STATE_DOWN, "10.0.0.3:7946")
	createGossipNode(t, st, "n4", api.NodeState_NODE_STATE_READY, "") // no gossip address: never a peer
	createGossipNode(t, st, "n5", api.NodeState_NODE_STATE_READY, "10.0.0.5:7946")
	s := startServer(t, st, fastConfig(), "")
	c := dial(t, s.addr)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := c.Session(ctx, &api.SessionRequest{NodeId: "n2",
		Description: &api.NodeDescription{Hostname: "n2-host", GossipAddr: "10.0.0.2:7946"}})
	require.NoError(t, err)
	msg, err := stream.Recv()
	require.NoError(t, err)
	assert.Equal(t, [][]byte{k1, k2}, msg.GetGossipKeys(), "keys in order, the encrypt-with key first")
	// READY peers first (n5 after n2, then n1 wrapping around), then the
	// DOWN one; never the session's own node or a node without an address.
	assert.Equal(t, []string{"10.0.0.5:7946", "10.0.0.1:7946", "10.0.0.3:7946"}, msg.GetGossipPeers())
	assert.Equal(t, "10.0.0.2:7946", getNode(st, "n2").GetDescription().GetGossipAddr(),
		"the description from the session request is stored with its gossip address")

	// n5 reconnects with a description without a gossip address (an old
	// agent): it stops being a peer. n1's session lists n2 now.
	openSession(t, c, "n5")
	// n5's new description is written by its session; a session opened
	// after that write lists the peers without n5.
	require.Eventually(t, func() bool { return getNode(st, "n5").GetDescription().GetGossipAddr() == "" },
		5*time.Second, 5*time.Millisecond, "n5's description stored")
	want := []string{"10.0.0.2:7946", "10.0.0.3:7946"}
	require.Eventually(t, func() bool {
		sctx, scancel := context.WithCancel(ctx)
		defer scancel()
		stream1, err := c.Session(sctx, &api.SessionRequest{NodeId: "n1",
			Description: &api.NodeDescription{Hostname: "n1-host", GossipAddr: "10.0.0.1:7946"}})
		if err != nil {
			return false
		}
		msg1, err := stream1.Recv()
		if err != nil {
			return false
		}
		return slices.Equal(msg1.GetGossipPeers(), want)
	}, 5*time.Second, 10*time.Millisecond,
		"READY n2 (after n1) first, then DOWN n3; n5 has no gossip address any more")
}

func TestSessionHearsGossipKeyRotationAtOnce(t *testing.T) {
	st := newStore(t)
	k1, k2 := []byte("key-one-key-one-key-one-key-one!"), []byte("key-two-key-two-key-two-key-two!")
	setGossipKeys(t, st, k1)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	createNode(t, st, "n2", api.NodeState_NODE_STATE_UNKNOWN)
	// A heartbeat period of an hour: only the store event can deliver the
	// new keys within the test.
	s := startServer(t, st, fastConfig(), "")
	c := dial(t, s.addr)
	_, stream1, _ := openSession(t, c, "n1")
	_, stream2, _ := openSession(t, c, "n2")

	// Phase 1: the new key is added, the old one still encrypts.
	setGossipKeys(t, st, k1, k2)
	for _, stream := range []api.Dispatcher_SessionClient{stream1, stream2} {
		assert.Equal(t, [][]byte{k1, k2}, recvSession(t, stream).GetGossipKeys())
	}
	// Phase 2: the new key encrypts; phase 3: the old one is dropped.
	setGossipKeys(t, st, k2, k1)
	assert.Equal(t, [][]byte{k2, k1}, recvSession(t, stream1).GetGossipKeys())
	setGossipKeys(t, st, k2)
	assert.Equal(t, [][]byte{k2}, recvSession(t, stream1).GetGossipKeys())
}

func TestGossipPeers(t *testing.T) {
	node := func(id string, s api.NodeState, addr string) *api.Node {
		return &api.Node{Id: id, Status: &api.NodeStatus{State: s}, Description: &api.NodeDescription{GossipAddr: addr}}
	}
	ready, down := api.NodeState_NODE_STATE_READY, api.NodeState_NODE_STATE_DOWN
	var many []*api.Node
	for i := range 20 {
		many = append(many, node(fmt.Sprintf("n%02d", i), ready, fmt.Sprintf("10.0.0.%d:7946", i)))
	}
	tests := []struct {
		name  string
		self  string
		nodes []*api.Node
		limit int
		want  []string
	}{
		{name: "no nodes", self: "a", want: nil, limit: 8},
		{name: "only self", self: "a", nodes: []*api.Node{node("a", ready, "x:1")}, limit: 8, want: nil},
		{
			name: "starts after self and wraps", self: "c", limit: 8,
			nodes: []*api.Node{node("a", ready, "a:1"), node("b", ready, "b:1"), node("c", ready, "c:1"), node("d", ready, "d:1")},
			want:  []string{"d:1", "a:1", "b:1"},
		},
		{
			name: "ready before others", self: "a", limit: 8,
			nodes: []*api.Node{node("b", down, "b:1"), node("c", ready, "c:1"), node("d", api.NodeState_NODE_STATE_UNKNOWN, "d:1")},
			want:  []string{"c:1", "b:1", "d:1"},
		},
		{
			name: "limit prefers ready", self: "a", limit: 2,
			nodes: []*api.Node{node("b", down, "b:1"), node("c", ready, "c:1"), node("d", ready, "d:1")},
			want:  []string{"c:1", "d:1"},
		},
		{
			name: "nodes without an address are skipped", self: "a", limit: 8,
			nodes: []*api.Node{node("b", ready, ""), node("c", ready, "c:1"), {Id: "d"}},
			want:  []string{"c:1"},
		},
		{
			name: "duplicate addresses once", self: "a", limit: 8,
			nodes: []*api.Node{node("b", ready, "same:1"), node("c", ready, "same:1")},
			want:  []string{"same:1"},
		},
		{
			name: "capped and spread", self: "n05", nodes: many, limit: 8,
			want: []string{"10.0.0.6:7946", "10.0.0.7:7946", "10.0.0.8:7946", "10.0.0.9:7946",
				"10.0.0.10:7946", "10.0.0.11:7946", "10.0.0.12:7946", "10.0.0.13:7946"},
		},
		{
			name: "capped and wrapping", self: "n17", nodes: many, limit: 4,
			want: []string{"10.0.0.18:7946", "10.0.0.19:7946", "10.0.0.0:7946", "10.0.0.1:7946"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, GossipPeers(tc.self, slices.SortedFunc(slices.Values(tc.nodes), byNodeID), tc.limit))
		})
	}
}
