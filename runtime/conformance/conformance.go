// Package conformance is one test suite for every runtime.Runtime: start,
// exit codes, the stop signal and its grace period, kill, logs, the
// environment, the working directory, ports and the restart of a task. A
// runtime's tests call Run with a Harness that says how to run the suite's
// test program (runtime/conformance/testprog) on that runtime: as a host
// program for runtime/process, in an image for runtime/runc.
package conformance

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/runtime"
)

// Harness is what the suite needs of a runtime.
type Harness struct {
	// Runtime is the runtime under test.
	Runtime runtime.Runtime
	// Spec returns a spec that runs the test program with args: for a
	// runtime of host programs Command is the program and args; for a
	// container runtime Image holds the program and Command runs it.
	Spec func(args ...string) runtime.Spec
	// NodeAddr is where an endpoint with an unspecified address is reached
	// (the node's address); the zero value means 127.0.0.1.
	NodeAddr netip.Addr
	// Dir is a directory the task can use as its working directory (it
	// must exist inside the task's filesystem too); "" skips that check.
	Dir string
}

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// Program builds the test program once per test binary, statically linked
// (CGO_ENABLED=0) so it runs in an otherwise empty image, and returns its
// path.
func Program(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "shoal-conformance-")
		if err != nil {
			buildErr = err
			return
		}
		buildPath = filepath.Join(dir, "testprog")
		cmd := exec.Command("go", "build", "-o", buildPath, "github.com/shoalhq/shoal/runtime/conformance/testprog")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("building the test program: %w: %s", err, out)
		}
	})
	require.NoError(t, buildErr)
	return buildPath
}

var taskSeq struct {
	sync.Mutex
	n int
}

func taskID(t *testing.T) string {
	taskSeq.Lock()
	defer taskSeq.Unlock()
	taskSeq.n++
	return fmt.Sprintf("conf%d%d", os.Getpid(), taskSeq.n)
}

// Run runs the suite; newHarness is called once per subtest.
func Run(t *testing.T, newHarness func(t *testing.T) Harness) {
	tests := []struct {
		name string
		fn   func(t *testing.T, h Harness)
	}{
		{"ExitZero", testExitZero},
		{"ExitCode", testExitCode},
		{"StopSignalWithinGrace", testStopSignal},
		{"KillAfterGrace", testKillAfterGrace},
		{"RemoveKills", testRemoveKills},
		{"Logs", testLogs},
		{"FollowLogs", testFollowLogs},
		{"Environment", testEnvironment},
		{"WorkingDirectory", testWorkingDirectory},
		{"Ports", testPorts},
		{"RestartSameTask", testRestart},
		{"ShutdownBeforeStart", testShutdownBeforeStart},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.fn(t, newHarness(t))
		})
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

// start makes, prepares and starts a task, removed when the test ends.
func start(t *testing.T, h Harness, spec runtime.Spec) (runtime.Controller, runtime.Task) {
	t.Helper()
	task := runtime.Task{ID: taskID(t), ServiceID: "svc", ServiceName: "conformance", Slot: 1, NodeID: "node", Spec: spec}
	c, err := h.Runtime.Controller(task)
	require.NoError(t, err)
	t.Cleanup(func() {
		rctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		assert.NoError(t, c.Remove(rctx))
	})
	require.NoError(t, c.Prepare(ctx(t)))
	require.NoError(t, c.Start(ctx(t)))
	return c, task
}

func wait(t *testing.T, c runtime.Controller) runtime.ExitStatus {
	t.Helper()
	st, err := c.Wait(ctx(t))
	require.NoError(t, err)
	return st
}

func logs(t *testing.T, c runtime.Controller, stream string) string {
	t.Helper()
	ls, ok := c.(runtime.LogStreamer)
	require.True(t, ok, "the controller streams logs")
	r, err := ls.Logs(ctx(t), runtime.LogOptions{Stream: stream})
	require.NoError(t, err)
	defer r.Close()
	b, err := io.ReadAll(r)
	require.NoError(t, err)
	return string(b)
}

func testExitZero(t *testing.T, h Harness) {
	c, _ := start(t, h, h.Spec())
	st := wait(t, c)
	assert.True(t, st.Success(), st.String())
	// Wait again: the same status.
	assert.Equal(t, st, wait(t, c))
	// Start again after exit is a no-op.
	assert.NoError(t, c.Start(ctx(t)))
}

func testExitCode(t *testing.T, h Harness) {
	c, _ := start(t, h, h.Spec("-exit", "3"))
	st := wait(t, c)
	assert.Equal(t, 3, st.Code)
	assert.Empty(t, st.Signal)
	assert.False(t, st.Success())
}

func testStopSignal(t *testing.T, h Harness) {
	spec := h.Spec("-trap", "-sleep", "1m", "-stdout", "ready")
	spec.StopGracePeriod = 30 * time.Second
	c, _ := start(t, h, spec)
	waitForLog(t, c, "ready") // printed once the handler is installed
	require.NoError(t, c.Shutdown(ctx(t)))
	st := wait(t, c)
	assert.True(t, st.Success(), "the program exits 0 on SIGTERM: %s", st)
	assert.Contains(t, logs(t, c, runtime.StreamStdout), "got SIGTERM")
}

