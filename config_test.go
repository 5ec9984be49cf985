package shoal_test

import (
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal"
	"github.com/shoalhq/shoal/pki"
)

// noDefault lists the fields of shoal.Config (nested ones by their path)
// that DefaultConfig leaves zero on purpose. Every other field must have a
// default: a new field fails TestDefaultConfigFillsEveryDefault until it
// gets one or is added here with its reason.
var noDefault = map[string]string{
	// Given by the caller: DefaultConfig's arguments (checked separately).
	"StateDir":   "argument",
	"ListenAddr": "argument",
	// Detected at start.
	"AdvertiseAddr": "the listener's address",
	"Hostname":      "os.Hostname()",
	"Resources":     "the machine's CPUs and memory",
	// Plugins and hooks: nil means the built-in default.
	"Listener":   "nil: listen on ListenAddr over TCP",
	"Dial":       "nil: TCP",
	"Runtime":    "nil: runtime/process under StateDir/tasks",
	"ExternalCA": "nil: Shoal's own root CA",
	"Metrics":    "nil: no metrics",
	// No default: the zero value is the setting.
	"Labels":             "no labels",
	"DisableAgent":       "false: managers run tasks too",
	"LiveRestore":        "false: Stop stops the tasks unless the host asks to keep them (and has a runtime that can)",
	"InsecureRegistries": "none: registries are reached over TLS unless the host lists one",
	"AutoLock":           "false: autolock is opt-in",
	"ForceNewCluster":    "false: a normal restart",
	// Mesh.
	"Mesh.Disabled":            "false: every node takes part in the mesh",
	"Mesh.GossipAddr":          "from the node's address, port 7946, at start",
	"Mesh.GossipAdvertiseAddr": "the bound GossipAddr, at start",
	"Mesh.GossipTransport":     "nil: UDP/TCP",
	"Mesh.Gossip":              "nil: gossip.DefaultConfig",
	"Mesh.CustomBalancer":      "nil: the Balancer kind",
	"Mesh.ListenAddr":          "the zero Addr means 0.0.0.0",
	"Mesh.EndpointAddr":        "the gossip advertise address's host, at start",
	"Mesh.VIP":                 "EndpointAddr, at start",
}

// configLeaves returns the paths of v's fields, descending into the nested
// shoal config structs (RaftConfig, MeshConfig) unless they are listed in
// noDefault as a whole.
func configLeaves(t *testing.T, prefix string, v reflect.Value, visit func(path string, f reflect.Value)) {
	t.Helper()
	shoalPkg := reflect.TypeOf(shoal.Config{}).PkgPath()
	for i := 0; i < v.NumField(); i++ {
		sf := v.Type().Field(i)
		if !sf.IsExported() {
			continue
		}
		path := prefix + sf.Name
		f := v.Field(i)
		if _, listed := noDefault[path]; !listed && sf.Type.Kind() == reflect.Struct && sf.Type.PkgPath() == shoalPkg {
			configLeaves(t, path+".", f, visit)
			continue
		}
		visit(path, f)
	}
}

