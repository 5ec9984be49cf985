package runtimetest_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/runtime"
	"github.com/shoalhq/shoal/runtime/runtimetest"
)

func TestExec(t *testing.T) {
	rt := runtimetest.New()
	ctx := ctxT(t)
	ctl, err := rt.Controller(task("t1"))
	require.NoError(t, err)
	ex := ctl.(runtime.Execer)
	_, err = ex.Exec(ctx, runtime.ExecRequest{Command: []string{"check"}})
	require.ErrorIs(t, err, runtime.ErrNotStarted)

	require.NoError(t, ctl.Prepare(ctx))
	require.NoError(t, ctl.Start(ctx))
	code, err := ex.Exec(ctx, runtime.ExecRequest{Command: []string{"check"}})
	require.NoError(t, err)
	assert.Equal(t, 0, code, "without a script every command passes")

	// The script changes while the task runs: a failing check, then one
	// that hangs until its context ends.
	rt.SetTaskBehavior("t1", runtimetest.Behavior{Exec: func(_ context.Context, req runtime.ExecRequest) (int, error) {
		_, _ = req.Stdout.Write([]byte("down"))
		return 1, nil
	}})
	var out bytesWriter
	code, err = ex.Exec(ctx, runtime.ExecRequest{Command: []string{"check"}, Stdout: &out})
	require.NoError(t, err)
	assert.Equal(t, 1, code)
	assert.Equal(t, "down", string(out))
	rt.SetTaskBehavior("t1", runtimetest.Behavior{Exec: func(ctx context.Context, _ runtime.ExecRequest) (int, error) {
		<-ctx.Done()
		return 0, ctx.Err()
	}})
	hctx, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	_, err = ex.Exec(hctx, runtime.ExecRequest{Command: []string{"check"}})
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Equal(t, 4, rt.CallCount("t1", "Exec"), "every call is recorded, the one before Start too")

	require.NoError(t, rt.Exit("t1", 0))
	_, err = ex.Exec(ctx, runtime.ExecRequest{Command: []string{"check"}})
	require.ErrorIs(t, err, runtimetest.ErrNotRunning)
	_, err = ex.Exec(ctx, runtime.ExecRequest{})
	require.Error(t, err)
	assert.False(t, errors.Is(err, runtimetest.ErrNotRunning), "an empty command is refused first")
}

func TestImageHealthcheck(t *testing.T) {
	rt := runtimetest.New()
	hc := &runtime.HealthConfig{Test: []string{"CMD", "check"}, Retries: 2}
	rt.SetBehavior(func(runtime.Task) runtimetest.Behavior { return runtimetest.Behavior{ImageHealthcheck: hc} })
	ctl, err := rt.Controller(task("t1"))
	require.NoError(t, err)
	ih := ctl.(runtime.ImageHealthchecker)
	assert.Nil(t, ih.ImageHealthcheck(), "nothing before Prepare")
	require.NoError(t, ctl.Prepare(ctxT(t)))
	got := ih.ImageHealthcheck()
	require.NotNil(t, got)
	assert.Equal(t, *hc, *got)
	got.Test[0] = "changed"
	assert.Equal(t, "CMD", ih.ImageHealthcheck().Test[0], "the result is the caller's")
}

type bytesWriter []byte

func (w *bytesWriter) Write(p []byte) (int, error) { *w = append(*w, p...); return len(p), nil }
