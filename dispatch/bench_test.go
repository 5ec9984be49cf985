package dispatch

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/state"
	"github.com/shoalhq/shoal/internal/state/statetest"
)

// BenchmarkUpdateTaskStatus measures the status write path: parallel
// reporters over real gRPC into batched store transactions. It reports the
// updates per store transaction.
func BenchmarkUpdateTaskStatus(b *testing.B) {
	const tasks = 1000
	st := statetest.NewStore(state.Config{})
	defer st.Close()
	ctx := context.Background()
	require.NoError(b, st.Update(ctx, func(tx state.WriteTx) error {
		if err := tx.CreateNode(&api.Node{Id: "n1"}); err != nil {
			return err
		}
		for i := range tasks {
			if err := tx.CreateTask(assignedTask(fmt.Sprintf("t%04d", i), "n1")); err != nil {
				return err
			}
		}
		return nil
	}))
	cfg := fastConfig()
	cfg.HeartbeatPeriod = time.Hour // no heartbeats during the benchmark
	s := startServer(b, st, cfg, "")
	c := dial(b, s.addr)
	sess, err := c.Session(ctx, &api.SessionRequest{NodeId: "n1"})
	require.NoError(b, err)
	first, err := sess.Recv()
	require.NoError(b, err)
	sid := first.GetSessionId()

	startIdx := st.Index()
	var n atomic.Int64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			// Each report moves a task one state forward, so every one is a write.
			state := api.TaskState(int64(api.TaskState_TASK_STATE_ACCEPTED) + (i/tasks)%5)
			_, err := c.UpdateTaskStatus(ctx, &api.UpdateTaskStatusRequest{NodeId: "n1", SessionId: sid,
				Updates: []*api.TaskStatusUpdate{{TaskId: fmt.Sprintf("t%04d", i%tasks), Status: &api.TaskStatus{State: state}}}})
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	if txs := st.Index() - startIdx; txs > 0 {
		b.ReportMetric(float64(b.N)/float64(txs), "updates/txn")
	}
}

// BenchmarkSessionView measures what each session costs the dispatcher per
// heartbeat period and per push: reading the node's role, the cluster's
// keys and choosing its gossip peers among 1000 nodes.
func BenchmarkSessionView(b *testing.B) {
	const nodes = 1000
	st := statetest.NewStore(state.Config{})
	defer st.Close()
	require.NoError(b, st.Update(context.Background(), func(tx state.WriteTx) error {
		if err := tx.CreateCluster(&api.Cluster{Id: "c1", Spec: &api.ClusterSpec{Name: "default"},
			Gossip: &api.GossipKeys{Keys: [][]byte{make([]byte, 32), make([]byte, 32)}}}); err != nil {
			return err
		}
		for i := range nodes {
			if err := tx.CreateNode(&api.Node{Id: fmt.Sprintf("n%04d", i),
				Status:      &api.NodeStatus{State: api.NodeState(i % 3)},
				Description: &api.NodeDescription{GossipAddr: fmt.Sprintf("10.0.%d.%d:7946", i/256, i%256)}}); err != nil {
				return err
			}
		}
		return nil
	}))
	d, err := NewDispatcher(st, fastConfig())
	require.NoError(b, err)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		v := d.sessionView(fmt.Sprintf("n%04d", i%nodes))
		if len(v.gossipPeers) != MaxGossipPeers {
			b.Fatalf("got %d peers", len(v.gossipPeers))
		}
	}
}