func TestDefaultConfigFillsEveryDefault(t *testing.T) {
	c := shoal.DefaultConfig("/var/lib/shoal", "127.0.0.1:4242")

	assert.Equal(t, "/var/lib/shoal", c.StateDir)
	assert.Equal(t, "127.0.0.1:4242", c.ListenAddr)
	assert.Equal(t, 5*time.Second, c.HeartbeatPeriod)
	assert.Equal(t, pki.DefaultCertValidity, c.CertValidity)
	assert.Equal(t, 90*24*time.Hour, c.CertValidity)
	assert.Equal(t, 5, c.TaskHistoryLimit)
	assert.Equal(t, 5*time.Second, c.RestartDelay)
	assert.Equal(t, 100*time.Millisecond, c.Raft.TickInterval)
	assert.Equal(t, 10, c.Raft.ElectionTicks)
	assert.Equal(t, uint64(10000), c.Raft.SnapshotInterval)
	assert.Equal(t, 2*time.Second, c.Mesh.DrainDelay)
	assert.Equal(t, 10*time.Second, c.Mesh.DrainTimeout)
	assert.Equal(t, 30*time.Second, c.Mesh.KeyRotationGrace)
	assert.Equal(t, shoal.BalancerUserspace, c.Mesh.Balancer)
	assert.NotNil(t, c.Logger)

	assert.NoError(t, c.Validate(), "DefaultConfig is valid")

	seen := map[string]bool{}
	configLeaves(t, "", reflect.ValueOf(c), func(path string, f reflect.Value) {
		seen[path] = true
		if _, listed := noDefault[path]; listed {
			return
		}
		// BalancerUserspace is the zero BalancerKind: the default is
		// explicit, but indistinguishable from zero.
		if path == "Mesh.Balancer" {
			return
		}
		assert.False(t, f.IsZero(), "Config.%s has no default in DefaultConfig: give it one (with its reason) or add it to noDefault", path)
	})
	var stale []string
	for path := range noDefault {
		if !seen[path] {
			stale = append(stale, path)
		}
	}
	sort.Strings(stale)
	assert.Empty(t, stale, "noDefault lists fields that Config does not have")

	// The fields with no default are really left zero (except the
	// arguments): a field that gets a default should leave noDefault.
	configLeaves(t, "", reflect.ValueOf(c), func(path string, f reflect.Value) {
		if why, listed := noDefault[path]; listed && why != "argument" {
			assert.True(t, f.IsZero(), "Config.%s has a default now: remove it from noDefault", path)
		}
	})
}

func TestDefaultConfigLoggerDiscards(t *testing.T) {
	c := shoal.DefaultConfig(t.TempDir(), "127.0.0.1:0")
	require.NotNil(t, c.Logger)
	assert.False(t, c.Logger.Handler().Enabled(t.Context(), slog.LevelError), "a library writes no logs unasked")
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edit  func(c *shoal.Config)
		field string
	}{
		{"missing StateDir", func(c *shoal.Config) { c.StateDir = "" }, "StateDir"},
		{"missing ListenAddr", func(c *shoal.Config) { c.ListenAddr = "" }, "ListenAddr"},
		{"ListenAddr without port", func(c *shoal.Config) { c.ListenAddr = "127.0.0.1" }, "ListenAddr"},
		{"ListenAddr garbage", func(c *shoal.Config) { c.ListenAddr = "not an address" }, "ListenAddr"},
		{"bad AdvertiseAddr", func(c *shoal.Config) { c.AdvertiseAddr = "10.0.0.1" }, "AdvertiseAddr"},
		{"CertValidity 1 minute", func(c *shoal.Config) { c.CertValidity = time.Minute }, "CertValidity"},
		{"CertValidity just below the minimum", func(c *shoal.Config) { c.CertValidity = pki.MinCertValidity - time.Second }, "CertValidity"},
		{"negative CertValidity", func(c *shoal.Config) { c.CertValidity = -time.Hour }, "CertValidity"},
		{"HeartbeatPeriod 1ms", func(c *shoal.Config) { c.HeartbeatPeriod = time.Millisecond }, "HeartbeatPeriod"},
		{"negative HeartbeatPeriod", func(c *shoal.Config) { c.HeartbeatPeriod = -time.Second }, "HeartbeatPeriod"},
		{"negative RestartDelay", func(c *shoal.Config) { c.RestartDelay = -time.Second }, "RestartDelay"},
		{"negative TaskHistoryLimit", func(c *shoal.Config) { c.TaskHistoryLimit = -1 }, "TaskHistoryLimit"},
		{"negative Resources.NanoCPUs", func(c *shoal.Config) { c.Resources.NanoCPUs = -1 }, "Resources.NanoCPUs"},
		{"negative Resources.MemoryBytes", func(c *shoal.Config) { c.Resources.MemoryBytes = -1 }, "Resources.MemoryBytes"},
		{"negative Raft.TickInterval", func(c *shoal.Config) { c.Raft.TickInterval = -time.Millisecond }, "Raft.TickInterval"},
		{"negative Raft.ElectionTicks", func(c *shoal.Config) { c.Raft.ElectionTicks = -1 }, "Raft.ElectionTicks"},
		{"empty label key", func(c *shoal.Config) { c.Labels = map[string]string{"zone": "a", "": "b"} }, "Labels"},
		{"bad Mesh.GossipAddr", func(c *shoal.Config) { c.Mesh.GossipAddr = "10.0.0.1" }, "Mesh.GossipAddr"},
		{"bad Mesh.GossipAdvertiseAddr", func(c *shoal.Config) { c.Mesh.GossipAdvertiseAddr = "nowhere" }, "Mesh.GossipAdvertiseAddr"},
		{"Mesh.Balancer above range", func(c *shoal.Config) { c.Mesh.Balancer = shoal.BalancerNone + 1 }, "Mesh.Balancer"},
		{"Mesh.Balancer below range", func(c *shoal.Config) { c.Mesh.Balancer = -1 }, "Mesh.Balancer"},
		{"negative Mesh.DrainDelay", func(c *shoal.Config) { c.Mesh.DrainDelay = -time.Second }, "Mesh.DrainDelay"},
		{"negative Mesh.DrainTimeout", func(c *shoal.Config) { c.Mesh.DrainTimeout = -time.Second }, "Mesh.DrainTimeout"},
		{"negative Mesh.KeyRotationGrace", func(c *shoal.Config) { c.Mesh.KeyRotationGrace = -time.Second }, "Mesh.KeyRotationGrace"},
		{"ExternalCA without URL", func(c *shoal.Config) { c.ExternalCA = &shoal.ExternalCA{} }, "ExternalCA.URL"},
		{"ExternalCA with a bad RootCert", func(c *shoal.Config) {
			c.ExternalCA = &shoal.ExternalCA{URL: "https://ca.example.com:8888", RootCert: []byte("not a PEM certificate")}
		}, "ExternalCA.RootCert"},
		{"ExternalCA without RootCert", func(c *shoal.Config) {
			c.ExternalCA = &shoal.ExternalCA{URL: "https://ca.example.com:8888"}
		}, "ExternalCA.RootCert"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stateDir := filepath.Join(t.TempDir(), "state")
			c := shoal.DefaultConfig(stateDir, "127.0.0.1:0")
			tc.edit(&c)

			err := c.Validate()
			require.Error(t, err)
			assert.ErrorIs(t, err, shoal.ErrInvalidSpec)
			assert.True(t, strings.HasPrefix(err.Error(), "Config."+tc.field+": "),
				"the error names the field Config.%s: %v", tc.field, err)

			n, newErr := shoal.New(c)
			assert.Nil(t, n)
			require.Error(t, newErr)
			assert.Equal(t, err.Error(), newErr.Error(), "New returns Validate's error")
			assert.ErrorIs(t, newErr, shoal.ErrInvalidSpec)
			if c.StateDir != "" {
				_, statErr := os.Stat(c.StateDir)
				assert.ErrorIs(t, statErr, os.ErrNotExist, "New writes nothing when the config is invalid")
			}
		})
	}
}

