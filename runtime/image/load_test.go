//go:build linux

package image

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestLoadLayout(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "layout")
	p, err := layout.Write(dir, empty.Index)
	require.NoError(t, err)
	named := testImage(t)
	bare := imageOf(t, v1.Config{Cmd: []string{"bare"}}, layerOf(t, entry{name: "bare", body: "b"}))
	require.NoError(t, p.AppendImage(named, layout.WithAnnotations(map[string]string{annotationRefName: "reg.example/team/app:1.0"})))
	require.NoError(t, p.AppendImage(bare, layout.WithAnnotations(map[string]string{annotationRefName: "latest"})))
	idx, _, arm := platformIndex(t)
	require.NoError(t, p.AppendIndex(idx, layout.WithAnnotations(map[string]string{annotationContainerdName: "docker.io/library/multi:2"})))

	s := newStore(t, nil, func(c *Config) { c.Platform = Platform{OS: "linux", Architecture: "arm64"} })
	got, err := s.LoadLayout(ctxT(t), dir)
	require.NoError(t, err)
	require.Len(t, got, 3)
	assert.Equal(t, "reg.example/team/app:1.0", got[0].Ref)
	assert.Equal(t, digestOf(t, named).String(), got[0].Digest)
	assert.Equal(t, diffIDs(t, named), got[0].Layers)
	assert.Equal(t, []string{"/bin/app"}, got[0].Config.Entrypoint)
	assert.Equal(t, "", got[1].Ref, "a bare tag names no repository")
	assert.Equal(t, "docker.io/library/multi:2", got[2].Ref)
	assert.Equal(t, digestOf(t, arm).String(), got[2].Digest, "the node's platform from a nested index")

	for _, q := range []string{"reg.example/team/app:1.0", digestOf(t, bare).String(), "multi:2"} {
		_, err := s.Get(q)
		assert.NoError(t, err, q)
	}
	root, err := s.Mount(ctxT(t), "reg.example/team/app:1.0", "c1")
	require.NoError(t, err)
	assert.Equal(t, "two", readFile(t, filepath.Join(root, "etc", "conf")))
	require.NoError(t, s.Unmount(ctxT(t), "c1"))
}

func TestLoadLayoutCorruptBlob(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "layout")
	p, err := layout.Write(dir, empty.Index)
	require.NoError(t, err)
	img := testImage(t)
	require.NoError(t, p.AppendImage(img))
	// Overwrite a layer blob with other bytes of the same size.
	d := layerDigests(t, img)[0]
	ls, err := img.Layers()
	require.NoError(t, err)
	size, err := ls[0].Size()
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "blobs", "sha256", d.Hex), make([]byte, size), 0o644))

	s := newStore(t, nil)
	_, err = s.LoadLayout(ctxT(t), dir)
	require.ErrorIs(t, err, ErrDigestMismatch)
	assert.Empty(t, s.List())
}

func TestLoadTarball(t *testing.T) {
	path := filepath.Join(t.TempDir(), "save.tar")
	a := testImage(t)
	b := imageOf(t, v1.Config{Cmd: []string{"b"}}, layerOf(t, entry{name: "b", body: "b"}))
	tagA1, err := name.NewTag("app:1")
	require.NoError(t, err)
	tagA2, err := name.NewTag("reg.example:5000/app:stable")
	require.NoError(t, err)
	tagB, err := name.NewTag("other:latest")
	require.NoError(t, err)
	require.NoError(t, tarball.MultiWriteToFile(path, map[name.Tag]v1.Image{tagA1: a, tagA2: a, tagB: b}))

	s := newStore(t, nil)
	got, err := s.LoadTarball(ctxT(t), path)
	require.NoError(t, err)
	require.Len(t, got, 2)
	byRef := map[string]*Image{}
	for _, img := range s.List() {
		byRef[img.Ref] = img
	}
	cfgA, err := a.ConfigName()
	require.NoError(t, err)
	require.Contains(t, byRef, "docker.io/library/app:1")
	require.Contains(t, byRef, "reg.example:5000/app:stable")
	require.Contains(t, byRef, "docker.io/library/other:latest")
	assert.Equal(t, cfgA.String(), byRef["docker.io/library/app:1"].ID)
	assert.Equal(t, cfgA.String(), byRef["docker.io/library/app:1"].Digest, "a tarball's image has its ID as digest")
	assert.Equal(t, diffIDs(t, a), byRef["reg.example:5000/app:stable"].Layers)

	// An image whose config lies about a layer is refused.
	cf, err := b.ConfigFile()
	require.NoError(t, err)
	cf = cf.DeepCopy()
	cf.RootFS.DiffIDs[0].Hex = "00" + cf.RootFS.DiffIDs[0].Hex[2:]
	lying, err := mutate.ConfigFile(b, cf)
	require.NoError(t, err)
	bad := filepath.Join(t.TempDir(), "bad.tar")
	require.NoError(t, tarball.WriteToFile(bad, tagB, lying))
	s2 := newStore(t, nil)
	_, err = s2.LoadTarball(ctxT(t), bad)
	require.ErrorIs(t, err, ErrDigestMismatch)
}
