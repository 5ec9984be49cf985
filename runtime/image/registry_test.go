//go:build linux

package image

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/runtime"
)

func unauthorized(w http.ResponseWriter, challenge string) {
	w.Header().Set("WWW-Authenticate", challenge)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusUnauthorized)
	io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
}

// basicAuth wraps a registry so that it needs user u, password p.
func basicAuth(u, p string) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if gu, gp, ok := r.BasicAuth(); !ok || gu != u || gp != p {
				unauthorized(w, `Basic realm="test"`)
				return
			}
			h.ServeHTTP(w, r)
		})
	}
}

// tokenAuth wraps a registry with docker's token flow: /v2/ answers 401
// with a Bearer challenge naming /token, which gives token for user u,
// password p.
func tokenAuth(u, p, token string) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/token" {
				if gu, gp, ok := r.BasicAuth(); !ok || gu != u || gp != p {
					unauthorized(w, `Basic realm="token"`)
					return
				}
				json.NewEncoder(w).Encode(map[string]string{"token": token})
				return
			}
			if r.Header.Get("Authorization") != "Bearer "+token {
				unauthorized(w, fmt.Sprintf(`Bearer realm="http://%s/token",service="test"`, r.Host))
				return
			}
			h.ServeHTTP(w, r)
		})
	}
}

func TestPullAuth(t *testing.T) {
	cases := []struct {
		name string
		wrap func(http.Handler) http.Handler
		good runtime.RegistryAuth
		push remote.Option
	}{
		{"basic", basicAuth("alice", "s3cret"), runtime.RegistryAuth{Username: "alice", Password: "s3cret"}, nil},
		{"token", tokenAuth("alice", "s3cret", "tok-1"), runtime.RegistryAuth{Username: "alice", Password: "s3cret"}, nil},
		{"registry token", tokenAuth("alice", "s3cret", "tok-1"), runtime.RegistryAuth{RegistryToken: "tok-1"}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			reg := newRegistry(t, tc.wrap)
			img := testImage(t)
			ref := reg.push(t, "private/app:1", img, remote.WithAuth(authenticator(runtime.RegistryAuth{Username: "alice", Password: "s3cret"})))
			s := newStore(t, reg)

			_, err := s.Pull(ctxT(t), ref, noAuth)
			require.ErrorIs(t, err, ErrUnauthorized)
			assert.Contains(t, err.Error(), "UNAUTHORIZED")
			_, err = s.Pull(ctxT(t), ref, runtime.RegistryAuth{Username: "alice", Password: "wrong"})
			require.ErrorIs(t, err, ErrUnauthorized)
			assert.NotContains(t, err.Error(), "wrong", "the password is not in the error")

			got, err := s.Pull(ctxT(t), ref, tc.good)
			require.NoError(t, err)
			assert.Equal(t, digestOf(t, img).String(), got.Digest)

			pinned, err := s.Resolve(ctxT(t), ref, tc.good)
			require.NoError(t, err)
			assert.Equal(t, ref+"@"+got.Digest, pinned)
			_, err = s.Resolve(ctxT(t), ref, noAuth)
			assert.ErrorIs(t, err, ErrUnauthorized)
		})
	}
}

// corruptBlob wraps a registry so that GETs of blob d serve bad bytes of
// the same length while on is set.
func corruptBlob(d *v1.Hash, on *atomic.Bool) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !on.Load() || r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/blobs/"+d.String()) {
				h.ServeHTTP(w, r)
				return
			}
			rec := &captured{header: http.Header{}}
			h.ServeHTTP(rec, r)
			b := rec.body.Bytes()
			if len(b) > 20 {
				b[len(b)-20] ^= 0xff
			}
			for k, v := range rec.header {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.status)
			w.Write(b)
		})
	}
}

type captured struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (c *captured) Header() http.Header { return c.header }
func (c *captured) Write(b []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	return c.body.Write(b)
}
func (c *captured) WriteHeader(s int) { c.status = s }

func TestPullDigestMismatch(t *testing.T) {
	var bad v1.Hash
	var on atomic.Bool
	reg := newRegistry(t, corruptBlob(&bad, &on))
	img := testImage(t)
	bad = layerDigests(t, img)[1]
	ref := reg.push(t, "c/app:1", img)
	s := newStore(t, reg)

	on.Store(true)
	_, err := s.Pull(ctxT(t), ref, noAuth)
	require.ErrorIs(t, err, ErrDigestMismatch)
	assert.Contains(t, err.Error(), bad.String())
	_, err = s.Get(ref)
	assert.ErrorIs(t, err, ErrNotFound)
	// The other layers' unpacks, cancelled, clean up as they end.
	waitFor(t, func() bool {
		tmp, err := os.ReadDir(s.tmpDir())
		require.NoError(t, err)
		return len(tmp) == 0
	})
	_, err = os.Stat(s.layerDir(diffIDs(t, img)[1]))
	assert.True(t, os.IsNotExist(err))

	on.Store(false)
	reg.reset()
	got, err := s.Pull(ctxT(t), ref, noAuth)
	require.NoError(t, err)
	assert.Equal(t, diffIDs(t, img), got.Layers)
	assert.Equal(t, 1, reg.blobGets("c/app", bad), "the bad layer is fetched again")
}

func TestPullDiffIDMismatch(t *testing.T) {
	reg := newRegistry(t, nil)
	img := testImage(t)
	cf, err := img.ConfigFile()
	require.NoError(t, err)
	cf = cf.DeepCopy()
	cf.RootFS.DiffIDs[2].Hex = strings.Repeat("0", 64)
	lying, err := mutate.ConfigFile(img, cf)
	require.NoError(t, err)
	ref := reg.push(t, "lie:1", lying)
	s := newStore(t, reg)
	_, err = s.Pull(ctxT(t), ref, noAuth)
	require.ErrorIs(t, err, ErrDigestMismatch)
	assert.Contains(t, err.Error(), "uncompressed")
}

