package runtimetest_test

import (
	"context"
	"errors"
	"io"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/shoalhq/shoal/runtime"
	"github.com/shoalhq/shoal/runtime/runtimetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const long = 30 * time.Second

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), long)
	t.Cleanup(cancel)
	return ctx
}

func task(id string) runtime.Task {
	return runtime.Task{ID: id, ServiceName: "svc", Spec: runtime.Spec{Command: []string{"app"}}}
}

func start(t *testing.T, rt *runtimetest.Runtime, id string) runtime.Controller {
	t.Helper()
	ctl, err := rt.Controller(task(id))
	require.NoError(t, err)
	require.NoError(t, ctl.Prepare(ctxT(t)))
	require.NoError(t, ctl.Start(ctxT(t)))
	return ctl
}

// async runs f in a goroutine and returns a channel with its error.
func async(f func() error) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- f() }()
	return ch
}

func TestDefaultRunsUntilShutdown(t *testing.T) {
	rt := runtimetest.New()
	ctl := start(t, rt, "t1")
	assert.True(t, rt.Started("t1"))
	assert.Equal(t, []runtime.Task{task("t1")}, rt.Running())
	st, ok := rt.State("t1")
	require.True(t, ok)
	assert.Equal(t, runtimetest.StateRunning, st)

	waitErr := async(func() error { _, err := ctl.Wait(ctxT(t)); return err })
	require.NoError(t, ctl.Shutdown(ctxT(t)))
	require.NoError(t, <-waitErr)
	status, err := ctl.Wait(ctxT(t))
	require.NoError(t, err)
	assert.Equal(t, runtime.ExitStatus{Code: 0, Message: "exit code 0 after stop signal SIGTERM"}, status)
	assert.Empty(t, rt.Running())
	require.NoError(t, ctl.Shutdown(ctxT(t)), "idempotent")

	require.NoError(t, ctl.Remove(ctxT(t)))
	require.NoError(t, ctl.Remove(ctxT(t)))
	st, _ = rt.State("t1")
	assert.Equal(t, runtimetest.StateRemoved, st)
	assert.Equal(t, []string{"Prepare", "Start", "Wait", "Shutdown", "Wait", "Shutdown", "Remove", "Remove"}, orderIndependentWaitFirst(rt.Calls("t1")))
	assert.Equal(t, 2, rt.CallCount("t1", "Wait"))
}

// orderIndependentWaitFirst makes the racing first Wait and Shutdown calls
// deterministic for comparison.
func orderIndependentWaitFirst(calls []string) []string {
	out := append([]string(nil), calls...)
	if len(out) > 3 && out[2] == "Shutdown" && out[3] == "Wait" {
		out[2], out[3] = out[3], out[2]
	}
	return out
}

func TestLifecycleErrors(t *testing.T) {
	rt := runtimetest.New()
	ctx := ctxT(t)
	ctl, err := rt.Controller(task("t1"))
	require.NoError(t, err)
	assert.ErrorIs(t, ctl.Start(ctx), runtime.ErrNotPrepared)
	_, err = ctl.Wait(ctx)
	assert.ErrorIs(t, err, runtime.ErrNotStarted)
	require.NoError(t, ctl.Prepare(ctx))
	require.NoError(t, ctl.Shutdown(ctx))
	assert.ErrorIs(t, ctl.Start(ctx), runtime.ErrShutdown)
	require.NoError(t, ctl.Remove(ctx))
	assert.ErrorIs(t, ctl.Prepare(ctx), runtime.ErrAlreadyRemoved)
	assert.ErrorIs(t, ctl.Start(ctx), runtime.ErrAlreadyRemoved)
	_, err = ctl.Wait(ctx)
	assert.ErrorIs(t, err, runtime.ErrAlreadyRemoved)
	assert.False(t, rt.Started("t1"))

	_, err = rt.Controller(runtime.Task{ID: "bad"})
	assert.ErrorIs(t, err, runtime.ErrInvalidTask)
	assert.ErrorIs(t, rt.Exit("nope", 1), runtimetest.ErrUnknownTask)
	assert.ErrorIs(t, rt.Release("nope"), runtimetest.ErrUnknownTask)
	assert.ErrorIs(t, rt.Exit("t1", 1), runtimetest.ErrNotRunning)
}