func TestConfigValidateAcceptsZeroDefaults(t *testing.T) {
	// The zero value of every field but StateDir and ListenAddr means its
	// default, so a bare config is valid.
	c := shoal.Config{StateDir: t.TempDir(), ListenAddr: "127.0.0.1:0"}
	assert.NoError(t, c.Validate())

	// A disabled mesh's settings are not checked.
	c.Mesh = shoal.MeshConfig{Disabled: true, GossipAddr: "bad", Balancer: 99}
	assert.NoError(t, c.Validate())
}

func TestConfigValidateDoesNotMutate(t *testing.T) {
	labels := map[string]string{"zone": "a", "rack": "r1"}
	ext := &shoal.ExternalCA{URL: "https://ca.example.com:8888", RootCert: []byte("not a PEM certificate")}
	c := shoal.Config{StateDir: t.TempDir(), ListenAddr: "127.0.0.1:0", Labels: labels}
	before := c

	require.NoError(t, c.Validate())
	assert.Equal(t, before, c, "Validate leaves the caller's struct as it was (no defaults filled in)")
	assert.Equal(t, map[string]string{"zone": "a", "rack": "r1"}, labels, "the Labels map is untouched")
	assert.Zero(t, c.HeartbeatPeriod)
	assert.Nil(t, c.Logger)

	c.ExternalCA = ext
	require.Error(t, c.Validate())
	assert.Equal(t, &shoal.ExternalCA{URL: "https://ca.example.com:8888", RootCert: []byte("not a PEM certificate")}, ext,
		"the ExternalCA is untouched")
	assert.Equal(t, map[string]string{"zone": "a", "rack": "r1"}, labels)
}
