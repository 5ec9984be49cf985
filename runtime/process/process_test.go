package process_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/shoalhq/shoal/runtime"
	"github.com/shoalhq/shoal/runtime/process"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// long bounds every blocking call so a bug fails the test instead of
// hanging it; it is never reached by a passing test.
const long = 30 * time.Second

func newRuntime(t *testing.T, mut ...func(*process.Config)) (*process.Runtime, string) {
	t.Helper()
	dir := t.TempDir()
	cfg := process.DefaultConfig()
	cfg.Dir = dir
	cfg.LogPollInterval = 10 * time.Millisecond
	for _, m := range mut {
		m(&cfg)
	}
	rt, err := process.New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), long)
		defer cancel()
		assert.NoError(t, rt.RemoveAll(ctx))
	})
	return rt, dir
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), long)
	t.Cleanup(cancel)
	return ctx
}

func sh(script string) runtime.Spec {
	return runtime.Spec{Command: []string{"/bin/sh", "-c", script}}
}

// started prepares and starts a task and returns its controller.
func started(t *testing.T, rt *process.Runtime, id string, spec runtime.Spec) *process.Controller {
	t.Helper()
	ctl, err := rt.Controller(runtime.Task{ID: id, ServiceID: "svc1", ServiceName: "web", Slot: 2, NodeID: "node1", Spec: spec})
	require.NoError(t, err)
	ctx := ctxT(t)
	require.NoError(t, ctl.Prepare(ctx))
	require.NoError(t, ctl.Start(ctx))
	return ctl.(*process.Controller)
}

func wait(t *testing.T, ctl runtime.Controller) runtime.ExitStatus {
	t.Helper()
	st, err := ctl.Wait(ctxT(t))
	require.NoError(t, err)
	return st
}

// waitForOutput polls the task's stdout until it contains want, so a test
// signals a script only once its traps are installed.
func waitForOutput(t *testing.T, rt *process.Runtime, id, want string) {
	t.Helper()
	require.Eventually(t, func() bool {
		b, _ := os.ReadFile(rt.LogPath(id, runtime.StreamStdout))
		return strings.Contains(string(b), want)
	}, long, 10*time.Millisecond, "task %s never printed %q", id, want)
}

// processGone reports whether pid no longer runs (it may be a zombie that
// nobody reaped yet, e.g. in a container without an init).
func processGone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return errors.Is(err, os.ErrNotExist)
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] == 'Z'
}

func TestExitZero(t *testing.T) {
	rt, _ := newRuntime(t)
	ctl := started(t, rt, "t-true", runtime.Spec{Command: []string{"true"}})
	st := wait(t, ctl)
	assert.Equal(t, runtime.ExitStatus{Code: 0, Message: "exit code 0"}, st)
	assert.True(t, st.Success())
	require.NoError(t, ctl.Remove(ctxT(t)))
}

func TestExitNonZero(t *testing.T) {
	rt, _ := newRuntime(t)
	ctl := started(t, rt, "t-false", runtime.Spec{Command: []string{"false"}})
	assert.Equal(t, 1, wait(t, ctl).Code)

	ctl = started(t, rt, "t-exit3", sh("exit 3"))
	st := wait(t, ctl)
	assert.Equal(t, runtime.ExitStatus{Code: 3, Message: "exit code 3"}, st)
	assert.False(t, st.Success())
}

func TestKilledBySignalItself(t *testing.T) {
	rt, _ := newRuntime(t)
	ctl := started(t, rt, "t-segv", sh("kill -USR1 $$"))
	st := wait(t, ctl)
	assert.Equal(t, -1, st.Code)
	assert.Equal(t, "SIGUSR1", st.Signal)
	assert.Equal(t, "killed by SIGUSR1", st.Message)
}

func TestShutdownStopSignalDefault(t *testing.T) {
	rt, _ := newRuntime(t)
	ctl := started(t, rt, "t-sleep", runtime.Spec{Command: []string{"sleep", "1000"}})
	require.NoError(t, ctl.Shutdown(ctxT(t)))
	st := wait(t, ctl)
	assert.Equal(t, runtime.ExitStatus{Code: -1, Signal: "SIGTERM", Message: "killed by SIGTERM (stop signal)"}, st)
	// Idempotent: a second Shutdown after exit returns at once.
	require.NoError(t, ctl.Shutdown(ctxT(t)))
}

