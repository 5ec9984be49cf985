package gossipkeys_test

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/shoalhq/shoal/internal/gossipkeys"
	"github.com/shoalhq/shoal/internal/state"
	"github.com/shoalhq/shoal/internal/state/statetest"
)

func ExampleNextPhase() {
	t0 := time.Unix(1000, 0)
	keys, _ := gossipkeys.NewKeys(t0)
	keys, _ = gossipkeys.StartRotation(keys, t0)
	for _, at := range []time.Duration{time.Second, 30 * time.Second, 60 * time.Second} {
		next, changed, _ := gossipkeys.NextPhase(keys, t0.Add(at), 30*time.Second)
		fmt.Printf("after %v: changed=%v phase=%d keys=%d\n", at, changed, next.GetRotationPhase(), len(next.GetKeys()))
		keys = next
	}
	// Output:
	// after 1s: changed=false phase=1 keys=2
	// after 30s: changed=true phase=2 keys=2
	// after 1m0s: changed=true phase=0 keys=1
}

// A leader runs one Rotator per leadership term.
func ExampleNewRotator() {
	store := statetest.NewStore(state.Config{}) // the manager's store
	cfg := gossipkeys.DefaultRotatorConfig()
	cfg.ClusterID = "the cluster's ID"
	cfg.Logger = slog.New(slog.DiscardHandler) // the node's logger
	r, err := gossipkeys.NewRotator(store, cfg)
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx := context.Background()
	if err := r.Start(ctx); err != nil {
		fmt.Println(err)
		return
	}
	// ... until leadership ends:
	_ = r.Stop(ctx)
	// Output:
}
