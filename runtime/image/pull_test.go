//go:build linux

package image

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func testImage(t testing.TB) v1.Image {
	return imageOf(t, v1.Config{
		Entrypoint:   []string{"/bin/app"},
		Cmd:          []string{"--serve"},
		Env:          []string{"PATH=/bin", "A=b"},
		WorkingDir:   "/srv",
		User:         "app",
		StopSignal:   "SIGQUIT",
		ExposedPorts: map[string]struct{}{"80/tcp": {}, "53/udp": {}},
		Labels:       map[string]string{"l": "v"},
		Volumes:      map[string]struct{}{"/data": {}},
		Healthcheck:  &v1.HealthConfig{Test: []string{"CMD", "true"}, Interval: time.Second, Retries: 3},
	},
		layerOf(t, entry{name: "bin/", typ: '5'}, entry{name: "bin/app", body: "app", mode: 0o755}),
		layerOf(t, entry{name: "etc/", typ: '5'}, entry{name: "etc/conf", body: "one"}),
		layerOf(t, entry{name: "etc/conf", body: "two"}, entry{name: "srv/", typ: '5'}),
	)
}

func TestPullMultiLayer(t *testing.T) {
	reg := newRegistry(t, nil)
	img := testImage(t)
	ref := reg.push(t, "team/app:1.0", img)
	s := newStore(t, reg)

	got, err := s.Pull(ctxT(t), ref, noAuth)
	require.NoError(t, err)
	assert.Equal(t, reg.host+"/team/app:1.0", got.Ref)
	assert.Equal(t, digestOf(t, img).String(), got.Digest)
	cfgName, err := img.ConfigName()
	require.NoError(t, err)
	assert.Equal(t, cfgName.String(), got.ID)
	assert.Equal(t, diffIDs(t, img), got.Layers)
	assert.Equal(t, int64(len("app")+len("one")+len("two")), got.Size)
	assert.Equal(t, ImageConfig{
		Entrypoint:   []string{"/bin/app"},
		Cmd:          []string{"--serve"},
		Env:          []string{"PATH=/bin", "A=b"},
		WorkingDir:   "/srv",
		User:         "app",
		StopSignal:   "SIGQUIT",
		ExposedPorts: []string{"53/udp", "80/tcp"},
		Labels:       map[string]string{"l": "v"},
		Volumes:      []string{"/data"},
		Healthcheck:  &Healthcheck{Test: []string{"CMD", "true"}, Interval: time.Second, Retries: 3},
	}, got.Config)

	for _, q := range []string{ref, got.Digest, got.ID, reg.host + "/team/app@" + got.Digest} {
		byQ, err := s.Get(q)
		require.NoError(t, err, q)
		assert.Equal(t, got.Digest, byQ.Digest, q)
	}
	_, err = s.Get(reg.host + "/team/app:2.0")
	assert.ErrorIs(t, err, ErrNotFound)
	assert.Len(t, s.List(), 1)

	// A second pull fetches the manifest again but no blob.
	reg.reset()
	_, err = s.Pull(ctxT(t), ref, noAuth)
	require.NoError(t, err)
	for _, d := range layerDigests(t, img) {
		assert.Zero(t, reg.blobGets("team/app", d))
	}
}

func TestPullNotFound(t *testing.T) {
	reg := newRegistry(t, nil)
	s := newStore(t, reg)
	_, err := s.Pull(ctxT(t), reg.host+"/nope:1", noAuth)
	require.ErrorIs(t, err, ErrNotFound)
	assert.Contains(t, err.Error(), "NAME_UNKNOWN")
	reg.push(t, "yes:1", testImage(t))
	_, err = s.Pull(ctxT(t), reg.host+"/yes:2", noAuth)
	require.ErrorIs(t, err, ErrNotFound)
	assert.Contains(t, err.Error(), "MANIFEST_UNKNOWN")
}

func TestPullRefusesPlainHTTPUnlessInsecure(t *testing.T) {
	reg := newRegistry(t, nil)
	ref := reg.push(t, "a:1", testImage(t))
	s := newStore(t, reg, func(c *Config) { c.InsecureRegistries = nil })
	_, err := s.Pull(ctxT(t), ref, noAuth)
	require.Error(t, err)
	assert.Zero(t, reg.count(http.MethodGet, "/v2/a/manifests/1"))
}

