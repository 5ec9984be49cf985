//go:build linux

package image

import (
	"archive/tar"
	"bytes"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// sandbox returns a directory d and the unpack root d/a/b/c/root, deep
// enough that a few "../" of an escape land inside d where the test sees
// them.
func sandbox(t testing.TB) (string, string) {
	d := t.TempDir()
	root := filepath.Join(d, "a", "b", "c", "root")
	require.NoError(t, os.MkdirAll(filepath.Dir(root), 0o755))
	return d, root
}

// escaped lists what is in d outside the unpack root.
func escaped(t testing.TB, d string) []string {
	var out []string
	require.NoError(t, filepath.WalkDir(d, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(d, p)
		switch rel {
		case ".", "a", "a/b", "a/b/c":
			return nil
		case "a/b/c/root":
			return filepath.SkipDir
		}
		out = append(out, rel)
		return nil
	}))
	return out
}

func unpackInto(root string, format whiteoutFormat, data []byte) (*unpacker, error) {
	u := newUnpacker(root, format, slog.New(slog.DiscardHandler))
	return u, u.unpack(bytes.NewReader(data))
}

func TestUnpackRefusesUnsafeEntries(t *testing.T) {
	outside := filepath.Join(t.TempDir(), "outside")
	require.NoError(t, os.WriteFile(outside, []byte("host"), 0o644))
	cases := []struct {
		name    string
		entries []entry
	}{
		{"dot-dot", []entry{{name: "../x", body: "x"}}},
		{"deep dot-dot", []entry{{name: "a/../../../x", body: "x"}}},
		{"absolute", []entry{{name: "/abs", body: "x"}}},
		{"absolute host path", []entry{{name: outside, body: "overwritten"}}},
		{"hard link out", []entry{{name: "l", typ: tar.TypeLink, link: "../../outside"}}},
		{"hard link absolute", []entry{{name: "l", typ: tar.TypeLink, link: outside}}},
		{"hard link to a missing entry", []entry{{name: "l", typ: tar.TypeLink, link: "missing"}}},
		{"hard link through a symlink", []entry{
			{name: "s", typ: tar.TypeSymlink, link: filepath.Dir(outside)},
			{name: "l", typ: tar.TypeLink, link: "s/outside"},
		}},
		{"file through a symlinked dir", []entry{
			{name: "s", typ: tar.TypeSymlink, link: filepath.Dir(outside)},
			{name: "s/outside", body: "overwritten"},
		}},
		{"file through a relative symlink", []entry{
			{name: "d/", typ: tar.TypeDir},
			{name: "s", typ: tar.TypeSymlink, link: "d"},
			{name: "s/x", body: "x"},
		}},
		{"whiteout of the parent", []entry{{name: "a/.wh...", body: ""}}},
		{"file under a file", []entry{{name: "f", body: "f"}, {name: "f/x", body: "x"}}},
		{"root as a file", []entry{{name: ".", body: "x"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, format := range []whiteoutFormat{formatMarker, formatOverlay} {
				if format == formatOverlay && os.Geteuid() != 0 {
					continue
				}
				d, root := sandbox(t)
				_, err := unpackInto(root, format, tarBytes(t, tc.entries...))
				require.ErrorIs(t, err, ErrUnsafeLayer)
				assert.Empty(t, escaped(t, d))
				assert.Equal(t, "host", readFile(t, outside))
			}
		})
	}
}

func TestUnpackEntries(t *testing.T) {
	mtime := time.Unix(1700000000, 0)
	d, root := sandbox(t)
	u, err := unpackInto(root, formatMarker, tarBytes(t,
		entry{name: "./", typ: tar.TypeDir, mode: 0o755},
		entry{name: "bin/", typ: tar.TypeDir, mode: 0o711},
		entry{name: "bin/su", body: "su", mode: 0o4755, uid: 0, gid: 0},
		entry{name: "bin/tool", body: "tool", mode: 0o2750, uid: 1000, gid: 1001, xattrs: map[string]string{"user.k": "v"}},
		entry{name: "bin/hard", typ: tar.TypeLink, link: "bin/tool"},
		entry{name: "abs", typ: tar.TypeSymlink, link: "/etc/passwd"},
		entry{name: "rel", typ: tar.TypeSymlink, link: "../../../../outside"},
		entry{name: "implicit/dir/file", body: "f"},
		entry{name: "./a/../dotted", body: "d"},
		entry{name: "replaced", body: "file"},
		entry{name: "replaced/", typ: tar.TypeDir},
		entry{name: "replaced/in", body: "in"},
		entry{name: "dir-then-file/", typ: tar.TypeDir},
		entry{name: "dir-then-file/x", body: "x"},
		entry{name: "dir-then-file", body: "now a file"},
		entry{name: "fifo", typ: tar.TypeFifo, mode: 0o600},
		entry{name: "dev/", typ: tar.TypeDir},
		entry{name: "dev/null", typ: tar.TypeChar, mode: 0o666, major: 1, minor: 3},
		entry{name: "bin/tool", typ: tar.TypeLink, link: "bin/tool"},
	))
	require.NoError(t, err)
	assert.Empty(t, escaped(t, d))
	assert.Equal(t, int64(len("su")+len("tool")+len("f")+len("d")+len("file")+len("in")+len("x")+len("now a file")), u.size)

	st := func(p string) unix.Stat_t {
		var s unix.Stat_t
		require.NoError(t, unix.Lstat(filepath.Join(root, p), &s), p)
		return s
	}
	assert.Equal(t, uint32(0o4755), st("bin/su").Mode&0o7777, "setuid kept")
	assert.Equal(t, uint32(0o711), st("bin").Mode&0o7777)
	assert.Equal(t, mtime.Unix(), st("bin/tool").Mtim.Sec)
	assert.Equal(t, mtime.Unix(), st("bin").Mtim.Sec, "directory times are set after their children")
	if os.Geteuid() == 0 {
		assert.Equal(t, uint32(0o2750), st("bin/tool").Mode&0o7777, "setgid kept after chown")
		assert.Equal(t, uint32(1000), st("bin/tool").Uid)
		assert.Equal(t, uint32(1001), st("bin/tool").Gid)
		assert.Equal(t, uint32(unix.S_IFCHR), st("dev/null").Mode&unix.S_IFMT)
		assert.Equal(t, unix.Mkdev(1, 3), st("dev/null").Rdev)
	}
	assert.Equal(t, st("bin/tool").Ino, st("bin/hard").Ino, "hard link")
	assert.Equal(t, uint32(unix.S_IFIFO), st("fifo").Mode&unix.S_IFMT)
	if v, err := getXattr(filepath.Join(root, "bin/tool"), "user.k"); err == nil {
		assert.Equal(t, "v", string(v))
	}
	for link, target := range map[string]string{"abs": "/etc/passwd", "rel": "../../../../outside"} {
		got, err := os.Readlink(filepath.Join(root, link))
		require.NoError(t, err)
		assert.Equal(t, target, got, "symlinks are made as they are")
	}
	assert.Equal(t, "f", readFile(t, filepath.Join(root, "implicit/dir/file")))
	assert.Equal(t, "d", readFile(t, filepath.Join(root, "dotted")))
	assert.Equal(t, "in", readFile(t, filepath.Join(root, "replaced/in")))
	assert.Equal(t, "now a file", readFile(t, filepath.Join(root, "dir-then-file")))
}

func TestUnpackDropsOverlayXattrs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("trusted.* xattrs need root")
	}
	_, root := sandbox(t)
	_, err := unpackInto(root, formatOverlay, tarBytes(t,
		entry{name: "d/", typ: tar.TypeDir, xattrs: map[string]string{"trusted.overlay.opaque": "y", "trusted.overlay.redirect": "/etc"}},
	))
	require.NoError(t, err)
	assert.False(t, isOpaque(filepath.Join(root, "d")))
	names, err := listXattrs(filepath.Join(root, "d"))
	require.NoError(t, err)
	for _, n := range names {
		assert.False(t, strings.HasPrefix(n, "trusted.overlay."), n)
	}
}