func testKillAfterGrace(t *testing.T, h Harness) {
	spec := h.Spec("-ignore-term", "-sleep", "1m", "-stdout", "up")
	spec.StopGracePeriod = 300 * time.Millisecond
	c, _ := start(t, h, spec)
	waitForLog(t, c, "up")
	require.NoError(t, c.Shutdown(ctx(t)))
	st := wait(t, c)
	assert.Equal(t, "SIGKILL", st.Signal, st.String())
	assert.Equal(t, -1, st.Code)
	assert.Contains(t, st.Message, "grace period")
}

func testRemoveKills(t *testing.T, h Harness) {
	c, _ := start(t, h, h.Spec("-sleep", "1m"))
	require.NoError(t, c.Remove(ctx(t)))
	st := wait(t, c)
	assert.False(t, st.Success())
	assert.NoError(t, c.Remove(ctx(t)), "Remove is idempotent")
	_, err := c.(runtime.LogStreamer).Logs(ctx(t), runtime.LogOptions{})
	assert.ErrorIs(t, err, runtime.ErrAlreadyRemoved)
}

func testLogs(t *testing.T, h Harness) {
	c, _ := start(t, h, h.Spec("-stdout", "to stdout", "-stderr", "to stderr"))
	wait(t, c)
	assert.Equal(t, "to stdout\n", logs(t, c, runtime.StreamStdout))
	assert.Equal(t, "to stderr\n", logs(t, c, runtime.StreamStderr))
	both := logs(t, c, "")
	assert.Contains(t, both, "to stdout\n")
	assert.Contains(t, both, "to stderr\n")
}

func testFollowLogs(t *testing.T, h Harness) {
	spec := h.Spec("-stdout", "first", "-sleep", "500ms")
	c, _ := start(t, h, spec)
	r, err := c.(runtime.LogStreamer).Logs(ctx(t), runtime.LogOptions{Stream: runtime.StreamStdout, Follow: true})
	require.NoError(t, err)
	defer r.Close()
	b, err := io.ReadAll(r) // ends at io.EOF once the task exited
	require.NoError(t, err)
	assert.Equal(t, "first\n", string(b))
}

// waitForLog waits until stdout holds want, at most 30 seconds.
func waitForLog(t *testing.T, c runtime.Controller, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if strings.Contains(logs(t, c, runtime.StreamStdout), want) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("stdout never held %q", want)
}

func testEnvironment(t *testing.T, h Harness) {
	spec := h.Spec("-env", "CONFORMANCE_VAR")
	spec.Env = append(spec.Env, "CONFORMANCE_VAR=first", "CONFORMANCE_VAR=second")
	c, _ := start(t, h, spec)
	wait(t, c)
	assert.Equal(t, "second\n", logs(t, c, runtime.StreamStdout), "a later entry replaces an earlier one")
}

func testWorkingDirectory(t *testing.T, h Harness) {
	if h.Dir == "" {
		t.Skip("the harness gives no directory for the task")
	}
	spec := h.Spec("-pwd")
	spec.Dir = h.Dir
	c, _ := start(t, h, spec)
	wait(t, c)
	assert.Equal(t, h.Dir+"\n", logs(t, c, runtime.StreamStdout))
}

func testPorts(t *testing.T, h Harness) {
	spec := h.Spec("-listen", "8080", "-sleep", "1m")
	spec.Ports = []runtime.PortRequest{{Target: 8080}}
	c, _ := start(t, h, spec)
	waitForLog(t, c, "listening")
	rep, ok := c.(runtime.EndpointReporter)
	require.True(t, ok, "the controller reports endpoints")
	eps := rep.Endpoints()
	require.Len(t, eps, 1)
	assert.Equal(t, uint16(8080), eps[0].Target)
	addr := eps[0].Addr
	if !addr.Addr().IsValid() || addr.Addr().IsUnspecified() {
		node := h.NodeAddr
		if !node.IsValid() {
			node = netip.MustParseAddr("127.0.0.1")
		}
		addr = netip.AddrPortFrom(node, addr.Port())
	}
	conn, err := net.DialTimeout("tcp", addr.String(), 10*time.Second)
	require.NoError(t, err)
	defer conn.Close()
	line, err := bufio.NewReader(conn).ReadString('\n')
	require.NoError(t, err)
	assert.Equal(t, "hello\n", line)
}

func testRestart(t *testing.T, h Harness) {
	spec := h.Spec("-stdout", "run")
	task := runtime.Task{ID: taskID(t), ServiceID: "svc", ServiceName: "conformance", Slot: 1, NodeID: "node", Spec: spec}
	for range 2 {
		c, err := h.Runtime.Controller(task)
		require.NoError(t, err)
		require.NoError(t, c.Prepare(ctx(t)))
		require.NoError(t, c.Start(ctx(t)))
		st := wait(t, c)
		assert.True(t, st.Success(), st.String())
		require.NoError(t, c.Remove(ctx(t)))
	}
}

func testShutdownBeforeStart(t *testing.T, h Harness) {
	task := runtime.Task{ID: taskID(t), ServiceID: "svc", ServiceName: "conformance", NodeID: "node", Spec: h.Spec()}
	c, err := h.Runtime.Controller(task)
	require.NoError(t, err)
	defer func() { assert.NoError(t, c.Remove(ctx(t))) }()
	require.NoError(t, c.Prepare(ctx(t)))
	require.NoError(t, c.Shutdown(ctx(t)))
	assert.ErrorIs(t, c.Start(ctx(t)), runtime.ErrShutdown)
	_, err = c.Wait(ctx(t))
	assert.ErrorIs(t, err, runtime.ErrNotStarted)
}
