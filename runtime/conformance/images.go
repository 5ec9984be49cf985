package conformance

import (
	"archive/tar"
	"bytes"
	"io"
	"log"
	"net/http/httptest"
	"os"
	goruntime "runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/stretchr/testify/require"
)

// Registry is an in-process registry (go-containerregistry's) served over
// plain HTTP on loopback for the length of a test; pulling from it needs
// Host among the insecure registries.
type Registry struct {
	// Host is the registry's "127.0.0.1:port".
	Host string
}

// NewRegistry serves a registry until the test ends.
func NewRegistry(t testing.TB) *Registry {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	return &Registry{Host: strings.TrimPrefix(srv.URL, "http://")}
}

// Push pushes img as repo:tag ("shoal/testprog:1") and returns its full
// reference.
func (r *Registry) Push(t testing.TB, repoTag string, img v1.Image) string {
	t.Helper()
	ref := r.Host + "/" + repoTag
	tag, err := name.NewTag(ref, name.Insecure)
	require.NoError(t, err)
	require.NoError(t, remote.Write(tag, img))
	return ref
}

// ProgramImage is an image of the node's platform with the test program as
// its ENTRYPOINT (/testprog), IMAGE_VAR=from-image in its environment,
// WORKDIR /work, an /etc/passwd with root and app (uid and gid 1000, also
// in group staff, 50), /tmp, and the extra files given (path without the
// leading slash → content).
func ProgramImage(t testing.TB, extra map[string]string) v1.Image {
	t.Helper()
	prog, err := os.ReadFile(Program(t))
	require.NoError(t, err)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dir := func(n string, mode int64) {
		require.NoError(t, tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: n, Mode: mode, ModTime: time.Unix(0, 0)}))
	}
	file := func(n string, mode int64, b []byte) {
		require.NoError(t, tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: mode, Size: int64(len(b)), ModTime: time.Unix(0, 0)}))
		_, err := tw.Write(b)
		require.NoError(t, err)
	}
	dir("etc/", 0o755)
	dir("work/", 0o777)
	dir("tmp/", 0o1777)
	file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"))
	file("etc/group", 0o644, []byte("root:x:0:\nstaff:x:50:app\napp:x:1000:\n"))
	file("testprog", 0o755, prog)
	for n, c := range extra {
		file(n, 0o644, []byte(c))
	}
	require.NoError(t, tw.Close())
	b := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	require.NoError(t, err)
	img, err := mutate.AppendLayers(empty.Image, layer)
	require.NoError(t, err)
	cf, err := img.ConfigFile()
	require.NoError(t, err)
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", goruntime.GOARCH
	cf.Config.Entrypoint = []string{"/testprog"}
	cf.Config.Env = []string{"PATH=/usr/bin:/bin", "IMAGE_VAR=from-image"}
	cf.Config.WorkingDir = "/work"
	img, err = mutate.ConfigFile(img, cf)
	require.NoError(t, err)
	return img
}