func TestSameControllerUntilRemoved(t *testing.T) {
	rt := runtimetest.New()
	a, err := rt.Controller(task("t1"))
	require.NoError(t, err)
	b, err := rt.Controller(task("t1"))
	require.NoError(t, err)
	assert.Same(t, a, b)
	require.NoError(t, a.Remove(ctxT(t)))
	c, err := rt.Controller(task("t1"))
	require.NoError(t, err)
	assert.NotSame(t, a, c)
}

func TestExitOnCue(t *testing.T) {
	rt := runtimetest.New()
	ctl := start(t, rt, "t1")
	require.NoError(t, rt.Exit("t1", 3))
	st, err := ctl.Wait(ctxT(t))
	require.NoError(t, err)
	assert.Equal(t, runtime.ExitStatus{Code: 3, Message: "exit code 3"}, st)
	got, ok := rt.ExitStatus("t1")
	require.True(t, ok)
	assert.Equal(t, st, got)
	assert.ErrorIs(t, rt.Exit("t1", 4), runtimetest.ErrNotRunning)

	ctl = start(t, rt, "t2")
	segv := runtime.ExitStatus{Code: -1, Signal: "SIGSEGV", Message: "killed by SIGSEGV"}
	require.NoError(t, rt.ExitWith("t2", segv))
	st, err = ctl.Wait(ctxT(t))
	require.NoError(t, err)
	assert.Equal(t, segv, st)
}

func TestBehaviors(t *testing.T) {
	rt := runtimetest.New()
	errPrep, errStart := errors.New("no image"), errors.New("exec failed")
	rt.SetBehavior(func(tk runtime.Task) runtimetest.Behavior {
		switch tk.ServiceName {
		case "prep":
			return runtimetest.Behavior{PrepareErr: errPrep}
		case "start":
			return runtimetest.Behavior{StartErr: errStart}
		case "batch":
			return runtimetest.Behavior{ExitCode: runtimetest.Code(int(tk.Slot))}
		}
		return runtimetest.Behavior{}
	})
	ctx := ctxT(t)
	mk := func(id, svc string, slot uint64) runtime.Controller {
		ctl, err := rt.Controller(runtime.Task{ID: id, ServiceName: svc, Slot: slot, Spec: runtime.Spec{Command: []string{"x"}}})
		require.NoError(t, err)
		return ctl
	}
	c := mk("p", "prep", 0)
	assert.ErrorIs(t, c.Prepare(ctx), errPrep)
	assert.ErrorIs(t, c.Prepare(ctx), errPrep)

	c = mk("s", "start", 0)
	require.NoError(t, c.Prepare(ctx))
	assert.ErrorIs(t, c.Start(ctx), errStart)
	assert.False(t, rt.Started("s"))

	c = mk("b", "batch", 5)
	require.NoError(t, c.Prepare(ctx))
	require.NoError(t, c.Start(ctx))
	st, err := c.Wait(ctx)
	require.NoError(t, err)
	assert.Equal(t, 5, st.Code)
	assert.True(t, rt.Started("b"))
	assert.Empty(t, rt.Running())

	// A per-task behavior wins over the matcher, and behaviors are read at
	// every call, so a retry after a fix succeeds.
	rt.SetTaskBehavior("s", runtimetest.Behavior{})
	require.NoError(t, mk("s", "start", 0).Start(ctx))
	assert.Equal(t, []string{"s"}, ids(rt.Running()))

	waitErr := errors.New("lost track")
	rt.SetTaskBehavior("w", runtimetest.Behavior{WaitErr: waitErr, ShutdownStatus: &runtime.ExitStatus{Code: 143, Message: "custom"}})
	c = mk("w", "x", 0)
	require.NoError(t, c.Prepare(ctx))
	require.NoError(t, c.Start(ctx))
	require.NoError(t, c.Shutdown(ctx))
	st, err = c.Wait(ctx)
	assert.ErrorIs(t, err, waitErr)
	assert.Equal(t, runtime.ExitStatus{Code: 143, Message: "custom"}, st)

	removeErr := errors.New("busy")
	rt.SetTaskBehavior("w", runtimetest.Behavior{RemoveErr: removeErr})
	assert.ErrorIs(t, c.Remove(ctx), removeErr)
	rt.SetTaskBehavior("w", runtimetest.Behavior{})
	assert.NoError(t, c.Remove(ctx))
}