func TestShutdownGracefulTrap(t *testing.T) {
	rt, _ := newRuntime(t)
	ctl := started(t, rt, "t-trap", sh(`trap 'echo bye; exit 7' TERM; echo ready; while :; do sleep 0.05; done`))
	waitForOutput(t, rt, "t-trap", "ready")
	require.NoError(t, ctl.Shutdown(ctxT(t)))
	st := wait(t, ctl)
	assert.Equal(t, runtime.ExitStatus{Code: 7, Message: "exit code 7 after stop signal SIGTERM"}, st)
	waitForOutput(t, rt, "t-trap", "bye")
}

func TestShutdownCustomStopSignal(t *testing.T) {
	rt, _ := newRuntime(t)
	spec := sh(`trap 'exit 9' INT; trap '' TERM; echo ready; while :; do sleep 0.05; done`)
	spec.StopSignal = "int"
	ctl := started(t, rt, "t-int", spec)
	waitForOutput(t, rt, "t-int", "ready")
	require.NoError(t, ctl.Shutdown(ctxT(t)))
	st := wait(t, ctl)
	assert.Equal(t, 9, st.Code)
	assert.Equal(t, "exit code 9 after stop signal SIGINT", st.Message)
}

func TestShutdownKillAfterGrace(t *testing.T) {
	rt, _ := newRuntime(t)
	spec := sh(`trap '' TERM; echo ready; while :; do sleep 1; done`)
	spec.StopGracePeriod = 200 * time.Millisecond
	ctl := started(t, rt, "t-stubborn", spec)
	waitForOutput(t, rt, "t-stubborn", "ready")
	require.NoError(t, ctl.Shutdown(ctxT(t)))
	st := wait(t, ctl)
	assert.Equal(t, runtime.ExitStatus{Code: -1, Signal: "SIGKILL", Message: "killed by SIGKILL after 200ms grace period"}, st)
}

func TestShutdownCtxEndsBeforeGraceKillStillHappens(t *testing.T) {
	rt, _ := newRuntime(t)
	spec := sh(`trap '' TERM; echo ready; while :; do sleep 1; done`)
	spec.StopGracePeriod = 2 * time.Second
	ctl := started(t, rt, "t-short-ctx", spec)
	waitForOutput(t, rt, "t-short-ctx", "ready")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, ctl.Shutdown(ctx), context.DeadlineExceeded)
	st := wait(t, ctl)
	assert.Equal(t, "SIGKILL", st.Signal)
	assert.Contains(t, st.Message, "after 2s grace period")
}

func TestShutdownKillsWholeGroup(t *testing.T) {
	rt, _ := newRuntime(t)
	ctl := started(t, rt, "t-group", sh(`sleep 1000 & echo $! > child.pid; echo ready; wait`))
	waitForOutput(t, rt, "t-group", "ready")
	b, err := os.ReadFile(filepath.Join(ctl.WorkDir(), "child.pid"))
	require.NoError(t, err)
	child, err := strconv.Atoi(strings.TrimSpace(string(b)))
	require.NoError(t, err)
	require.False(t, processGone(child), "child should run before shutdown")

	require.NoError(t, ctl.Shutdown(ctxT(t)))
	wait(t, ctl)
	require.Eventually(t, func() bool { return processGone(child) }, long, 10*time.Millisecond)
}

func TestLeaderExitKillsLeftovers(t *testing.T) {
	rt, _ := newRuntime(t)
	ctl := started(t, rt, "t-orphan", sh(`sleep 1000 & echo $! > child.pid; exit 4`))
	st := wait(t, ctl)
	assert.Equal(t, 4, st.Code)
	b, err := os.ReadFile(filepath.Join(ctl.WorkDir(), "child.pid"))
	require.NoError(t, err)
	child, err := strconv.Atoi(strings.TrimSpace(string(b)))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return processGone(child) }, long, 10*time.Millisecond)
}

