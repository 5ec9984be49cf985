package main

import (
	"archive/tar"
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcr "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// webserverSource is webserver/main.go, built into the images. It is
// embedded so that the example builds it from any working directory.
//
//go:embed webserver/main.go
var webserverSource []byte

// serverPath is where the web server lives in the image, its ENTRYPOINT.
const serverPath = "/usr/local/bin/webserver"

// buildServer compiles the web server of the given version into dir and
// returns the binary's path: statically linked (CGO_ENABLED=0), since the
// image holds nothing else, for linux on this machine's architecture.
func buildServer(ctx context.Context, dir, version string) (string, error) {
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		return "", err
	}
	// A module of its own: the server needs only the standard library.
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte("module webserver\n\ngo 1.26\n"), 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(src, "main.go"), webserverSource, 0o644); err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "webserver-"+version)
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-X main.version="+version, "-o", bin, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goruntime.GOARCH, "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build of the web server (version %s): %w\n%s", version, err, out)
	}
	return bin, nil
}

// serverImage packs the web server binary into an image of one layer, as
// this Dockerfile would:
//
//	FROM scratch
//	COPY webserver /usr/local/bin/webserver
//	EXPOSE 8080
//	LABEL org.opencontainers.image.version=<version>
//	ENTRYPOINT ["/usr/local/bin/webserver"]
func serverImage(bin, version string) (v1.Image, error) {
	prog, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	for _, dir := range []string{"usr/", "usr/local/", "usr/local/bin/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: epoch}); err != nil {
			return nil, err
		}
	}
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(serverPath, "/"), Mode: 0o755, Size: int64(len(prog)), ModTime: epoch}
	if err := tw.WriteHeader(hdr); err != nil {
		return nil, err
	}
	if _, err := tw.Write(prog); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	layerTar := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", goruntime.GOARCH
	cf.Config.Entrypoint = []string{serverPath}
	cf.Config.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin"}
	cf.Config.ExposedPorts = map[string]struct{}{fmt.Sprintf("%d/tcp", targetPort): {}}
	cf.Config.Labels = map[string]string{"org.opencontainers.image.version": version}
	return mutate.ConfigFile(img, cf)
}

// registry is go-containerregistry's registry, in this process, over plain
// HTTP on a free port of 127.0.0.1: the nodes pull from it, so it is among
// their insecure registries.
type registry struct {
	// Host is "127.0.0.1:port".
	Host string
	srv  *http.Server
	done chan error // Serve's return
}

func startRegistry() (*registry, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &registry{
		Host: lis.Addr().String(),
		srv: &http.Server{
			Handler:           ggcr.New(ggcr.Logger(log.New(io.Discard, "", 0))),
			ReadHeaderTimeout: 10 * time.Second,
		},
		done: make(chan error, 1),
	}
	go func() { r.done <- r.srv.Serve(lis) }()
	return r, nil
}

// Push stores img as repo:tag and returns its reference and digest.
func (r *registry) Push(ctx context.Context, repoTag string, img v1.Image) (ref string, digest v1.Hash, err error) {
	ref = r.Host + "/" + repoTag
	tag, err := name.NewTag(ref, name.Insecure)
	if err != nil {
		return "", v1.Hash{}, err
	}
	if err := remote.Write(tag, img, remote.WithContext(ctx)); err != nil {
		return "", v1.Hash{}, fmt.Errorf("push %s: %w", ref, err)
	}
	digest, err = img.Digest()
	return ref, digest, err
}

// Close stops the registry and waits for its server to end.
func (r *registry) Close() error {
	err := r.srv.Close()
	if serr := <-r.done; !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	return err
}
