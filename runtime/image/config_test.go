//go:build linux

package image

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestConfigValidation(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "store")
	cases := []struct {
		name string
		mod  func(*Config)
		err  string
	}{
		{"valid", func(*Config) {}, ""},
		{"no dir", func(c *Config) { c.Dir = "" }, "Config.Dir: required"},
		{"relative dir", func(c *Config) { c.Dir = "rel/store" }, "Config.Dir: must be an absolute path"},
		{"dir with a colon", func(c *Config) { c.Dir = "/var/lib/a:b" }, "Config.Dir: must not contain"},
		{"dir with a comma", func(c *Config) { c.Dir = "/var/lib/a,b" }, "Config.Dir: must not contain"},
		{"platform without arch", func(c *Config) { c.Platform = Platform{OS: "linux"} }, "Config.Platform: OS and Architecture"},
		{"platform with a slash", func(c *Config) { c.Platform = Platform{OS: "linux", Architecture: "arm/v7"} }, "Config.Platform: must be names"},
		{"insecure with a scheme", func(c *Config) { c.InsecureRegistries = []string{"ok:5000", "http://x"} }, "Config.InsecureRegistries[1]"},
		{"insecure with a path", func(c *Config) { c.InsecureRegistries = []string{"x/y"} }, "Config.InsecureRegistries[0]"},
		{"insecure empty", func(c *Config) { c.InsecureRegistries = []string{""} }, "Config.InsecureRegistries[0]"},
		{"negative age", func(c *Config) { c.GC.MaxUnusedAge = -time.Second }, "Config.GC.MaxUnusedAge"},
		{"negative budget", func(c *Config) { c.GC.MaxBytes = -1 }, "Config.GC.MaxBytes"},
		{"negative interval", func(c *Config) { c.GCInterval = -1 }, "Config.GCInterval"},
		{"negative downloads", func(c *Config) { c.MaxConcurrentDownloads = -1 }, "Config.MaxConcurrentDownloads"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Dir = dir
			cfg.Now = nil // funcs do not compare
			cfg.InsecureRegistries = []string{"127.0.0.1:5000", "localhost:5000", "[::1]:5000"}
			tc.mod(&cfg)
			before := cfg
			s, err := New(cfg)
			assert.Equal(t, before, cfg, "New leaves the caller's Config alone")
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			require.NoError(t, s.Close())
			_, err = os.Stat(dir)
			assert.True(t, os.IsNotExist(err), "New creates nothing")
		})
	}
}

func TestDefaultConfig(t *testing.T) {
	c := DefaultConfig()
	assert.Equal(t, DefaultPlatform(), c.Platform)
	assert.Equal(t, DefaultGCInterval, c.GCInterval)
	assert.Equal(t, DefaultMaxUnusedAge, c.GC.MaxUnusedAge)
	assert.Equal(t, DefaultMaxConcurrentDownloads, c.MaxConcurrentDownloads)
	assert.NotNil(t, c.Now)
	assert.NotNil(t, c.Transport)
	assert.Empty(t, c.Dir, "the node chooses Dir")
}

func TestParseReference(t *testing.T) {
	d := "sha256:" + strings.Repeat("ab", 32)
	cases := []struct {
		in, want, remote string
	}{
		{"nginx", "docker.io/library/nginx:latest", "index.docker.io/library/nginx:latest"},
		{"nginx:1.13", "docker.io/library/nginx:1.13", "index.docker.io/library/nginx:1.13"},
		{"docker.io/library/nginx:1.13", "docker.io/library/nginx:1.13", "index.docker.io/library/nginx:1.13"},
		{"user/app", "docker.io/user/app:latest", "index.docker.io/user/app:latest"},
		{"reg:5000/a/b@" + d, "reg:5000/a/b@" + d, "reg:5000/a/b@" + d},
		{"nginx:1.13@" + d, "docker.io/library/nginx:1.13@" + d, "index.docker.io/library/nginx@" + d},
		{"localhost:5000/x", "localhost:5000/x:latest", "localhost:5000/x:latest"},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			r, err := parseReference(tc.in, nil)
			require.NoError(t, err)
			assert.Equal(t, tc.want, r.String())
			assert.Equal(t, tc.remote, r.remote.Name())
		})
	}
	for _, bad := range []string{"", " nginx", "UPPER/case:1", "a@sha256:short", "a:b:c", "a@b@c"} {
		_, err := parseReference(bad, nil)
		assert.ErrorIs(t, err, ErrInvalidReference, bad)
	}
	r, err := parseReference("reg.local:5000/x:1", []string{"reg.local:5000"})
	require.NoError(t, err)
	assert.Equal(t, "http", r.repo.Scheme(), "an insecure registry is reached over HTTP")
}

func FuzzParseReference(f *testing.F) {
	for _, s := range []string{"nginx", "a/b:c", "reg:5000/a@sha256:" + strings.Repeat("0", 64), "x:y@z", "::", "@"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := parseReference(s, nil)
		if err != nil {
			assert.ErrorIs(t, err, ErrInvalidReference)
			return
		}
		// A normalized reference parses to itself.
		again, err := parseReference(r.String(), nil)
		require.NoError(t, err, r.String())
		assert.Equal(t, r.String(), again.String())
	})
}

