//go:build linux

package image_test

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/shoalhq/shoal/runtime"
	"github.com/shoalhq/shoal/runtime/image"
)

// pushHello pushes a one-layer image with /etc/passwd and /greeting to the
// registry at host, as a stand-in for a real image.
func pushHello(host string, tr http.RoundTripper) error {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, body := range map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
		"greeting":   "hello\n",
	} {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg})
		io.WriteString(tw, body)
	}
	tw.Close()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	if img, err = mutate.Config(img, v1.Config{Cmd: []string{"/bin/hello"}, User: "app"}); err != nil {
		return err
	}
	ref, err := name.ParseReference(host+"/hello:1", name.Insecure)
	if err != nil {
		return err
	}
	return remote.Write(ref, img, remote.WithTransport(tr))
}

// A node pulls an image, gives a container a root filesystem of it, finds
// the image's user in it, and removes it when the container is gone.
func Example() {
	// An in-process registry on loopback stands in for a real one.
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	host := strings.TrimPrefix(srv.URL, "http://")
	if err := pushHello(host, tr); err != nil {
		log.Fatal(err)
	}

	dir, err := os.MkdirTemp("", "images")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	cfg := image.DefaultConfig()
	cfg.Dir = filepath.Join(dir, "store")
	cfg.InsecureRegistries = []string{host}
	cfg.Transport = tr
	s, err := image.New(cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()

	ctx := context.Background()
	img, err := s.Pull(ctx, host+"/hello:1", runtime.RegistryAuth{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(strings.TrimPrefix(img.Ref, host), img.Config.Cmd, len(img.Layers), "layer")

	rootfs, err := s.Mount(ctx, img.Digest, "container-1")
	if err != nil {
		log.Fatal(err)
	}
	greeting, err := os.ReadFile(filepath.Join(rootfs, "greeting"))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(string(greeting))
	u, err := image.LookupUser(rootfs, img.Config.User)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("runs as", u.UID, u.GID, u.Home)

	if err := s.Unmount(ctx, "container-1"); err != nil {
		log.Fatal(err)
	}
	// Output:
	// /hello:1 [/bin/hello] 1 layer
	// hello
	// runs as 1000 1000 /home/app
}

// Resolve pins a reference; one that has a digest already needs no
// registry.
func ExampleResolve() {
	pinned, err := image.Resolve(context.Background(),
		"nginx:1.25@sha256:0000000000000000000000000000000000000000000000000000000000000000",
		runtime.RegistryAuth{}, image.RemoteOptions{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(pinned)
	// Output: docker.io/library/nginx:1.25@sha256:0000000000000000000000000000000000000000000000000000000000000000
}

// LookupUser reads the rootfs's /etc/passwd and /etc/group as docker does.
func ExampleLookupUser() {
	rootfs, err := os.MkdirTemp("", "rootfs")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(rootfs)
	os.Mkdir(filepath.Join(rootfs, "etc"), 0o755)
	os.WriteFile(filepath.Join(rootfs, "etc", "passwd"), []byte("www:x:33:33::/var/www:/bin/false\n"), 0o644)
	os.WriteFile(filepath.Join(rootfs, "etc", "group"), []byte("www:x:33:\nlogs:x:4:www\n"), 0o644)

	for _, spec := range []string{"www", "www:logs", "5000"} {
		u, err := image.LookupUser(rootfs, spec)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s: uid %d gid %d groups %v home %s\n", spec, u.UID, u.GID, u.AdditionalGIDs, u.Home)
	}
	_, err = image.LookupUser(rootfs, "nobody")
	fmt.Println(err)
	// Output:
	// www: uid 33 gid 33 groups [4] home /var/www
	// www:logs: uid 33 gid 4 groups [] home /var/www
	// 5000: uid 5000 gid 0 groups [] home /
	// image: user "nobody": unable to find user nobody: no matching entries in passwd file
}

// GC removes the images no container uses for longer than the policy
// allows; Start runs it every GCInterval.
func ExampleStore_GC() {
	dir, err := os.MkdirTemp("", "images")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	cfg := image.DefaultConfig()
	cfg.Dir = filepath.Join(dir, "store")
	cfg.GC = image.GCPolicy{MaxUnusedAge: time.Hour, MaxBytes: 10 << 30}
	s, err := image.New(cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	res, err := s.GC(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(res.Images), "images,", res.Layers, "layers removed")
	// Output: 0 images, 0 layers removed
}
