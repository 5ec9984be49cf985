//go:build linux

package image

import (
	"os"
	"sort"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type fakeClock struct {
	mu sync.Mutex
	// t is the time; guarded by mu.
	t time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Unix(1_800_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// gcImages pushes three images sharing a base layer: sizes 100+10, 100+20,
// 100+40 bytes.
func gcImages(t *testing.T, reg *testRegistry) (refs []string, imgs []v1.Image) {
	base := layerOf(t, entry{name: "base", body: string(make([]byte, 100))})
	for i, n := range []int{10, 20, 40} {
		img := imageOf(t, v1.Config{}, base, layerOf(t, entry{name: "own", body: string(make([]byte, n))}))
		imgs = append(imgs, img)
		refs = append(refs, reg.push(t, "gc/"+string(rune('a'+i))+":1", img))
	}
	return refs, imgs
}

func TestGCByAge(t *testing.T) {
	reg := newRegistry(t, nil)
	refs, imgs := gcImages(t, reg)
	clock := newFakeClock()
	s := newStore(t, reg, func(c *Config) { c.Now = clock.Now; c.GC = GCPolicy{MaxUnusedAge: time.Hour} })
	for _, ref := range refs {
		_, err := s.Pull(ctxT(t), ref, noAuth)
		require.NoError(t, err)
		clock.advance(20 * time.Minute)
	}
	// Now: a pulled 60m ago, b 40m, c 20m. a's container keeps it.
	_, err := s.Mount(ctxT(t), refs[0], "keeps-a")
	require.NoError(t, err)
	clock.advance(30 * time.Minute)
	res, err := s.GC(ctxT(t))
	require.NoError(t, err)
	assert.Equal(t, []string{digestOf(t, imgs[1]).String()}, res.Images, "b is unused for 70m")
	assert.Equal(t, 1, res.Layers, "the base layer stays")
	assert.Equal(t, int64(20), res.Bytes)
	_, err = s.Get(refs[1])
	assert.ErrorIs(t, err, ErrNotFound)
	_, err = os.Stat(s.layerDir(diffIDs(t, imgs[1])[1]))
	assert.True(t, os.IsNotExist(err))

	// Once its container is gone, a ages from the Unmount.
	require.NoError(t, s.Unmount(ctxT(t), "keeps-a"))
	clock.advance(59 * time.Minute)
	res, err = s.GC(ctxT(t))
	require.NoError(t, err)
	assert.Equal(t, []string{digestOf(t, imgs[2]).String()}, res.Images)
	clock.advance(time.Minute)
	res, err = s.GC(ctxT(t))
	require.NoError(t, err)
	assert.Equal(t, []string{digestOf(t, imgs[0]).String()}, res.Images)
	assert.Equal(t, 2, res.Layers)
	assert.Equal(t, int64(110), res.Bytes)
	assert.Empty(t, s.List())
}

func TestGCByBudget(t *testing.T) {
	reg := newRegistry(t, nil)
	refs, imgs := gcImages(t, reg)
	clock := newFakeClock()
	// All three take 100+10+20+40 = 170 bytes.
	s := newStore(t, reg, func(c *Config) { c.Now = clock.Now; c.GC = GCPolicy{MaxBytes: 135} })
	for _, ref := range refs {
		_, err := s.Pull(ctxT(t), ref, noAuth)
		require.NoError(t, err)
		clock.advance(time.Minute)
	}
	_, err := s.Mount(ctxT(t), refs[0], "keeps-a")
	require.NoError(t, err)
	res, err := s.GC(ctxT(t))
	require.NoError(t, err)
	// a is the oldest but leased; b goes (150 left), then c (110).
	assert.ElementsMatch(t, []string{digestOf(t, imgs[1]).String(), digestOf(t, imgs[2]).String()}, res.Images)
	assert.Equal(t, int64(60), res.Bytes)
	got := s.List()
	require.Len(t, got, 1)
	assert.Equal(t, refs[0], got[0].Ref)
	require.NoError(t, s.Unmount(ctxT(t), "keeps-a"))
}

func TestGCKeepsUntaggedImages(t *testing.T) {
	reg := newRegistry(t, nil)
	refs, imgs := gcImages(t, reg)
	s := newStore(t, reg)
	_, err := s.Pull(ctxT(t), refs[0], noAuth)
	require.NoError(t, err)
	// A second pull of the same tag to another image leaves a's own
	// layer with no image.
	reg.push(t, "gc/a:1", imgs[1])
	_, err = s.Pull(ctxT(t), refs[0], noAuth)
	require.NoError(t, err)
	res, err := s.GC(ctxT(t))
	require.NoError(t, err)
	assert.Empty(t, res.Images, "no policy: no image goes")
	assert.Equal(t, 0, res.Layers, "the first image still has its record, untagged")
	got := s.List()
	require.Len(t, got, 2)
	assert.Equal(t, "", got[1].Ref)
}

func TestGCRemovesOrphanLayers(t *testing.T) {
	reg := newRegistry(t, nil)
	img := imageOf(t, v1.Config{}, layerOf(t, entry{name: "ok", body: "12345"}), layerOf(t, entry{name: "/abs", body: "x"}))
	ref := reg.push(t, "orphan:1", img)
	s := newStore(t, reg, func(c *Config) { c.MaxConcurrentDownloads = 1 })
	_, err := s.Pull(ctxT(t), ref, noAuth)
	require.ErrorIs(t, err, ErrUnsafeLayer)
	res, err := s.GC(ctxT(t))
	require.NoError(t, err)
	assert.Equal(t, GCResult{Layers: 1, Bytes: 5}, res, "the failed pull's good layer belongs to no image")
}

func TestLeaseSurvivesRestart(t *testing.T) {
	reg := newRegistry(t, nil)
	refs, _ := gcImages(t, reg)
	dir := t.TempDir() + "/store"
	clock := newFakeClock()
	cfg := Config{Dir: dir, InsecureRegistries: []string{reg.host}, Transport: reg.tr, Now: clock.Now, GC: GCPolicy{MaxUnusedAge: time.Minute}}
	s1, err := New(cfg)
	require.NoError(t, err)
	img, err := s1.Pull(ctxT(t), refs[0], noAuth)
	require.NoError(t, err)
	root, err := s1.Mount(ctxT(t), refs[0], "c1")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(root+"/written", []byte("kept"), 0o644))

	// A second store may not use the directory while the first does.
	s2, err := New(cfg)
	require.NoError(t, err)
	_, err = s2.GC(ctxT(t))
	require.ErrorContains(t, err, "another image store")
	require.NoError(t, s2.Close())
	require.NoError(t, s1.Close())

	s3, err := New(cfg)
	require.NoError(t, err)
	defer s3.Close()
	clock.advance(time.Hour)
	res, err := s3.GC(ctxT(t))
	require.NoError(t, err)
	assert.Empty(t, res.Images, "the lease on disk keeps the image")
	again, err := s3.Mount(ctxT(t), img.Digest, "c1")
	require.NoError(t, err)
	assert.Equal(t, root, again)
	assert.Equal(t, "kept", readFile(t, again+"/written"))
	_, err = s3.Mount(ctxT(t), refs[1], "c1")
	assert.ErrorContains(t, err, "already has a root filesystem")

	require.NoError(t, s3.Unmount(ctxT(t), "c1"))
	clock.advance(time.Hour)
	res, err = s3.GC(ctxT(t))
	require.NoError(t, err)
	assert.Equal(t, []string{img.Digest}, res.Images)
}

func TestStartRunsGC(t *testing.T) {
	reg := newRegistry(t, nil)
	refs, _ := gcImages(t, reg)
	clock := newFakeClock()
	s := newStore(t, reg, func(c *Config) {
		c.Now = clock.Now
		c.GC = GCPolicy{MaxUnusedAge: time.Hour}
		c.GCInterval = 5 * time.Millisecond
	})
	_, err := s.Pull(ctxT(t), refs[0], noAuth)
	require.NoError(t, err)
	require.NoError(t, s.Start(ctxT(t)))
	require.Error(t, s.Start(ctxT(t)), "Start runs once")
	clock.advance(2 * time.Hour)
	waitFor(t, func() bool { return len(s.List()) == 0 })
	require.NoError(t, s.Close())
	require.ErrorIs(t, s.Start(ctxT(t)), ErrClosed)
	_, err = s.Pull(ctxT(t), refs[0], noAuth)
	require.ErrorIs(t, err, ErrClosed)
}

func TestListOrder(t *testing.T) {
	reg := newRegistry(t, nil)
	refs, _ := gcImages(t, reg)
	s := newStore(t, reg)
	for i := len(refs) - 1; i >= 0; i-- {
		_, err := s.Pull(ctxT(t), refs[i], noAuth)
		require.NoError(t, err)
	}
	var got []string
	for _, img := range s.List() {
		got = append(got, img.Ref)
	}
	want := append([]string(nil), refs...)
	sort.Strings(want)
	assert.Equal(t, want, got)
}
