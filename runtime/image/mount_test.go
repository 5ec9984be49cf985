//go:build linux

package image

import (
	"archive/tar"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// whiteoutImage has three layers exercising whiteouts and opaque
// directories.
func whiteoutImage(t testing.TB) v1.Image {
	return imageOf(t, v1.Config{},
		layerOf(t,
			entry{name: "a/", typ: tar.TypeDir},
			entry{name: "a/keep", body: "keep"},
			entry{name: "a/gone", body: "gone"},
			entry{name: "b/", typ: tar.TypeDir},
			entry{name: "b/old", body: "old"},
			entry{name: "b/sub/", typ: tar.TypeDir},
			entry{name: "b/sub/deep", body: "deep"},
			entry{name: "c/", typ: tar.TypeDir},
			entry{name: "c/x", body: "x"},
			entry{name: "d", body: "file d"},
			entry{name: "e/", typ: tar.TypeDir},
			entry{name: "e/lower", body: "lower"},
		),
		layerOf(t,
			entry{name: "a/.wh.gone"},
			entry{name: "b/", typ: tar.TypeDir},
			entry{name: "b/.wh..wh..opq"},
			entry{name: "b/new", body: "new"},
			entry{name: ".wh.c"},
			// A whiteout and the name again in one layer: the layer's own
			// entry stays, the lower one's content is hidden.
			entry{name: ".wh.e"},
			entry{name: "e/", typ: tar.TypeDir},
			entry{name: "e/upper", body: "upper"},
		),
		layerOf(t,
			entry{name: ".wh.d"},
			entry{name: "c/", typ: tar.TypeDir},
			entry{name: "c/again", body: "again"},
		),
	)
}

// tree lists the files under root as "path" or "path=content".
func tree(t testing.TB, root string) []string {
	t.Helper()
	var out []string
	require.NoError(t, filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		require.NoError(t, err)
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		if d.Type().IsRegular() {
			out = append(out, rel+"="+readFile(t, p))
		} else {
			out = append(out, rel)
		}
		return nil
	}))
	sort.Strings(out)
	return out
}

var wantWhiteoutTree = []string{
	"a", "a/keep=keep",
	"b", "b/new=new",
	"c", "c/again=again",
	"e", "e/upper=upper",
}

func overlayWorks(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("overlayfs mounts need root")
	}
	dir := t.TempDir()
	for _, d := range []string{"l", "u", "w", "m"} {
		require.NoError(t, os.Mkdir(filepath.Join(dir, d), 0o755))
	}
	if err := mountOverlay([]string{filepath.Join(dir, "l")}, filepath.Join(dir, "u"), filepath.Join(dir, "w"), filepath.Join(dir, "m")); err != nil {
		t.Skipf("overlayfs does not mount here: %v", err)
	}
	require.NoError(t, unix.Unmount(filepath.Join(dir, "m"), 0))
}

func TestMountOverlayWhiteouts(t *testing.T) {
	overlayWorks(t)
	reg := newRegistry(t, nil)
	ref := reg.push(t, "wh:1", whiteoutImage(t))
	s := newStore(t, reg)
	img, err := s.Pull(ctxT(t), ref, noAuth)
	require.NoError(t, err)

	root, err := s.Mount(ctxT(t), ref, "c1")
	require.NoError(t, err)
	mounted, err := isMountpoint(root)
	require.NoError(t, err)
	require.True(t, mounted, "overlay mode mounts")
	assert.Equal(t, wantWhiteoutTree, tree(t, root))

	// The layers hold overlayfs's whiteouts, not the markers.
	assert.True(t, isWhiteoutDevice(filepath.Join(s.layerFS(img.Layers[1]), "a", "gone")))
	assert.True(t, isOpaque(filepath.Join(s.layerFS(img.Layers[1]), "b")))
	assert.True(t, isOpaque(filepath.Join(s.layerFS(img.Layers[1]), "e")))

	// Writes land in the container's upper directory, not in a layer.
	require.NoError(t, os.WriteFile(filepath.Join(root, "a", "keep"), []byte("changed"), 0o644))
	assert.Equal(t, "keep", readFile(t, filepath.Join(s.layerFS(img.Layers[0]), "a", "keep")))

	// Idempotent, and mounted again once the mount vanished.
	again, err := s.Mount(ctxT(t), img.Digest, "c1")
	require.NoError(t, err)
	assert.Equal(t, root, again)
	require.NoError(t, unix.Unmount(root, 0))
	again, err = s.Mount(ctxT(t), ref, "c1")
	require.NoError(t, err)
	assert.Equal(t, root, again)
	assert.Equal(t, "changed", readFile(t, filepath.Join(root, "a", "keep")))

	require.NoError(t, s.Unmount(ctxT(t), "c1"))
	_, err = os.Lstat(s.containerDir("c1"))
	assert.True(t, errors.Is(err, fs.ErrNotExist))
	require.NoError(t, s.Unmount(ctxT(t), "c1"), "Unmount is idempotent")
	require.NoError(t, s.Unmount(ctxT(t), "never"))
}