func TestEnvAndWorkDir(t *testing.T) {
	t.Setenv("SHOAL_TEST_HOST_SECRET", "leak")
	rt, dir := newRuntime(t)
	spec := sh(`env > "$HOME/env.txt"; pwd -P`)
	spec.Env = []string{"FOO=bar", "SHOAL_NODE_ID=override", "FOO=baz"}
	ctl := started(t, rt, "t-env", spec)
	require.True(t, wait(t, ctl).Success())

	work := filepath.Join(dir, "t-env", "work")
	assert.Equal(t, work, ctl.WorkDir())
	b, err := os.ReadFile(filepath.Join(work, "env.txt"))
	require.NoError(t, err)
	env := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		k, v, _ := strings.Cut(line, "=")
		env[k] = v
	}
	assert.Equal(t, os.Getenv("PATH"), env["PATH"])
	assert.Equal(t, work, env["HOME"])
	assert.Equal(t, "t-env", env["SHOAL_TASK_ID"])
	assert.Equal(t, work, env["SHOAL_TASK_DIR"])
	assert.Equal(t, "svc1", env["SHOAL_SERVICE_ID"])
	assert.Equal(t, "web", env["SHOAL_SERVICE_NAME"])
	assert.Equal(t, "2", env["SHOAL_TASK_SLOT"])
	assert.Equal(t, "override", env["SHOAL_NODE_ID"])
	assert.Equal(t, "baz", env["FOO"])
	assert.NotContains(t, env, "SHOAL_TEST_HOST_SECRET")

	out, err := os.ReadFile(rt.LogPath("t-env", runtime.StreamStdout))
	require.NoError(t, err)
	realWork, err := filepath.EvalSymlinks(work)
	require.NoError(t, err)
	assert.Equal(t, realWork+"\n", string(out))
}

func TestSpecDirAndPassEnv(t *testing.T) {
	t.Setenv("SHOAL_TEST_PASSED", "yes")
	rt, _ := newRuntime(t, func(c *process.Config) { c.PassEnv = []string{"SHOAL_TEST_PASSED", "SHOAL_TEST_UNSET"} })
	cwd := t.TempDir()
	spec := sh(`pwd -P; echo "$SHOAL_TEST_PASSED $PATH"`)
	spec.Dir = cwd
	ctl := started(t, rt, "t-dir", spec)
	require.True(t, wait(t, ctl).Success())
	out, err := os.ReadFile(rt.LogPath("t-dir", runtime.StreamStdout))
	require.NoError(t, err)
	realCwd, err := filepath.EvalSymlinks(cwd)
	require.NoError(t, err)
	assert.Equal(t, realCwd+"\nyes "+process.DefaultPath+"\n", string(out))

	require.NoError(t, ctl.Remove(ctxT(t)))
	assert.DirExists(t, cwd, "Spec.Dir belongs to the caller and must survive Remove")
}

