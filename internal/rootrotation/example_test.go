package rootrotation_test

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/shoalhq/shoal/internal/rootrotation"
	"github.com/shoalhq/shoal/internal/state"
	"github.com/shoalhq/shoal/internal/state/statetest"
)

// A leader runs one Completer per leadership term.
func ExampleNew() {
	store := statetest.NewStore(state.Config{}) // the manager's store
	cfg := rootrotation.DefaultConfig()
	cfg.Logger = slog.New(slog.DiscardHandler) // the node's logger
	c, err := rootrotation.New(store, cfg)
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx := context.Background()
	if err := c.Start(ctx); err != nil {
		fmt.Println(err)
		return
	}
	// ... until leadership ends:
	_ = c.Stop(ctx)
	// Output:
}