func TestMountCopyWhiteouts(t *testing.T) {
	for _, format := range []whiteoutFormat{formatOverlay, formatMarker} {
		t.Run(string(format), func(t *testing.T) {
			if format == formatOverlay && os.Geteuid() != 0 {
				t.Skip("overlayfs's whiteouts need root")
			}
			reg := newRegistry(t, nil)
			ref := reg.push(t, "wh:1", whiteoutImage(t))
			s := newStore(t, reg, func(c *Config) { c.DisableOverlay = true })
			require.NoError(t, s.open())
			s.format = format
			img, err := s.Pull(ctxT(t), ref, noAuth)
			require.NoError(t, err)
			if format == formatMarker {
				_, err := os.Lstat(filepath.Join(s.layerFS(img.Layers[1]), "a", ".wh.gone"))
				require.NoError(t, err, "marker format keeps the marker")
			}

			root, err := s.Mount(ctxT(t), ref, "c1")
			require.NoError(t, err)
			mounted, err := isMountpoint(root)
			require.NoError(t, err)
			assert.False(t, mounted, "copy mode mounts nothing")
			assert.Equal(t, wantWhiteoutTree, tree(t, root))
			again, err := s.Mount(ctxT(t), ref, "c1")
			require.NoError(t, err)
			assert.Equal(t, root, again)
			require.NoError(t, s.Unmount(ctxT(t), "c1"))
			_, err = os.Lstat(root)
			assert.True(t, errors.Is(err, fs.ErrNotExist))
		})
	}
}

func TestMountUnknownImage(t *testing.T) {
	s := newStore(t, nil)
	_, err := s.Mount(ctxT(t), "nope:1", "c1")
	require.ErrorIs(t, err, ErrNotFound)
	_, err = s.Mount(ctxT(t), "nope:1", "../x")
	require.ErrorContains(t, err, "container id")
}

func TestMountManyLayers(t *testing.T) {
	overlayWorks(t)
	reg := newRegistry(t, nil)
	var layers []v1.Layer
	for i := range 60 {
		layers = append(layers, layerOf(t, entry{name: fmt.Sprintf("f%02d", i), body: fmt.Sprint(i)}, entry{name: "top", body: fmt.Sprint(i)}))
	}
	ref := reg.push(t, "many:1", imageOf(t, v1.Config{}, layers...))
	s := newStore(t, reg)
	img, err := s.Pull(ctxT(t), ref, noAuth)
	require.NoError(t, err)
	require.Len(t, img.Layers, 60)
	root, err := s.Mount(ctxT(t), ref, "c1")
	require.NoError(t, err)
	mounted, err := isMountpoint(root)
	require.NoError(t, err)
	require.True(t, mounted, "60 layers' paths exceed mount(2)'s page of options; the new mount API takes them")
	assert.Equal(t, "0", readFile(t, filepath.Join(root, "f00")))
	assert.Equal(t, "59", readFile(t, filepath.Join(root, "f59")))
	assert.Equal(t, "59", readFile(t, filepath.Join(root, "top")), "the topmost layer wins")
	require.NoError(t, s.Unmount(ctxT(t), "c1"))
}