func TestPullSharedDownload(t *testing.T) {
	var mu sync.Mutex
	gate := make(chan struct{})
	closed := false
	reg := newRegistry(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			g := gate
			mu.Unlock()
			if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/manifests/") {
				select {
				case <-g:
				case <-r.Context().Done():
					return
				}
			}
			h.ServeHTTP(w, r)
		})
	})
	release := func() {
		mu.Lock()
		defer mu.Unlock()
		if !closed {
			close(gate)
			closed = true
		}
	}
	img := testImage(t)
	release()
	ref := reg.push(t, "shared/app:1", img)
	mu.Lock()
	gate, closed = make(chan struct{}), false
	mu.Unlock()
	reg.reset()

	s := newStore(t, reg)
	const n = 8
	key := reg.host + "/shared/app:1\x00" + authKey(noAuth)
	var wg sync.WaitGroup
	errs := make([]error, n)
	cancelled, cancel := context.WithCancel(ctxT(t))
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := ctxT(t)
			if i == 0 {
				ctx = cancelled
			}
			_, errs[i] = s.Pull(ctx, ref, noAuth)
		}()
	}
	waitFor(t, func() bool { return s.pulls.waiting(key) == n })
	// One caller gives up; the others keep the download going.
	cancel()
	waitFor(t, func() bool { return s.pulls.waiting(key) == n-1 })
	release()
	wg.Wait()
	assert.ErrorIs(t, errs[0], context.Canceled)
	for _, err := range errs[1:] {
		assert.NoError(t, err)
	}
	assert.Equal(t, 1, reg.count(http.MethodGet, "/v2/shared/app/manifests/1"))
	for _, d := range layerDigests(t, img) {
		assert.Equal(t, 1, reg.blobGets("shared/app", d), d.String())
	}
}

func TestPullAllCallersGone(t *testing.T) {
	started := make(chan struct{}, 1)
	reg := newRegistry(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/manifests/") && r.URL.Path != "/v2/" {
				select {
				case started <- struct{}{}:
				default:
				}
				<-r.Context().Done()
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	s := newStore(t, reg)
	ctx, cancel := context.WithCancel(ctxT(t))
	done := make(chan error, 1)
	go func() {
		_, err := s.Pull(ctx, reg.host+"/hang:1", noAuth)
		done <- err
	}()
	<-started
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
	// The download itself ends too: Close does not wait for ever.
	require.NoError(t, s.Close())
}

func TestPullLayerPresentNotFetched(t *testing.T) {
	reg := newRegistry(t, nil)
	base := layerOf(t, entry{name: "base", body: "shared"})
	a := imageOf(t, v1.Config{}, base, layerOf(t, entry{name: "a", body: "a"}))
	b := imageOf(t, v1.Config{}, base, layerOf(t, entry{name: "b", body: "b"}))
	refA := reg.push(t, "x/a:1", a)
	refB := reg.push(t, "x/b:1", b)
	s := newStore(t, reg)
	_, err := s.Pull(ctxT(t), refA, noAuth)
	require.NoError(t, err)
	reg.reset()
	_, err = s.Pull(ctxT(t), refB, noAuth)
	require.NoError(t, err)
	ds := layerDigests(t, b)
	assert.Zero(t, reg.blobGets("x/b", ds[0]), "the shared layer is in the store already")
	assert.Equal(t, 1, reg.blobGets("x/b", ds[1]))
}

// waitFor polls cond for up to 10 seconds.
func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestPullPinnedPresentNeedsNoRegistry(t *testing.T) {
	reg := newRegistry(t, nil)
	img := testImage(t)
	ref := reg.push(t, "pin/app:1", img)
	s := newStore(t, reg)
	_, err := s.Pull(ctxT(t), ref, noAuth)
	require.NoError(t, err)
	reg.reset()
	pinned := ref + "@" + digestOf(t, img).String()
	got, err := s.Pull(ctxT(t), pinned, noAuth)
	require.NoError(t, err)
	assert.Equal(t, pinned, got.Ref)
	assert.Equal(t, digestOf(t, img).String(), got.Digest)
	reg.mu.Lock()
	assert.Empty(t, reg.counts, "the registry is not asked for content named by digest")
	reg.mu.Unlock()
	byPinned, err := s.Get(pinned)
	require.NoError(t, err)
	assert.Equal(t, pinned, byPinned.Ref)
	// The same digest under another repository is that repository's to
	// give.
	_, err = s.Pull(ctxT(t), reg.host+"/other/app@"+digestOf(t, img).String(), noAuth)
	require.ErrorIs(t, err, ErrNotFound)
	// A tag is always asked for: it may have moved.
	_, err = s.Pull(ctxT(t), ref, noAuth)
	require.NoError(t, err)
	assert.Equal(t, 1, reg.count(http.MethodGet, "/v2/pin/app/manifests/1"))
}
