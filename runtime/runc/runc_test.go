package runc_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/shoalhq/shoal/runtime"
	"github.com/shoalhq/shoal/runtime/conformance"
	"github.com/shoalhq/shoal/runtime/runc"
)

func TestMain(m *testing.M) {
	if spec := os.Getenv(crashHostEnv); spec != "" {
		crashHostMain(spec)
	}
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"))
}

func TestNewChecksRunc(t *testing.T) {
	cfg := runc.DefaultConfig()
	cfg.Dir = t.TempDir()
	cfg.Runc = "/nonexistent/runc"
	_, err := runc.New(cfg)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "install Debian's runc package")

	cfg.Runc = "/bin/true" // prints no version
	_, err = runc.New(cfg)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "no version")

	cfg = runc.DefaultConfig()
	_, err = runc.New(cfg)
	assert.ErrorContains(t, err, "Config.Dir")
}

func TestConformance(t *testing.T) {
	needRunc(t)
	reg := newRegistry(t)
	t.Run("SmallShim", func(t *testing.T) {
		conformance.Run(t, func(t *testing.T) conformance.Harness {
			return conformance.Harness{Runtime: newRuntime(t, reg, t.TempDir()), Spec: specFor(reg), Dir: "/tmp"}
		})
	})
	t.Run("ReexecShim", func(t *testing.T) {
		conformance.Run(t, func(t *testing.T) conformance.Harness {
			rt := newRuntimeWith(t, reg, t.TempDir(), func(cfg *runc.Config) { cfg.ShimPath = "" })
			return conformance.Harness{Runtime: rt, Spec: specFor(reg), Dir: "/tmp"}
		})
	})
}

// run starts a task of spec and returns its controller, removed at the end.
func run(t *testing.T, rt *runc.Runtime, id string, spec runtime.Spec) *runc.Controller {
	t.Helper()
	c, err := rt.Controller(runtime.Task{ID: id, ServiceName: "test", Spec: spec})
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		assert.NoError(t, c.Remove(ctx))
	})
	require.NoError(t, c.Prepare(testCtx(t)))
	require.NoError(t, c.Start(testCtx(t)))
	return c.(*runc.Controller)
}

func output(t *testing.T, c runtime.Controller) string {
	t.Helper()
	st, err := c.Wait(testCtx(t))
	require.NoError(t, err)
	r, err := c.(runtime.LogStreamer).Logs(testCtx(t), runtime.LogOptions{})
	require.NoError(t, err)
	defer r.Close()
	b, err := io.ReadAll(r)
	require.NoError(t, err)
	require.True(t, st.Success(), "%s: %s", st, b)
	return string(b)
}

func TestImageDefaultsAndUser(t *testing.T) {
	needRunc(t)
	reg := newRegistry(t)
	rt := newRuntime(t, reg, t.TempDir())
	spec := specFor(reg)
	tests := []struct {
		name string
		spec runtime.Spec
		want string
	}{
		{"image env", spec("-env", "IMAGE_VAR"), "from-image\n"},
		{"image workdir", spec("-pwd"), "/work\n"},
		{"root by default", spec("-id"), "0:0\n"},
		{"user by name", withUser(spec("-id"), "app"), "1000:1000\n"},
		{"uid:gid", withUser(spec("-id"), "1234:50"), "1234:50\n"},
		{"hostname", withHostname(spec("-cat", "/etc/hostname"), "web-1"), "web-1\n"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := run(t, rt, "img"+string(rune('a'+i)), tt.spec)
			assert.Equal(t, tt.want, output(t, c))
		})
	}
}

func withUser(s runtime.Spec, u string) runtime.Spec     { s.User = u; return s }
func withHostname(s runtime.Spec, h string) runtime.Spec { s.Hostname = h; return s }

func TestLimitsInCgroup(t *testing.T) {
	needRunc(t)
	reg := newRegistry(t)
	rt := newRuntime(t, reg, t.TempDir())
	spec := specFor(reg)("-cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
	if _, err := os.Stat("/sys/fs/cgroup/memory"); err != nil {
		spec = specFor(reg)("-cat", "/sys/fs/cgroup/memory.max") // cgroup v2
	}
	spec.Resources = runtime.Resources{MemoryBytes: 64 << 20, NanoCPUs: 5e8, Pids: 50}
	c := run(t, rt, "limits", spec)
	assert.Equal(t, "67108864", strings.TrimSpace(output(t, c)))
}

func TestMounts(t *testing.T) {
	needRunc(t)
	reg := newRegistry(t)
	dir := t.TempDir()
	rt := newRuntime(t, reg, dir)
	src := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(src, "f"), []byte("from the node"), 0o644))

	spec := specFor(reg)("-cat", "/data/f")
	spec.Mounts = []runtime.Mount{{Type: runtime.MountBind, Source: src, Target: "/data", ReadOnly: true}}
	assert.Equal(t, "from the node", output(t, run(t, rt, "bind", spec)))

	spec = specFor(reg)("-write", "/vol/f")
	spec.Mounts = []runtime.Mount{{Type: runtime.MountVolume, Source: "keep", Target: "/vol"}}
	output(t, run(t, rt, "vol1", spec))
	spec = specFor(reg)("-cat", "/vol/f")
	spec.Mounts = []runtime.Mount{{Type: runtime.MountVolume, Source: "keep", Target: "/vol"}}
	assert.Equal(t, "written", output(t, run(t, rt, "vol2", spec)), "a named volume outlives its task")

	spec = specFor(reg)("-write", "/data/g")
	spec.Mounts = []runtime.Mount{{Type: runtime.MountBind, Source: src, Target: "/data", ReadOnly: true}}
	c := run(t, rt, "bindro", spec)
	st, err := c.Wait(testCtx(t))
	require.NoError(t, err)
	assert.Equal(t, 2, st.Code, "a read-only bind mount refuses writes")

	spec = specFor(reg)("-write", "/scratch/f", "-cat", "/scratch/f")
	spec.Mounts = []runtime.Mount{{Type: runtime.MountTmpfs, Target: "/scratch", TmpfsSize: 1 << 20}}
	assert.Equal(t, "written", output(t, run(t, rt, "tmpfs", spec)))
}

