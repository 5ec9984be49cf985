package errdefs

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var codeOf = []struct {
	err  error
	code codes.Code
}{
	{ErrNotFound, codes.NotFound},
	{ErrConflict, codes.Aborted},
	{ErrExist, codes.AlreadyExists},
	{ErrInvalidSpec, codes.InvalidArgument},
	{ErrInvalidToken, codes.PermissionDenied},
	{ErrNoQuorum, codes.Unavailable},
	{ErrNotLeader, codes.Unavailable},
	{ErrNotManager, codes.FailedPrecondition},
	{ErrStopped, codes.Unavailable},
	{ErrTooLarge, codes.ResourceExhausted},
}

// ToGRPC converts an error to a gRPC status error that keeps its message and
// lets FromGRPC recover the sentinel on the other side.
func ToGRPC(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	for _, c := range codeOf {
		if errors.Is(err, c.err) {
			return status.Error(c.code, err.Error())
		}
	}
	return status.Error(codes.Internal, err.Error())
}

// remoteError carries a remote error's message and matches the sentinel its
// code stands for.
type remoteError struct {
	msg      string
	sentinel error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.sentinel }

// FromGRPC converts a gRPC status error back to an error that matches the
// module's sentinels with errors.Is (and the context errors for Canceled and
// DeadlineExceeded). Other errors are returned unchanged.
func FromGRPC(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	switch st.Code() {
	case codes.Canceled:
		return &remoteError{st.Message(), context.Canceled}
	case codes.DeadlineExceeded:
		return &remoteError{st.Message(), context.DeadlineExceeded}
	}
	// Prefer the sentinel whose text the message carries (two sentinels can
	// share a code).
	for _, c := range codeOf {
		if c.code == st.Code() && strings.Contains(st.Message(), c.err.Error()) {
			return &remoteError{st.Message(), c.err}
		}
	}
	for _, c := range codeOf {
		if c.code == st.Code() {
			return &remoteError{st.Message(), c.err}
		}
	}
	return fmt.Errorf("%s: %s", st.Code(), st.Message())
}