func TestMountCopyKeepsMetadata(t *testing.T) {
	reg := newRegistry(t, nil)
	ref := reg.push(t, "meta:1", imageOf(t, v1.Config{},
		layerOf(t,
			entry{name: "bin/", typ: tar.TypeDir, mode: 0o750},
			entry{name: "bin/su", body: "su", mode: 0o4755},
			entry{name: "bin/link", typ: tar.TypeLink, link: "bin/su"},
			entry{name: "bin/sym", typ: tar.TypeSymlink, link: "/bin/su"},
			entry{name: "data", body: "d", uid: 1234, gid: 5678, mode: 0o640},
		),
		layerOf(t, entry{name: "more", body: "m"}),
	))
	s := newStore(t, reg, func(c *Config) { c.DisableOverlay = true })
	_, err := s.Pull(ctxT(t), ref, noAuth)
	require.NoError(t, err)
	root, err := s.Mount(ctxT(t), ref, "c1")
	require.NoError(t, err)
	var su, link, data, bin unix.Stat_t
	require.NoError(t, unix.Lstat(filepath.Join(root, "bin/su"), &su))
	require.NoError(t, unix.Lstat(filepath.Join(root, "bin/link"), &link))
	require.NoError(t, unix.Lstat(filepath.Join(root, "data"), &data))
	require.NoError(t, unix.Lstat(filepath.Join(root, "bin"), &bin))
	assert.Equal(t, uint32(0o4755), su.Mode&0o7777)
	assert.Equal(t, uint32(0o750), bin.Mode&0o7777)
	assert.Equal(t, su.Ino, link.Ino, "a hard link stays one in the copy")
	assert.Equal(t, int64(1700000000), data.Mtim.Sec)
	if os.Geteuid() == 0 {
		assert.Equal(t, uint32(1234), data.Uid)
		assert.Equal(t, uint32(5678), data.Gid)
	}
	target, err := os.Readlink(filepath.Join(root, "bin/sym"))
	require.NoError(t, err)
	assert.Equal(t, "/bin/su", target)
	require.NoError(t, s.Unmount(ctxT(t), "c1"))
}

func TestUnmountRefusesToDeleteThroughMounts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("bind mounts need root")
	}
	reg := newRegistry(t, nil)
	ref := reg.push(t, "bind:1", testImage(t))
	s := newStore(t, reg, func(c *Config) { c.DisableOverlay = true })
	_, err := s.Pull(ctxT(t), ref, noAuth)
	require.NoError(t, err)
	root, err := s.Mount(ctxT(t), ref, "c1")
	require.NoError(t, err)
	volume := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(volume, "precious"), []byte("p"), 0o644))
	require.NoError(t, os.Mkdir(filepath.Join(root, "data"), 0o755))
	require.NoError(t, unix.Mount(volume, filepath.Join(root, "data"), "", unix.MS_BIND, ""))
	t.Cleanup(func() { unix.Unmount(filepath.Join(root, "data"), unix.MNT_DETACH) })

	err = s.Unmount(ctxT(t), "c1")
	require.ErrorContains(t, err, "still mounted")
	assert.Equal(t, "p", readFile(t, filepath.Join(volume, "precious")))
	require.NoError(t, unix.Unmount(filepath.Join(root, "data"), 0))
	require.NoError(t, s.Unmount(ctxT(t), "c1"))
	assert.Equal(t, "p", readFile(t, filepath.Join(volume, "precious")))
}

func TestMountFallsBackToCopy(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("overlay mode needs root")
	}
	reg := newRegistry(t, nil)
	ref := reg.push(t, "wh:1", whiteoutImage(t))
	s := newStore(t, reg)
	for _, errno := range []error{unix.EINVAL, unix.ENODEV, unix.EPERM} {
		t.Run(errno.Error(), func(t *testing.T) {
			s.mountFn = func([]string, string, string, string) error { return errno }
			_, err := s.Pull(ctxT(t), ref, noAuth)
			require.NoError(t, err)
			root, err := s.Mount(ctxT(t), ref, "c1")
			require.NoError(t, err)
			assert.Equal(t, filepath.Join(s.containerDir("c1"), "rootfs"), root)
			assert.Equal(t, wantWhiteoutTree, tree(t, root))
			s.mu.Lock()
			assert.Equal(t, modeCopy, s.leases["c1"].Mode)
			s.mu.Unlock()
			require.NoError(t, s.Unmount(ctxT(t), "c1"))
		})
	}
	// Another failure is reported, not papered over.
	s.mountFn = func([]string, string, string, string) error { return unix.ENOSPC }
	_, err := s.Mount(ctxT(t), ref, "c2")
	require.ErrorIs(t, err, unix.ENOSPC)
	require.NoError(t, s.Unmount(ctxT(t), "c2"))
}
