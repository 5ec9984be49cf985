package process_test

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/runtime"
)

// TestExec: a command runs with the task's environment (its SHOAL_* and
// port variables, Spec.Env, then ExecRequest.Env) and working directory,
// and its exit code is returned.
func TestExec(t *testing.T) {
	rt, _ := newRuntime(t)
	spec := sh("sleep 30")
	spec.Env = []string{"GREETING=hello", "OVERRIDE=task"}
	spec.Ports = []runtime.PortRequest{{Target: 80}}
	ctl := started(t, rt, "exec1", spec)
	t.Cleanup(func() { _ = ctl.Shutdown(context.Background()) })
	ctx := ctxT(t)

	var out bytes.Buffer
	code, err := ctl.Exec(ctx, runtime.ExecRequest{
		Command: []string{"sh", "-c", `echo "$GREETING $OVERRIDE $SHOAL_TASK_ID $SHOAL_PORT_80 $(pwd)"`},
		Env:     []string{"OVERRIDE=exec"},
		Stdout:  &out,
	})
	require.NoError(t, err)
	assert.Equal(t, 0, code)
	port := ctl.Endpoints()[0].Addr.Port()
	assert.Equal(t, "hello exec exec1 "+strconv.Itoa(int(port))+" "+ctl.WorkDir(), strings.TrimSpace(out.String()))

	code, err = ctl.Exec(ctx, runtime.ExecRequest{Command: []string{"sh", "-c", "exit 3"}})
	require.NoError(t, err)
	assert.Equal(t, 3, code, "a non-zero exit is a code, not an error")

	out.Reset()
	code, err = ctl.Exec(ctx, runtime.ExecRequest{Command: []string{"pwd"}, Dir: "/", Stdout: &out})
	require.NoError(t, err)
	assert.Equal(t, 0, code)
	assert.Equal(t, "/", strings.TrimSpace(out.String()))

	_, err = ctl.Exec(ctx, runtime.ExecRequest{Command: []string{"no-such-program-here"}})
	assert.ErrorContains(t, err, "not found")
	_, err = ctl.Exec(ctx, runtime.ExecRequest{Command: []string{"true"}, User: "nobody"})
	assert.ErrorContains(t, err, "ExecRequest.User")
	_, err = ctl.Exec(ctx, runtime.ExecRequest{})
	assert.ErrorContains(t, err, "ExecRequest.Command")
}

// TestExecContext: a command still running when ctx ends is killed with
// its children, and ctx's error is returned.
func TestExecContext(t *testing.T) {
	rt, _ := newRuntime(t)
	ctl := started(t, rt, "exec2", sh("sleep 30"))
	t.Cleanup(func() { _ = ctl.Shutdown(context.Background()) })
	ctx, cancel := context.WithTimeout(ctxT(t), 200*time.Millisecond)
	defer cancel()
	begin := time.Now()
	_, err := ctl.Exec(ctx, runtime.ExecRequest{Command: []string{"sh", "-c", "sleep 30 & sleep 30"}})
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(begin), 10*time.Second, "the command and its child were killed")
}

// TestExecStates: before Start and after the task exited there is nothing
// to run next to.
func TestExecStates(t *testing.T) {
	rt, _ := newRuntime(t)
	ctl, err := rt.Controller(runtime.Task{ID: "exec3", Spec: sh("exit 0")})
	require.NoError(t, err)
	ctx := ctxT(t)
	ex := ctl.(runtime.Execer)
	_, err = ex.Exec(ctx, runtime.ExecRequest{Command: []string{"true"}})
	require.ErrorIs(t, err, runtime.ErrNotStarted)
	require.NoError(t, ctl.Prepare(ctx))
	require.NoError(t, ctl.Start(ctx))
	_, err = ctl.Wait(ctx)
	require.NoError(t, err)
	_, err = ex.Exec(ctx, runtime.ExecRequest{Command: []string{"true"}})
	assert.ErrorContains(t, err, "the task has exited")
}
