package image

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"time"
)

// Config configures a Store. The zero value of every field but Dir means
// its default; DefaultConfig spells the defaults out.
type Config struct {
	// Dir is the root of the store on disk (the node puts it under its
	// state directory). Required: an absolute path without ',' or ':',
	// which overlayfs mount options cannot carry.
	Dir string
	// Platform is the node's platform, used to choose an image from a
	// manifest list or OCI index. Zero means the platform this program runs
	// on (DefaultPlatform).
	Platform Platform
	// InsecureRegistries are registry hosts ("127.0.0.1:5000",
	// "localhost:5000") reached over plain HTTP. Every other registry, and
	// every other host a registry sends the client to (token servers,
	// blob redirects), is reached over HTTPS only.
	InsecureRegistries []string
	// Transport carries every registry request; nil means
	// http.DefaultTransport.
	Transport http.RoundTripper
	// GC is the garbage collection policy of GC and of the loop Start runs.
	GC GCPolicy
	// GCInterval is how often the loop Start runs calls GC; 0 means the
	// loop is not run. DefaultConfig sets it.
	GCInterval time.Duration
	// MaxConcurrentDownloads bounds how many layers one pull fetches at
	// once; 0 means 3.
	MaxConcurrentDownloads int
	// DisableOverlay makes Mount copy the layers into a directory per
	// container instead of mounting overlayfs, as it does by itself where
	// overlayfs is unavailable.
	DisableOverlay bool
	// Now is the store's clock: the age of an image for the GC. Nil means
	// time.Now.
	Now func() time.Time
	// Logger receives the store's logs; nil discards them.
	Logger *slog.Logger
}

// GCPolicy says which images GC removes. Images a container uses (a Mount
// without its Unmount) are never removed, nor are the layers they share
// with a removed image.
type GCPolicy struct {
	// MaxUnusedAge removes an image no container has used for this long
	// (since its last Mount, Unmount, Pull or load); 0 means never by age.
	MaxUnusedAge time.Duration
	// MaxBytes is a budget for the unpacked layers: while they take more,
	// unused images are removed, least recently used first; 0 means no
	// budget.
	MaxBytes int64
}

// RemoteOptions are the registry options of the package-level Resolve.
type RemoteOptions struct {
	// InsecureRegistries are hosts reached over plain HTTP, as in Config.
	InsecureRegistries []string
	// Transport carries the requests; nil means http.DefaultTransport.
	Transport http.RoundTripper
	// Platform is unused by Resolve, which pins the reference to what the
	// tag names (an index stays an index); it is here so that one value
	// describes a node's registry access.
	Platform Platform
}

// Default values.
const (
	// DefaultGCInterval: a few minutes keeps disk use close to the policy
	// without scanning the store often; GC itself only reads memory unless
	// it removes something.
	DefaultGCInterval = 5 * time.Minute
	// DefaultMaxUnusedAge: an image unused for a day is unlikely to be
	// needed by a rescheduled task soon, and pulling it again costs less
	// than keeping every image a node ever ran.
	DefaultMaxUnusedAge = 24 * time.Hour
	// DefaultMaxConcurrentDownloads: docker's default, enough to fill a
	// link with a few large layers without opening many connections to one
	// registry.
	DefaultMaxConcurrentDownloads = 3
)

// DefaultConfig returns a Config with every default set. Dir is left empty:
// the node chooses it.
func DefaultConfig() Config {
	return Config{
		// The node runs images built for the machine it runs on.
		Platform: DefaultPlatform(),
		// No registry is trusted over plain HTTP unless named.
		InsecureRegistries: nil,
		// The standard transport honours the environment's proxies.
		Transport: http.DefaultTransport,
		GC: GCPolicy{
			MaxUnusedAge: DefaultMaxUnusedAge,
			// The library does not know how much disk the node can spare.
			MaxBytes: 0,
		},
		GCInterval:             DefaultGCInterval,
		MaxConcurrentDownloads: DefaultMaxConcurrentDownloads,
		// Overlayfs shares each layer between containers; Mount falls back
		// to copies by itself where overlayfs is missing.
		DisableOverlay: false,
		Now:            time.Now,
		Logger:         nil,
	}
}

// validate checks c and returns the first problem, naming the field.
func (c Config) validate() error {
	if c.Dir == "" {
		return fmt.Errorf("image: Config.Dir: required")
	}
	if !filepath.IsAbs(c.Dir) {
		return fmt.Errorf("image: Config.Dir: must be an absolute path, got %q", c.Dir)
	}
	if strings.ContainsAny(c.Dir, ",:\x00") {
		return fmt.Errorf("image: Config.Dir: must not contain ',' or ':' (overlayfs mount options cannot carry them), got %q", c.Dir)
	}
	if err := c.Platform.validate("Config.Platform"); err != nil {
		return err
	}
	if err := validateHosts("Config.InsecureRegistries", c.InsecureRegistries); err != nil {
		return err
	}
	if c.GC.MaxUnusedAge < 0 {
		return fmt.Errorf("image: Config.GC.MaxUnusedAge: must not be negative, got %v", c.GC.MaxUnusedAge)
	}
	if c.GC.MaxBytes < 0 {
		return fmt.Errorf("image: Config.GC.MaxBytes: must not be negative, got %d", c.GC.MaxBytes)
	}
	if c.GCInterval < 0 {
		return fmt.Errorf("image: Config.GCInterval: must not be negative, got %v", c.GCInterval)
	}
	if c.MaxConcurrentDownloads < 0 {
		return fmt.Errorf("image: Config.MaxConcurrentDownloads: must not be negative, got %d", c.MaxConcurrentDownloads)
	}
	return nil
}

// validateHosts checks registry hosts: host or host:port, nothing else.
func validateHosts(field string, hosts []string) error {
	for i, h := range hosts {
		u, err := url.Parse("//" + h)
		if h == "" || err != nil || u.Host != h || strings.ContainsAny(h, "/@?#") {
			return fmt.Errorf("image: %s[%d]: must be a host or host:port without a scheme or path, got %q", field, i, h)
		}
	}
	return nil
}