func TestUnpackWhiteoutFormats(t *testing.T) {
	layer := tarBytes(t,
		entry{name: "a/", typ: tar.TypeDir},
		entry{name: "a/.wh.x"},
		entry{name: "b/.wh..wh..opq"},
		entry{name: "b/y", body: "y"},
		entry{name: ".wh.c"},
		entry{name: "c/z", body: "z"},
		entry{name: ".wh..wh.plnk"},
	)
	t.Run("marker", func(t *testing.T) {
		_, root := sandbox(t)
		_, err := unpackInto(root, formatMarker, layer)
		require.NoError(t, err)
		for _, p := range []string{"a/.wh.x", "b/.wh..wh..opq", ".wh.c", "c/z"} {
			_, err := os.Lstat(filepath.Join(root, p))
			assert.NoError(t, err, p)
		}
	})
	t.Run("overlay", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("overlayfs whiteouts need root")
		}
		_, root := sandbox(t)
		_, err := unpackInto(root, formatOverlay, layer)
		require.NoError(t, err)
		assert.True(t, isWhiteoutDevice(filepath.Join(root, "a/x")))
		assert.True(t, isOpaque(filepath.Join(root, "b")))
		assert.True(t, isOpaque(filepath.Join(root, "c")), "a whited-out name made again is an opaque directory")
		assert.Equal(t, "z", readFile(t, filepath.Join(root, "c/z")))
		for _, p := range []string{"a/.wh.x", "b/.wh..wh..opq", ".wh.c", ".wh..wh.plnk"} {
			_, err := os.Lstat(filepath.Join(root, p))
			assert.ErrorIs(t, err, fs.ErrNotExist, p)
		}
	})
}