func TestProgramLookup(t *testing.T) {
	rt, _ := newRuntime(t)
	bin := t.TempDir()
	script := filepath.Join(bin, "hello-shoal")
	require.NoError(t, os.WriteFile(script, []byte("#!/bin/sh\necho hi\n"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(bin, "not-exec"), []byte("x"), 0o644))

	// PATH set by Spec.Env is where the program is looked up.
	spec := runtime.Spec{Command: []string{"hello-shoal"}, Env: []string{"PATH=" + bin + ":/usr/bin:/bin"}}
	ctl := started(t, rt, "t-lookup", spec)
	require.True(t, wait(t, ctl).Success())

	for id, cmd := range map[string]string{"t-missing": "no-such-program-shoal", "t-missing-abs": "/no/such/prog", "t-notexec": filepath.Join(bin, "not-exec"), "t-dir-prog": bin} {
		ctl, err := rt.Controller(runtime.Task{ID: id, Spec: runtime.Spec{Command: []string{cmd}}})
		require.NoError(t, err)
		err = ctl.Prepare(ctxT(t))
		require.Error(t, err, cmd)
		assert.Contains(t, err.Error(), id)
		if id == "t-missing" || id == "t-missing-abs" {
			assert.ErrorIs(t, err, exec.ErrNotFound)
		}
		assert.ErrorIs(t, ctl.Start(ctxT(t)), runtime.ErrNotPrepared)
		require.NoError(t, ctl.Remove(ctxT(t)))
	}
}

func TestLogsKeptAndReadable(t *testing.T) {
	rt, dir := newRuntime(t)
	ctl := started(t, rt, "t-logs", sh(`echo out1; echo err1 >&2; echo out2; printf tail`))
	wait(t, ctl)
	read := func(stream string) string {
		r, err := ctl.Logs(ctxT(t), runtime.LogOptions{Stream: stream})
		require.NoError(t, err)
		defer r.Close()
		b, err := io.ReadAll(r)
		require.NoError(t, err)
		return string(b)
	}
	assert.Equal(t, "out1\nout2\ntail", read("stdout"))
	assert.Equal(t, "err1\n", read("stderr"))
	both := read("")
	assert.ElementsMatch(t, []string{"out1", "out2", "tail", "err1"}, strings.Split(strings.TrimSpace(both), "\n"))
	assert.Less(t, strings.Index(both, "out1"), strings.Index(both, "out2"))

	_, err := ctl.Logs(ctxT(t), runtime.LogOptions{Stream: "nope"})
	assert.ErrorContains(t, err, "LogOptions.Stream")

	require.NoError(t, ctl.Remove(ctxT(t)))
	assert.FileExists(t, filepath.Join(dir, "t-logs", "stdout.log"))
	assert.FileExists(t, filepath.Join(dir, "t-logs", "stderr.log"))
	assert.NoDirExists(t, filepath.Join(dir, "t-logs", "work"))
	_, err = ctl.Logs(ctxT(t), runtime.LogOptions{})
	assert.ErrorIs(t, err, runtime.ErrAlreadyRemoved)
}

func TestLogsDeletedWithoutKeepLogs(t *testing.T) {
	rt, dir := newRuntime(t, func(c *process.Config) { c.KeepLogs = false })
	ctl := started(t, rt, "t-nokeep", sh(`echo x; mkdir ro; touch ro/f; chmod 500 ro`))
	wait(t, ctl)
	require.NoError(t, ctl.Remove(ctxT(t)))
	assert.NoDirExists(t, filepath.Join(dir, "t-nokeep"))
}

func TestLogsFollow(t *testing.T) {
	rt, _ := newRuntime(t)
	ctl := started(t, rt, "t-follow", sh(`echo first; while [ ! -f go ]; do sleep 0.02; done; echo second >&2; echo third`))
	r, err := ctl.Logs(ctxT(t), runtime.LogOptions{Follow: true})
	require.NoError(t, err)
	defer r.Close()
	br := bufio.NewReader(r)
	line, err := br.ReadString('\n')
	require.NoError(t, err)
	assert.Equal(t, "first\n", line)

	require.NoError(t, os.WriteFile(filepath.Join(ctl.WorkDir(), "go"), nil, 0o644))
	rest, err := io.ReadAll(br) // returns at EOF once the task exited
	require.NoError(t, err)
	assert.ElementsMatch(t, []string{"second", "third"}, strings.Fields(string(rest)))
	assert.True(t, wait(t, ctl).Success())
}

func TestLogsFollowCancelAndClose(t *testing.T) {
	rt, _ := newRuntime(t)
	ctl := started(t, rt, "t-follow-cancel", runtime.Spec{Command: []string{"sleep", "1000"}})

	ctx, cancel := context.WithCancel(ctxT(t))
	r, err := ctl.Logs(ctx, runtime.LogOptions{Stream: "stdout", Follow: true})
	require.NoError(t, err)
	errc := make(chan error, 1)
	go func() { _, err := r.Read(make([]byte, 10)); errc <- err }()
	cancel()
	assert.ErrorIs(t, <-errc, context.Canceled)
	require.NoError(t, r.Close())

	r, err = ctl.Logs(ctxT(t), runtime.LogOptions{Follow: true})
	require.NoError(t, err)
	go func() { _, err := r.Read(make([]byte, 10)); errc <- err }()
	require.NoError(t, r.Close())
	assert.ErrorIs(t, <-errc, os.ErrClosed)
	require.NoError(t, r.Close(), "Close is idempotent")

	// A follower ends with EOF when the task is removed.
	r, err = ctl.Logs(ctxT(t), runtime.LogOptions{Follow: true})
	require.NoError(t, err)
	defer r.Close()
	go func() { _, err := io.ReadAll(r); errc <- err }()
	require.NoError(t, ctl.Remove(ctxT(t)))
	assert.NoError(t, <-errc)
}

func TestRemoveIdempotentAndKills(t *testing.T) {
	rt, dir := newRuntime(t)
	ctl := started(t, rt, "t-remove", runtime.Spec{Command: []string{"sleep", "1000"}})
	pid := ctl.Pid()
	require.Positive(t, pid)
	ctx := ctxT(t)
	require.NoError(t, ctl.Remove(ctx))
	require.NoError(t, ctl.Remove(ctx))
	assert.True(t, processGone(pid))
	assert.NoDirExists(t, filepath.Join(dir, "t-remove", "work"))

	st, err := ctl.Wait(ctx)
	require.NoError(t, err)
	assert.Equal(t, runtime.ExitStatus{Code: -1, Signal: "SIGKILL", Message: "killed by SIGKILL on remove"}, st)
	assert.ErrorIs(t, ctl.Prepare(ctx), runtime.ErrAlreadyRemoved)
	assert.ErrorIs(t, ctl.Start(ctx), runtime.ErrAlreadyRemoved)
	assert.NoError(t, ctl.Shutdown(ctx))
	assert.Empty(t, rt.Tasks())

	// Removing a task that never started.
	c2, err := rt.Controller(runtime.Task{ID: "t-never", Spec: runtime.Spec{Command: []string{"true"}}})
	require.NoError(t, err)
	require.NoError(t, c2.Prepare(ctx))
	require.NoError(t, c2.Remove(ctx))
	require.NoError(t, c2.Remove(ctx))
	_, err = c2.Wait(ctx)
	assert.ErrorIs(t, err, runtime.ErrAlreadyRemoved)
}

func TestWaitConcurrent(t *testing.T) {
	rt, _ := newRuntime(t)
	ctl := started(t, rt, "t-wait", sh(`while [ ! -f go ]; do sleep 0.02; done; exit 5`))
	const n = 16
	var wg sync.WaitGroup
	results := make([]runtime.ExitStatus, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { results[i], errs[i] = ctl.Wait(ctxT(t)) })
	}
	require.NoError(t, os.WriteFile(filepath.Join(ctl.WorkDir(), "go"), nil, 0o644))
	wg.Wait()
	for i := range n {
		require.NoError(t, errs[i])
		assert.Equal(t, runtime.ExitStatus{Code: 5, Message: "exit code 5"}, results[i])
	}
}

