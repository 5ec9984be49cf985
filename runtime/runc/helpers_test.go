package runc_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/runtime"
	"github.com/shoalhq/shoal/runtime/conformance"
	"github.com/shoalhq/shoal/runtime/runc"
)

// needRunc skips the test unless it runs as root with runc and overlayfs.
func needRunc(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: containers are made with namespaces, cgroups and mounts")
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("needs the runc binary (Debian's runc package)")
	}
}

// testRegistry is an in-process registry holding the conformance test
// program as an image.
type testRegistry struct {
	host string // 127.0.0.1:port
	ref  string // the test program's image, by tag
}

var bridgeSeq atomic.Int32

func newRegistry(t testing.TB) *testRegistry {
	t.Helper()
	r := conformance.NewRegistry(t)
	return &testRegistry{host: r.Host, ref: r.Push(t, "shoal/testprog:1", conformance.ProgramImage(t, nil))}
}

// newRuntime makes a runc runtime on its own bridge and pool, pulling from
// the registry over plain HTTP; the bridge is torn down at the end.
func newRuntime(t testing.TB, reg *testRegistry, dir string) *runc.Runtime {
	t.Helper()
	rt, _ := newRuntimeCfg(t, reg, dir)
	return rt
}

// newRuntimeCfg is newRuntime that also returns the configuration, for a
// second runtime on the same state (a restart of the host program).
func newRuntimeCfg(t testing.TB, reg *testRegistry, dir string) (*runc.Runtime, runc.Config) {
	t.Helper()
	return newRuntimeEdit(t, reg, dir, nil)
}

// newRuntimeWith is newRuntime with edit applied to the configuration.
func newRuntimeWith(t testing.TB, reg *testRegistry, dir string, edit func(*runc.Config)) *runc.Runtime {
	t.Helper()
	rt, _ := newRuntimeEdit(t, reg, dir, edit)
	return rt
}

func newRuntimeEdit(t testing.TB, reg *testRegistry, dir string, edit func(*runc.Config)) (*runc.Runtime, runc.Config) {
	t.Helper()
	cfg := runc.DefaultConfig()
	cfg.Dir = dir
	cfg.ShimPath = smallShim(t)
	cfg.Images.InsecureRegistries = []string{reg.host}
	n := bridgeSeq.Add(1)
	cfg.Network.Bridge = fmt.Sprintf("shrt%d-%d", os.Getpid()%10000, n)
	cfg.Network.Subnet = netip.MustParsePrefix(fmt.Sprintf("10.%d.%d.0/24", 200+os.Getpid()%50, n))
	if edit != nil {
		edit(&cfg)
	}
	rt, err := runc.New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if b := rt.Bridge(); b != nil {
			_ = b.Teardown(ctx)
		}
		_ = rt.Close()
	})
	return rt, cfg
}

func specFor(reg *testRegistry) func(args ...string) runtime.Spec {
	return func(args ...string) runtime.Spec {
		return runtime.Spec{Image: reg.ref, Args: args}
	}
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func dialTimeout(addr string) (net.Conn, error) { return net.DialTimeout("tcp", addr, 10*time.Second) }

var shimBuild struct {
	sync.Once
	path string
	err  error
}

// smallShim builds cmd/shoal-runc-shim once per test binary: the shim the
// package recommends for production, and the one most tests use (the
// conformance suite and the crash test run the default, this binary
// started again, too).
func smallShim(t testing.TB) string {
	t.Helper()
	shimBuild.Do(func() {
		dir, err := os.MkdirTemp("", "shoal-runc-shim-")
		if err != nil {
			shimBuild.err = err
			return
		}
		shimBuild.path = filepath.Join(dir, "shoal-runc-shim")
		out, err := exec.Command("go", "build", "-o", shimBuild.path, "github.com/shoalhq/shoal/runtime/runc/cmd/shoal-runc-shim").CombinedOutput()
		if err != nil {
			shimBuild.err = fmt.Errorf("building the shim: %w: %s", err, out)
		}
	})
	require.NoError(t, shimBuild.err)
	return shimBuild.path
}