func ids(ts []runtime.Task) []string {
	var out []string
	for _, t := range ts {
		out = append(out, t.ID)
	}
	return out
}

func TestHangOnShutdown(t *testing.T) {
	rt := runtimetest.New()
	tk := task("t1")
	tk.Spec.StopGracePeriod = 3 * time.Second
	rt.SetTaskBehavior("t1", runtimetest.Behavior{HangOnShutdown: true})
	ctl, err := rt.Controller(tk)
	require.NoError(t, err)
	require.NoError(t, ctl.Prepare(ctxT(t)))
	require.NoError(t, ctl.Start(ctxT(t)))

	// ctx ends: Shutdown gives up, the task still runs.
	short, cancel := context.WithCancel(ctxT(t))
	cancel()
	assert.ErrorIs(t, ctl.Shutdown(short), context.Canceled)
	assert.Equal(t, []string{"t1"}, ids(rt.Running()))

	done := async(func() error { return ctl.Shutdown(ctxT(t)) })
	require.NoError(t, rt.WaitFor(ctxT(t), func() bool { return rt.CallCount("t1", "Shutdown") == 2 }))
	require.NoError(t, rt.Release("t1"))
	require.NoError(t, <-done)
	st, err := ctl.Wait(ctxT(t))
	require.NoError(t, err)
	assert.Equal(t, runtime.ExitStatus{Code: -1, Signal: "SIGKILL", Message: "killed by SIGKILL after 3s grace period"}, st)

	// Remove kills a hanging task at once.
	rt.SetTaskBehavior("t2", runtimetest.Behavior{HangOnShutdown: true})
	c2 := start(t, rt, "t2")
	done = async(func() error { return c2.Shutdown(ctxT(t)) })
	require.NoError(t, c2.Remove(ctxT(t)))
	require.NoError(t, <-done)
	st, err = c2.Wait(ctxT(t))
	require.NoError(t, err)
	assert.Equal(t, "killed by SIGKILL on remove", st.Message)
}

func TestHoldPrepareAndStart(t *testing.T) {
	rt := runtimetest.New()
	rt.SetTaskBehavior("t1", runtimetest.Behavior{HoldPrepare: true, HoldStart: true})
	ctl, err := rt.Controller(task("t1"))
	require.NoError(t, err)
	canceled, cancel := context.WithCancel(ctxT(t))
	cancel()
	assert.ErrorIs(t, ctl.Prepare(canceled), context.Canceled)

	done := async(func() error { return ctl.Prepare(ctxT(t)) })
	require.NoError(t, rt.WaitFor(ctxT(t), func() bool { return rt.CallCount("t1", "Prepare") == 2 }))
	st, _ := rt.State("t1")
	assert.Equal(t, runtimetest.StateNew, st)
	require.NoError(t, rt.Release("t1"))
	require.NoError(t, <-done)
	require.NoError(t, ctl.Start(ctxT(t)), "released for good")
	require.NoError(t, rt.WaitStarted(ctxT(t), "t1"))

	// Remove unblocks a held Start.
	rt.SetTaskBehavior("t2", runtimetest.Behavior{HoldStart: true})
	c2, err := rt.Controller(task("t2"))
	require.NoError(t, err)
	require.NoError(t, c2.Prepare(ctxT(t)))
	done = async(func() error { return c2.Start(ctxT(t)) })
	require.NoError(t, rt.WaitFor(ctxT(t), func() bool { return rt.CallCount("t2", "Start") == 1 }))
	require.NoError(t, c2.Remove(ctxT(t)))
	assert.ErrorIs(t, <-done, runtime.ErrAlreadyRemoved)
}

