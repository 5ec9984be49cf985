package statetest_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/state"
	"github.com/shoalhq/shoal/internal/state/statetest"
)

func TestStoreAppliesWritesAtOnce(t *testing.T) {
	s := statetest.NewStore(state.Config{CheckImmutable: true})
	ctx := context.Background()
	require.NoError(t, s.Update(ctx, func(tx state.WriteTx) error { return tx.CreateNode(&api.Node{Id: "n1"}) }))
	assert.Equal(t, uint64(1), s.Index())
	s.View(func(tx state.ReadTx) { assert.NotNil(t, tx.GetNode("n1")) })
	err := s.Update(ctx, func(tx state.WriteTx) error {
		return tx.UpdateNode(&api.Node{Id: "n1", Meta: &api.Meta{Version: 7}})
	})
	assert.ErrorIs(t, err, state.ErrConflict)
	assert.NoError(t, s.Verify())
}

func TestLogProposeAppliesEncodedEntries(t *testing.T) {
	s := state.New(state.Config{})
	l := statetest.NewLog(s)
	s.SetLog(l)
	data, err := proto.Marshal(&api.StoreRequest{Actions: []*api.StoreAction{
		state.StoreAction(api.StoreAction_KIND_CREATE, &api.Node{Id: "n1"}),
	}})
	require.NoError(t, err)
	res, err := l.Propose(context.Background(), data)
	require.NoError(t, err)
	assert.Nil(t, res)
	s.View(func(tx state.ReadTx) { assert.NotNil(t, tx.GetNode("n1")) })

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = l.Propose(ctx, data)
	assert.ErrorIs(t, err, context.Canceled)
	_, err = l.ProposeRequest(ctx, &api.StoreRequest{})
	assert.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, uint64(1), s.Index(), "a cancelled proposal appends nothing")
}