func TestWaitAndShutdownConcurrently(t *testing.T) {
	rt, _ := newRuntime(t)
	ctl := started(t, rt, "t-wait-shutdown", runtime.Spec{Command: []string{"sleep", "1000"}})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() { _, err := ctl.Wait(ctxT(t)); assert.NoError(t, err) })
		wg.Go(func() { assert.NoError(t, ctl.Shutdown(ctxT(t))) })
	}
	wg.Wait()
	assert.Equal(t, "SIGTERM", wait(t, ctl).Signal)
}

func TestWaitCtx(t *testing.T) {
	rt, _ := newRuntime(t)
	ctl := started(t, rt, "t-wait-ctx", runtime.Spec{Command: []string{"sleep", "1000"}})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := ctl.Wait(ctx)
	assert.ErrorIs(t, err, context.Canceled)
}

func TestLifecycleOrderErrors(t *testing.T) {
	rt, _ := newRuntime(t)
	ctx := ctxT(t)
	ctl, err := rt.Controller(runtime.Task{ID: "t-order", Spec: runtime.Spec{Command: []string{"true"}}})
	require.NoError(t, err)
	assert.ErrorIs(t, ctl.Start(ctx), runtime.ErrNotPrepared)
	_, err = ctl.Wait(ctx)
	assert.ErrorIs(t, err, runtime.ErrNotStarted)
	_, err = ctl.(runtime.LogStreamer).Logs(ctx, runtime.LogOptions{})
	assert.ErrorIs(t, err, runtime.ErrNotPrepared)
	require.NoError(t, ctl.Prepare(ctx))
	require.NoError(t, ctl.Prepare(ctx), "Prepare is idempotent")
	require.NoError(t, ctl.Shutdown(ctx), "Shutdown before Start is a no-op")
	assert.ErrorIs(t, ctl.Start(ctx), runtime.ErrShutdown)

	// Start is idempotent: a second Start does not run the program again.
	c2 := started(t, rt, "t-once", sh(`echo run`))
	wait(t, c2)
	require.NoError(t, c2.Start(ctx))
	b, err := os.ReadFile(rt.LogPath("t-once", "stdout"))
	require.NoError(t, err)
	assert.Equal(t, "run\n", string(b))

	canceled, cancel := context.WithCancel(ctx)
	cancel()
	c3, err := rt.Controller(runtime.Task{ID: "t-canceled", Spec: runtime.Spec{Command: []string{"true"}}})
	require.NoError(t, err)
	assert.ErrorIs(t, c3.Prepare(canceled), context.Canceled)
}