func TestPullUnsafeLayer(t *testing.T) {
	reg := newRegistry(t, nil)
	img := imageOf(t, v1.Config{}, layerOf(t, entry{name: "ok", body: "ok"}), layerOf(t, entry{name: "../escape", body: "x"}))
	ref := reg.push(t, "evil:1", img)
	s := newStore(t, reg)
	_, err := s.Pull(ctxT(t), ref, noAuth)
	require.ErrorIs(t, err, ErrUnsafeLayer)
	_, err = os.Stat(s.layerDir(diffIDs(t, img)[1]))
	assert.True(t, os.IsNotExist(err))
	_, err = os.Stat(filepath.Join(s.cfg.Dir, "tmp", "escape"))
	assert.True(t, os.IsNotExist(err))
}

// platformIndex is an index of an amd64 and an arm64/v8 image.
func platformIndex(t testing.TB) (v1.ImageIndex, v1.Image, v1.Image) {
	amd := imageOf(t, v1.Config{Cmd: []string{"amd"}}, layerOf(t, entry{name: "arch", body: "amd64"}))
	arm := imageOf(t, v1.Config{Cmd: []string{"arm"}}, layerOf(t, entry{name: "arch", body: "arm64"}))
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}}},
	)
	return idx, amd, arm
}

func TestPullPlatform(t *testing.T) {
	reg := newRegistry(t, nil)
	idx, amd, arm := platformIndex(t)
	r, err := name.ParseReference(reg.host+"/multi:1", name.Insecure)
	require.NoError(t, err)
	require.NoError(t, remote.WriteIndex(r, idx, remote.WithTransport(reg.tr)))
	idxDigest, err := idx.Digest()
	require.NoError(t, err)
	ref := reg.host + "/multi:1"

	for _, tc := range []struct {
		platform Platform
		want     v1.Image
	}{
		{Platform{OS: "linux", Architecture: "amd64"}, amd},
		{Platform{OS: "linux", Architecture: "arm64"}, arm},
		{Platform{OS: "linux", Architecture: "aarch64", Variant: "8"}, arm},
	} {
		t.Run(tc.platform.String(), func(t *testing.T) {
			s := newStore(t, reg, func(c *Config) { c.Platform = tc.platform })
			got, err := s.Pull(ctxT(t), ref, noAuth)
			require.NoError(t, err)
			assert.Equal(t, digestOf(t, tc.want).String(), got.Digest)
			byIndex, err := s.Get(idxDigest.String())
			require.NoError(t, err, "found by the index digest too")
			assert.Equal(t, got.Digest, byIndex.Digest)
			pinned, err := s.Pull(ctxT(t), ref+"@"+idxDigest.String(), noAuth)
			require.NoError(t, err)
			assert.Equal(t, got.Digest, pinned.Digest)
			assert.Equal(t, ref+"@"+idxDigest.String(), pinned.Ref)
		})
	}
	s := newStore(t, reg, func(c *Config) { c.Platform = Platform{OS: "linux", Architecture: "s390x"} })
	_, err = s.Pull(ctxT(t), ref, noAuth)
	require.ErrorIs(t, err, ErrNoPlatform)
	assert.Contains(t, err.Error(), "linux/arm64/v8")

	pinned, err := Resolve(ctxT(t), ref, noAuth, RemoteOptions{InsecureRegistries: []string{reg.host}, Transport: reg.tr})
	require.NoError(t, err)
	assert.Equal(t, ref+"@"+idxDigest.String(), pinned, "a tag of an index pins to the index")
}

func TestResolve(t *testing.T) {
	reg := newRegistry(t, nil)
	img := testImage(t)
	ref := reg.push(t, "r/app:2", img)
	opts := RemoteOptions{InsecureRegistries: []string{reg.host}, Transport: reg.tr}
	reg.reset()
	got, err := Resolve(ctxT(t), ref, noAuth, opts)
	require.NoError(t, err)
	assert.Equal(t, ref+"@"+digestOf(t, img).String(), got)
	assert.Equal(t, 1, reg.count(http.MethodHead, "/v2/r/app/manifests/2"))
	assert.Zero(t, reg.count(http.MethodGet, "/v2/r/app/manifests/2"), "Resolve needs no manifest body")

	// A reference with a digest needs no registry.
	d := digestOf(t, img).String()
	for in, want := range map[string]string{
		"nginx:1.13@" + d:                     "docker.io/library/nginx:1.13@" + d,
		"nginx@" + d:                          "docker.io/library/nginx@" + d,
		"unreachable.invalid:5000/a/b:c@" + d: "unreachable.invalid:5000/a/b:c@" + d,
	} {
		got, err := Resolve(ctxT(t), in, noAuth, RemoteOptions{})
		require.NoError(t, err, in)
		assert.Equal(t, want, got)
	}
	_, err = Resolve(ctxT(t), ref, noAuth, RemoteOptions{Transport: reg.tr})
	assert.Error(t, err, "plain HTTP needs the registry to be insecure")
	_, err = Resolve(ctxT(t), "Bad Ref", noAuth, opts)
	assert.ErrorIs(t, err, ErrInvalidReference)
	_, err = Resolve(ctxT(t), ref, noAuth, RemoteOptions{InsecureRegistries: []string{"http://x"}})
	assert.ErrorContains(t, err, "RemoteOptions.InsecureRegistries[0]")
	_, err = Resolve(ctxT(t), reg.host+"/r/app:none", noAuth, opts)
	assert.ErrorIs(t, err, ErrNotFound)
}
