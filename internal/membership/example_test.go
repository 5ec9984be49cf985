package membership_test

import (
	"context"
	"fmt"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/membership"
	"github.com/shoalhq/shoal/internal/state"
	"github.com/shoalhq/shoal/internal/state/statetest"
	"github.com/shoalhq/shoal/raftstore"
)

// oneLearner is a Raft configuration of a voter and a caught-up learner; a
// node passes its *raftstore.Node instead.
type oneLearner struct{ promoted bool }

func (r *oneLearner) Members(context.Context) ([]raftstore.Member, error) {
	return []raftstore.Member{{ID: 1, Voter: true}, {ID: 2, Learner: !r.promoted, Voter: r.promoted}}, nil
}
func (r *oneLearner) CaughtUp(context.Context, uint64) (bool, error) { return true, nil }
func (r *oneLearner) PromoteLearner(context.Context, uint64) error   { r.promoted = true; return nil }

// The leader marks itself in the store and promotes a learner that caught up.
func ExampleNew() {
	ctx := context.Background()
	store := statetest.NewStore(state.Config{})
	_ = store.Update(ctx, func(tx state.WriteTx) error {
		return tx.CreateNode(&api.Node{Id: "m1", Role: api.NodeRole_NODE_ROLE_MANAGER, ManagerStatus: &api.ManagerStatus{RaftId: 1}})
	})
	raft := &oneLearner{}

	cfg := membership.DefaultConfig()
	cfg.NodeID = "m1"
	r, err := membership.New(store, raft, cfg)
	if err != nil {
		fmt.Println(err)
		return
	}
	_ = r.Start(ctx)
	<-r.Ready()
	_ = r.Stop(ctx)

	store.View(func(tx state.ReadTx) { fmt.Println("m1 leads:", tx.GetNode("m1").ManagerStatus.Leader) })
	fmt.Println("learner promoted:", raft.promoted)
	// Output:
	// m1 leads: true
	// learner promoted: true
}