func TestControllerSameIDSameController(t *testing.T) {
	rt, _ := newRuntime(t)
	task := runtime.Task{ID: "t-same", Spec: runtime.Spec{Command: []string{"true"}}}
	a, err := rt.Controller(task)
	require.NoError(t, err)
	b, err := rt.Controller(task)
	require.NoError(t, err)
	assert.Same(t, a, b)
	assert.Equal(t, []string{"t-same"}, rt.Tasks())
	require.NoError(t, a.Remove(ctxT(t)))
	c, err := rt.Controller(task)
	require.NoError(t, err)
	assert.NotSame(t, a, c)
}

func TestValidation(t *testing.T) {
	_, err := process.New(process.Config{})
	assert.ErrorContains(t, err, "Config.Dir: required")
	cfg := process.DefaultConfig()
	cfg.Dir = t.TempDir()
	cfg.LogPollInterval = -1
	_, err = process.New(cfg)
	assert.ErrorContains(t, err, "Config.LogPollInterval")
	cfg.LogPollInterval = 0
	cfg.PassEnv = []string{"A=B"}
	_, err = process.New(cfg)
	assert.ErrorContains(t, err, "Config.PassEnv[0]")
	assert.Equal(t, []string{"A=B"}, cfg.PassEnv, "New must not modify the caller's config")

	rt, _ := newRuntime(t)
	_, err = rt.Controller(runtime.Task{ID: "t1"})
	assert.ErrorIs(t, err, runtime.ErrInvalidTask)
	assert.ErrorContains(t, err, "Spec.Command")
	for _, id := range []string{"", "../x", "a/b", ".hidden", strings.Repeat("a", 129), "sp ace"} {
		_, err = rt.Controller(runtime.Task{ID: id, Spec: runtime.Spec{Command: []string{"true"}}})
		assert.ErrorIs(t, err, runtime.ErrInvalidTask, id)
		assert.ErrorContains(t, err, "Task.ID", id)
	}
	_, err = rt.Controller(runtime.Task{ID: "t2", Spec: runtime.Spec{Command: []string{"true"}, StopSignal: "SIGBOGUS"}})
	assert.ErrorContains(t, err, "Spec.StopSignal")

	ctl, err := rt.Controller(runtime.Task{ID: "t3", Spec: runtime.Spec{Command: []string{"true"}, Dir: "/no/such/dir/shoal"}})
	require.NoError(t, err)
	assert.ErrorContains(t, ctl.Prepare(ctxT(t)), "Spec.Dir")
}

func TestManyTasksConcurrently(t *testing.T) {
	rt, _ := newRuntime(t)
	const n = 20
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			id := "t-many-" + strconv.Itoa(i)
			ctl, err := rt.Controller(runtime.Task{ID: id, Spec: sh("exit " + strconv.Itoa(i%4))})
			if !assert.NoError(t, err) {
				return
			}
			ctx := ctxT(t)
			assert.NoError(t, ctl.Prepare(ctx))
			assert.NoError(t, ctl.Start(ctx))
			st, err := ctl.Wait(ctx)
			assert.NoError(t, err)
			assert.Equal(t, i%4, st.Code)
			assert.NoError(t, ctl.Remove(ctx))
		})
	}
	wg.Wait()
	assert.Empty(t, rt.Tasks())
}

func BenchmarkStartWaitRemove(b *testing.B) {
	dir := b.TempDir()
	cfg := process.DefaultConfig()
	cfg.Dir = dir
	rt, err := process.New(cfg)
	require.NoError(b, err)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		ctl, err := rt.Controller(runtime.Task{ID: "b" + strconv.Itoa(i), Spec: runtime.Spec{Command: []string{"true"}}})
		require.NoError(b, err)
		require.NoError(b, ctl.Prepare(ctx))
		require.NoError(b, ctl.Start(ctx))
		_, err = ctl.Wait(ctx)
		require.NoError(b, err)
		require.NoError(b, ctl.Remove(ctx))
	}
}
