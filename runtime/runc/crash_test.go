package runc_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/runtime"
	"github.com/shoalhq/shoal/runtime/runc"
)

// crashHostEnv makes this test binary a "host program" that starts the
// containers described in the variable's JSON value, prints "started" and
// waits to be killed.
const crashHostEnv = "SHOAL_RUNC_TEST_CRASH_HOST"

type crashHost struct {
	Dir, Registry, Bridge, Subnet string
	Tasks                         []runtime.Task
}

func crashHostConfig(h crashHost) runc.Config {
	cfg := runc.DefaultConfig()
	cfg.Dir = h.Dir
	cfg.Images.InsecureRegistries = []string{h.Registry}
	cfg.Network.Bridge = h.Bridge
	cfg.Network.Subnet = netip.MustParsePrefix(h.Subnet)
	return cfg
}

// crashHostMain runs in the child process.
func crashHostMain(spec string) {
	var h crashHost
	if err := json.Unmarshal([]byte(spec), &h); err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	rt, err := runc.New(crashHostConfig(h))
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	ctx := context.Background()
	for _, t := range h.Tasks {
		c, err := rt.Controller(t)
		if err == nil {
			err = c.Prepare(ctx)
		}
		if err == nil {
			err = c.Start(ctx)
		}
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
	}
	fmt.Println("started")
	select {} // until SIGKILL
}

// TestCrashedHostContainersAreRestored kills the host program (a child
// process running the runtime) with SIGKILL while its containers run, then
// restores them from a new runtime on the same directory: the one still
// running is adopted (same PID, its logs kept), the one that exited
// meanwhile reports its exit code.
func TestCrashedHostContainersAreRestored(t *testing.T) {
	needRunc(t)
	reg := newRegistry(t)
	exe, err := os.Executable()
	require.NoError(t, err)
	n := bridgeSeq.Add(1)
	h := crashHost{
		Dir: t.TempDir(), Registry: reg.host,
		Bridge: fmt.Sprintf("shcr%d-%d", os.Getpid()%10000, n),
		Subnet: fmt.Sprintf("10.%d.%d.0/24", 200+os.Getpid()%50, n),
		Tasks: []runtime.Task{
			{ID: "long", Spec: runtime.Spec{Image: reg.ref, Args: []string{"-stdout", "before the crash", "-sleep", "1m"}}},
			{ID: "short", Spec: runtime.Spec{Image: reg.ref, Args: []string{"-sleep", "1s", "-exit", "9"}}},
		},
	}
	spec, err := json.Marshal(h)
	require.NoError(t, err)
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), crashHostEnv+"="+string(spec))
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Start())
	line, err := bufio.NewReader(out).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "started\n", line, "the host program started its containers")
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	_ = cmd.Wait()
	time.Sleep(1500 * time.Millisecond) // "short" exits while no host runs

	rt, err := runc.New(crashHostConfig(h))
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = rt.Bridge().Teardown(ctx)
		_ = rt.Close()
	})
	ids, err := rt.Restorable(testCtx(t))
	require.NoError(t, err)
	assert.Equal(t, []string{"long", "short"}, ids)

	long, ok, err := rt.Restore(testCtx(t), h.Tasks[0])
	require.NoError(t, err)
	require.True(t, ok)
	pid, err := rt.ContainerPid("long")
	require.NoError(t, err)
	assert.NoError(t, syscall.Kill(pid, 0), "the container outlived its host program")
	r, err := long.(runtime.LogStreamer).Logs(testCtx(t), runtime.LogOptions{Stream: runtime.StreamStdout})
	require.NoError(t, err)
	b, _ := io.ReadAll(r)
	r.Close()
	assert.Equal(t, "before the crash\n", string(b), "the logs survive the crash")

	short, ok, err := rt.Restore(testCtx(t), h.Tasks[1])
	require.NoError(t, err)
	require.True(t, ok)
	st, err := short.Wait(testCtx(t))
	require.NoError(t, err)
	assert.Equal(t, 9, st.Code, "the exit code of the container that exited meanwhile")

	require.NoError(t, long.Shutdown(testCtx(t)))
	st, err = long.Wait(testCtx(t))
	require.NoError(t, err)
	assert.True(t, strings.Contains(st.String(), "SIGKILL") || st.Code != 0, "the restored container is stopped by its new controller: %s", st)
	require.NoError(t, long.Remove(testCtx(t)))
	require.NoError(t, short.Remove(testCtx(t)))
}