func TestUnpackBadTar(t *testing.T) {
	_, root := sandbox(t)
	data := tarBytes(t, entry{name: "f", body: strings.Repeat("x", 2000)})
	_, err := unpackInto(root, formatMarker, data[:1000])
	require.Error(t, err)
	assert.ErrorIs(t, err, io.ErrUnexpectedEOF)
}

func FuzzUnpack(f *testing.F) {
	f.Add(tarBytes(f, entry{name: "a/b", body: "x"}, entry{name: "a/l", typ: tar.TypeLink, link: "a/b"}))
	f.Add(tarBytes(f, entry{name: "../x", body: "x"}))
	f.Add(tarBytes(f, entry{name: "/abs", body: "x"}))
	f.Add(tarBytes(f, entry{name: "s", typ: tar.TypeSymlink, link: ".."}, entry{name: "s/x", body: "x"}))
	f.Add(tarBytes(f, entry{name: "l", typ: tar.TypeLink, link: "../../x"}))
	f.Add(tarBytes(f, entry{name: "d/", typ: tar.TypeDir}, entry{name: "d/.wh.x"}, entry{name: "d/.wh..wh..opq"}, entry{name: ".wh.d"}))
	f.Add([]byte("not a tar"))
	f.Fuzz(func(t *testing.T, data []byte) {
		// The absolute names the tar holds must not appear on the host.
		var absolute []string
		tr := tar.NewReader(bytes.NewReader(data))
		for {
			hdr, err := tr.Next()
			if err != nil {
				break
			}
			for _, n := range []string{hdr.Name, hdr.Linkname} {
				if filepath.IsAbs(n) {
					if _, err := os.Lstat(n); err != nil {
						absolute = append(absolute, n)
					}
				}
			}
		}
		for _, format := range []whiteoutFormat{formatMarker, formatOverlay} {
			if format == formatOverlay && os.Geteuid() != 0 {
				continue
			}
			d, root := sandbox(t)
			u := newUnpacker(root, format, slog.New(slog.DiscardHandler))
			u.devices = false
			_ = u.unpack(bytes.NewReader(data))
			assert.Empty(t, escaped(t, d))
			for _, n := range absolute {
				_, err := os.Lstat(n)
				assert.ErrorIs(t, err, fs.ErrNotExist, n)
			}
		}
	})
}