func TestEventsAndWaitStarted(t *testing.T) {
	rt := runtimetest.New()
	var mu sync.Mutex
	var got []string
	rt.OnEvent(func(e runtimetest.Event) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, e.Task.ID+":"+e.Kind.String()+":"+e.Status.Message)
	})
	started := async(func() error { return rt.WaitStarted(ctxT(t), "t1") })
	ctl := start(t, rt, "t1")
	require.NoError(t, <-started)
	require.NoError(t, rt.Exit("t1", 2))
	require.NoError(t, ctl.Remove(ctxT(t)))
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, []string{"t1:prepared:", "t1:started:", "t1:exited:exit code 2", "t1:removed:"}, got)

	canceled, cancel := context.WithCancel(ctxT(t))
	cancel()
	assert.ErrorIs(t, rt.WaitStarted(canceled, "never"), context.Canceled)
}

func TestLogs(t *testing.T) {
	rt := runtimetest.New()
	rt.SetTaskBehavior("t1", runtimetest.Behavior{Stdout: "out\n", Stderr: "err\n"})
	ctl, err := rt.Controller(task("t1"))
	require.NoError(t, err)
	ls := ctl.(runtime.LogStreamer)
	_, err = ls.Logs(ctxT(t), runtime.LogOptions{})
	assert.ErrorIs(t, err, runtime.ErrNotPrepared)
	require.NoError(t, ctl.Prepare(ctxT(t)))
	require.NoError(t, ctl.Start(ctxT(t)))
	read := func(opts runtime.LogOptions) string {
		r, err := ls.Logs(ctxT(t), opts)
		require.NoError(t, err)
		defer r.Close()
		b, err := io.ReadAll(r)
		require.NoError(t, err)
		return string(b)
	}
	assert.Equal(t, "out\n", read(runtime.LogOptions{Stream: "stdout"}))
	assert.Equal(t, "err\n", read(runtime.LogOptions{Stream: "stderr"}))
	assert.Equal(t, "out\nerr\n", read(runtime.LogOptions{}))

	followed := make(chan string, 1)
	r, err := ls.Logs(ctxT(t), runtime.LogOptions{Stream: "stdout", Follow: true})
	require.NoError(t, err)
	go func() { b, _ := io.ReadAll(r); followed <- string(b) }()
	require.NoError(t, rt.Exit("t1", 0))
	assert.Equal(t, "out\n", <-followed)
	require.NoError(t, r.Close())
	_, err = ls.Logs(ctxT(t), runtime.LogOptions{Stream: "bad"})
	assert.ErrorContains(t, err, "LogOptions.Stream")
}

func TestThousandsOfTasksConcurrently(t *testing.T) {
	rt := runtimetest.New()
	const n = 5000
	ctx := ctxT(t)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < n; i += 8 {
				ctl, err := rt.Controller(task("t" + strconv.Itoa(i)))
				if !assert.NoError(t, err) {
					return
				}
				assert.NoError(t, ctl.Prepare(ctx))
				assert.NoError(t, ctl.Start(ctx))
			}
		})
	}
	wg.Wait()
	require.Len(t, rt.Running(), n)
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < n; i += 8 {
				id := "t" + strconv.Itoa(i)
				if i%2 == 0 {
					assert.NoError(t, rt.Exit(id, 1))
				} else {
					ctl, err := rt.Controller(task(id))
					assert.NoError(t, err)
					assert.NoError(t, ctl.Shutdown(ctx))
				}
			}
		})
	}
	wg.Wait()
	assert.Empty(t, rt.Running())
	assert.Len(t, rt.Tasks(), n)
}

func BenchmarkLifecycle(b *testing.B) {
	rt := runtimetest.New()
	ctx := context.Background()
	for i := 0; b.Loop(); i++ {
		ctl, err := rt.Controller(task("t" + strconv.Itoa(i)))
		if err != nil {
			b.Fatal(err)
		}
		_ = ctl.Prepare(ctx)
		_ = ctl.Start(ctx)
		_ = ctl.Shutdown(ctx)
		_, _ = ctl.Wait(ctx)
		_ = ctl.Remove(ctx)
	}
}