func TestReadOnlyRootfs(t *testing.T) {
	needRunc(t)
	reg := newRegistry(t)
	rt := newRuntime(t, reg, t.TempDir())
	spec := specFor(reg)("-write", "/work/x")
	spec.ReadOnlyRootfs = true
	c := run(t, rt, "rofs", spec)
	st, err := c.Wait(testCtx(t))
	require.NoError(t, err)
	assert.Equal(t, 2, st.Code)
}

func TestExec(t *testing.T) {
	needRunc(t)
	reg := newRegistry(t)
	rt := newRuntime(t, reg, t.TempDir())
	c := run(t, rt, "exec", specFor(reg)("-sleep", "1m"))
	var out strings.Builder
	code, err := c.Exec(testCtx(t), runtime.ExecRequest{Command: []string{"/testprog", "-id", "-exit", "4"}, User: "app", Stdout: &out})
	require.NoError(t, err)
	assert.Equal(t, 4, code)
	assert.Equal(t, "1000:1000\n", out.String())
}

func TestPullRefusedIsInvalidTask(t *testing.T) {
	needRunc(t)
	reg := newRegistry(t)
	rt := newRuntime(t, reg, t.TempDir())
	c, err := rt.Controller(runtime.Task{ID: "missing", Spec: runtime.Spec{Image: reg.host + "/no/such:image"}})
	require.NoError(t, err)
	defer func() { assert.NoError(t, c.Remove(testCtx(t))) }()
	err = c.Prepare(testCtx(t))
	require.ErrorIs(t, err, runtime.ErrInvalidTask)
}

func TestLiveRestore(t *testing.T) {
	needRunc(t)
	reg := newRegistry(t)
	dir := t.TempDir()
	rt, cfg := newRuntimeCfg(t, reg, dir)
	spec := specFor(reg)("-listen", "8080", "-sleep", "1m")
	spec.Ports = []runtime.PortRequest{{Target: 8080}}
	long := run(t, rt, "long", spec)
	short := run(t, rt, "short", specFor(reg)("-sleep", "1s", "-exit", "7"))
	pid := long.Pid()
	require.NotZero(t, pid)
	eps := long.Endpoints()
	require.NoError(t, long.Detach())
	require.NoError(t, short.Detach())
	time.Sleep(1500 * time.Millisecond) // short exits while nobody watches

	require.NoError(t, rt.Close()) // the host program's first run ends
	rt2, err := runc.New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = rt2.Bridge().Teardown(context.Background())
		_ = rt2.Close()
	})
	ids, err := rt2.Restorable(testCtx(t))
	require.NoError(t, err)
	assert.Equal(t, []string{"long", "short"}, ids)

	c, ok, err := rt2.Restore(testCtx(t), runtime.Task{ID: "long", ServiceName: "test", Spec: spec})
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, pid, c.(*runc.Controller).Pid(), "the same container")
	assert.Equal(t, eps, c.(runtime.EndpointReporter).Endpoints())
	conn, err := dialTimeout(eps[0].Addr.String())
	require.NoError(t, err)
	line, _ := bufio.NewReader(conn).ReadString('\n')
	conn.Close()
	assert.Equal(t, "hello\n", line)

	s, ok, err := rt2.Restore(testCtx(t), runtime.Task{ID: "short", ServiceName: "test", Spec: specFor(reg)("-sleep", "1s", "-exit", "7")})
	require.NoError(t, err)
	require.True(t, ok)
	st, err := s.Wait(testCtx(t))
	require.NoError(t, err)
	assert.Equal(t, 7, st.Code, "the exit code of a container that exited meanwhile")

	require.NoError(t, c.Shutdown(testCtx(t)))
	require.NoError(t, c.Remove(testCtx(t)))
	require.NoError(t, rt2.Discard(testCtx(t), "short"))
	ids, err = rt2.Restorable(testCtx(t))
	require.NoError(t, err)
	assert.Empty(t, ids)
}

