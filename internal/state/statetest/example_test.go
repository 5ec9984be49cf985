package statetest_test

import (
	"context"
	"fmt"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/state"
	"github.com/shoalhq/shoal/internal/state/statetest"
)

func ExampleNewStore() {
	s := statetest.NewStore(state.Config{CheckImmutable: true})
	err := s.Update(context.Background(), func(tx state.WriteTx) error {
		return tx.CreateNode(&api.Node{Id: "n1"})
	})
	if err != nil {
		panic(err)
	}
	s.View(func(tx state.ReadTx) {
		n := tx.GetNode("n1")
		fmt.Println(n.Id, n.Meta.Version)
	})
	// Output: n1 1
}
