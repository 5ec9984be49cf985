package errdefs

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestGRPCRoundTrip(t *testing.T) {
	for _, sentinel := range []error{ErrNotFound, ErrConflict, ErrExist, ErrInvalidSpec, ErrInvalidToken,
		ErrNotLeader, ErrNoQuorum, ErrNotManager, ErrStopped, context.Canceled, context.DeadlineExceeded} {
		err := fmt.Errorf("service abc: %w", sentinel)
		back := FromGRPC(ToGRPC(err))
		assert.ErrorIs(t, back, sentinel, "%v", sentinel)
		assert.Equal(t, err.Error(), back.Error())
	}
	other := errors.New("boom")
	assert.Contains(t, FromGRPC(ToGRPC(other)).Error(), "boom")
	assert.Nil(t, ToGRPC(nil))
	assert.Nil(t, FromGRPC(nil))
}