func TestInit(t *testing.T) {
	needRunc(t)
	reg := newRegistry(t)
	rt := newRuntime(t, reg, t.TempDir())
	spec := specFor(reg)("-pid", "-sleep", "1m")
	spec.Init = true
	spec.StopGracePeriod = time.Minute
	c := run(t, rt, "init", spec)
	deadline := time.Now().Add(30 * time.Second)
	var out string
	for time.Now().Before(deadline) && out == "" {
		r, err := c.Logs(testCtx(t), runtime.LogOptions{Stream: runtime.StreamStdout})
		require.NoError(t, err)
		b, _ := io.ReadAll(r)
		r.Close()
		out = strings.TrimSpace(string(b))
		time.Sleep(20 * time.Millisecond)
	}
	assert.NotEqual(t, "1", out, "the command is not PID 1: the init is")
	// The program has no SIGTERM handler; as PID 1 it would ignore the
	// signal, under the init it dies of it at once.
	require.NoError(t, c.Shutdown(testCtx(t)))
	st, err := c.Wait(testCtx(t))
	require.NoError(t, err)
	assert.Equal(t, 128+15, st.Code, st.String())
}

func TestHostNetwork(t *testing.T) {
	needRunc(t)
	reg := newRegistry(t)
	rt := newRuntime(t, reg, t.TempDir())
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(t, l.Close())
	spec := specFor(reg)("-listen", strconv.Itoa(port), "-sleep", "1m")
	spec.HostNetwork = true
	spec.Ports = []runtime.PortRequest{{Target: uint16(port)}}
	c := run(t, rt, "hostnet", spec)
	eps := c.Endpoints()
	require.Len(t, eps, 1)
	assert.True(t, eps[0].Addr.Addr().IsUnspecified(), "the node's address")
	var conn net.Conn
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if conn, err = net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	require.NoError(t, err)
	defer conn.Close()
	line, _ := bufio.NewReader(conn).ReadString('\n')
	assert.Equal(t, "hello\n", line, "the container listens in the node's network")

	_, err = rt.Controller(runtime.Task{ID: "hostnet2", Spec: runtime.Spec{Image: reg.ref, HostNetwork: true,
		Ports: []runtime.PortRequest{{Target: 80, HostPort: 8080}}}})
	require.ErrorIs(t, err, runtime.ErrInvalidTask, "a host port other than the target cannot be honoured")
}

// TestLoadedImageRunsWithoutRegistry: an image loaded from a docker save
// tarball runs although no registry has it.
func TestLoadedImageRunsWithoutRegistry(t *testing.T) {
	needRunc(t)
	reg := newRegistry(t)
	rt := newRuntime(t, reg, t.TempDir())
	tag, err := name.NewTag("127.0.0.1:1/offline/app:1")
	require.NoError(t, err)
	tarPath := filepath.Join(t.TempDir(), "app.tar")
	require.NoError(t, tarball.WriteToFile(tarPath, tag, conformance.ProgramImage(t, nil)))
	loaded, err := rt.Images().LoadTarball(testCtx(t), tarPath)
	require.NoError(t, err)
	require.Len(t, loaded, 1)
	c := run(t, rt, "offline", runtime.Spec{Image: "127.0.0.1:1/offline/app:1", Args: []string{"-stdout", "offline"}})
	assert.Equal(t, "offline\n", output(t, c))
}

// TestLogsRotated: a container's output goes to size-capped files, and a
// reader gets what the kept files hold, oldest first.
func TestLogsRotated(t *testing.T) {
	needRunc(t)
	reg := newRegistry(t)
	rt := newRuntimeWith(t, reg, t.TempDir(), func(cfg *runc.Config) { cfg.LogMaxBytes, cfg.LogMaxFiles = 64, 3 })
	line := strings.Repeat("x", 40)
	c := run(t, rt, "chatty", specFor(reg)("-stdout", line, "-stderr", line, "-cat", "/etc/passwd"))
	st, err := c.Wait(testCtx(t))
	require.NoError(t, err)
	require.True(t, st.Success())
	for i := 0; i < 3; i++ {
		p := rt.LogPath("chatty", runtime.StreamStdout)
		if i > 0 {
			p += fmt.Sprintf(".%d", i)
		}
		if fi, err := os.Stat(p); err == nil {
			assert.LessOrEqual(t, fi.Size(), int64(64), "%s is capped", p)
		}
	}
	_, err = os.Stat(rt.LogPath("chatty", runtime.StreamStdout) + ".3")
	assert.True(t, os.IsNotExist(err), "at most LogMaxFiles files")
	r, err := c.Logs(testCtx(t), runtime.LogOptions{Stream: runtime.StreamStdout})
	require.NoError(t, err)
	b, _ := io.ReadAll(r)
	r.Close()
	out := line + "\n" + "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
	assert.Equal(t, out, string(b), "the output, across the rotated files, in order")
	_, err = os.Stat(rt.LogPath("chatty", runtime.StreamStdout) + ".1")
	assert.NoError(t, err, "the output was rotated")
}