func TestPlatformScore(t *testing.T) {
	p := func(s string) *v1.Platform {
		parts := strings.Split(s, "/")
		out := &v1.Platform{OS: parts[0], Architecture: parts[1]}
		if len(parts) > 2 {
			out.Variant = parts[2]
		}
		return out
	}
	cases := []struct {
		node, image string
		ok          bool
	}{
		{"linux/amd64", "linux/amd64", true},
		{"linux/amd64", "linux/x86_64", true},
		{"linux/amd64", "linux/amd64/v3", false},
		{"linux/amd64/v3", "linux/amd64/v2", true},
		{"linux/amd64", "linux/arm64", false},
		{"linux/amd64", "windows/amd64", false},
		{"linux/arm64", "linux/arm64/v8", true},
		{"linux/arm64/v8", "linux/aarch64", true},
		{"linux/arm/v7", "linux/arm/v6", true},
		{"linux/arm/v6", "linux/arm/v7", false},
		{"linux/arm", "linux/arm/7", true},
		{"linux/arm/v6", "linux/armel", true},
	}
	for _, tc := range cases {
		parts := strings.Split(tc.node, "/")
		node := Platform{OS: parts[0], Architecture: parts[1]}
		if len(parts) > 2 {
			node.Variant = parts[2]
		}
		assert.Equal(t, tc.ok, platformScore(node, p(tc.image)) > 0, "%s on %s", tc.image, tc.node)
	}
	// The closest variant wins.
	d, ok := choosePlatform(Platform{OS: "linux", Architecture: "arm", Variant: "v7"}, []v1.Descriptor{
		{Platform: p("linux/arm/v5"), Size: 5},
		{Platform: p("linux/arm/v7"), Size: 7},
		{Platform: p("linux/arm/v6"), Size: 6},
	})
	require.True(t, ok)
	assert.Equal(t, int64(7), d.Size)
	_, ok = choosePlatform(Platform{OS: "linux", Architecture: "amd64"}, []v1.Descriptor{{Platform: nil}})
	assert.False(t, ok)
}

func FuzzLookupUser(f *testing.F) {
	f.Add(testPasswd, testGroup, "app")
	f.Add("a:b:c", "::::", "1:2")
	f.Add("", "", "")
	f.Fuzz(func(t *testing.T, passwd, group, spec string) {
		root := t.TempDir()
		require.NoError(t, os.Mkdir(filepath.Join(root, "etc"), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(root, "etc", "passwd"), []byte(passwd), 0o644))
		require.NoError(t, os.WriteFile(filepath.Join(root, "etc", "group"), []byte(group), 0o644))
		u, err := LookupUser(root, spec)
		if err != nil {
			assert.Contains(t, err.Error(), "image: user")
			return
		}
		assert.LessOrEqual(t, u.UID, uint32(maxID))
		assert.LessOrEqual(t, u.GID, uint32(maxID))
	})
}

func FuzzParseImageConfig(f *testing.F) {
	f.Add([]byte(`{"config":{"Cmd":["a"],"ExposedPorts":{"80":{}},"Healthcheck":{"Test":["NONE"]}},"rootfs":{"type":"layers","diff_ids":["sha256:` + strings.Repeat("a", 64) + `"]}}`))
	f.Add([]byte(`{"rootfs":{"type":"layers"}}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		cfg, ids, err := parseImageConfig(raw)
		if err != nil {
			return
		}
		for _, id := range ids {
			assert.True(t, isDigest(id), id)
		}
		for _, p := range cfg.ExposedPorts {
			assert.Contains(t, p, "/")
		}
		assert.True(t, sort.StringsAreSorted(cfg.ExposedPorts))
		assert.True(t, sort.StringsAreSorted(cfg.Volumes))
	})
}

func TestParseImageConfig(t *testing.T) {
	cases := []struct {
		name, raw, err string
	}{
		{"not json", `{`, "unexpected end"},
		{"no rootfs type", `{"rootfs":{"diff_ids":[]}}`, `rootfs.type must be "layers"`},
		{"bad diff id", `{"rootfs":{"type":"layers","diff_ids":["md5:x"]}}`, "is not a sha256 digest"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := parseImageConfig([]byte(tc.raw))
			assert.ErrorContains(t, err, tc.err)
		})
	}
	cfg, ids, err := parseImageConfig([]byte(`{"config":{"ExposedPorts":{"8080":{},"53/udp":{}},"Healthcheck":{"Test":["CMD","x"],"StartInterval":2000000000}},"rootfs":{"type":"layers","diff_ids":[]}}`))
	require.NoError(t, err)
	assert.Empty(t, ids)
	assert.Equal(t, []string{"53/udp", "8080/tcp"}, cfg.ExposedPorts)
	assert.Equal(t, 2*time.Second, cfg.Healthcheck.StartInterval)
}

func TestUnescapeMountinfo(t *testing.T) {
	for in, want := range map[string]string{
		`/plain`:            "/plain",
		`/with\040space`:    "/with space",
		`/tab\011and\134bs`: "/tab\tand\\bs",
		`/trailing\04`:      `/trailing\04`,
		`/bad\999`:          `/bad\999`,
	} {
		assert.Equal(t, want, unescapeMountinfo(in), in)
	}
}
