package node

import (
	"net"
	"time"

	"github.com/shoalhq/shoal/internal/mesh"
	"github.com/shoalhq/shoal/pki"
	"github.com/shoalhq/shoal/runtime"
)

// Validate checks the configuration as the host program wrote it (zero
// values mean defaults). Errors name the field as the public shoal.Config
// names it, and the rule, and wrap ErrInvalidSpec.
func (c Config) Validate() error {
	if c.StateDir == "" {
		return configError("StateDir", "is required")
	}
	if c.Listener == nil && c.ListenAddr == "" {
		return configError("ListenAddr", "is required when Listener is not set")
	}
	if c.Listener == nil {
		if _, _, err := net.SplitHostPort(c.ListenAddr); err != nil {
			return configError("ListenAddr", "%q must be host:port", c.ListenAddr)
		}
	}
	if c.AdvertiseAddr != "" {
		if _, _, err := net.SplitHostPort(c.AdvertiseAddr); err != nil {
			return configError("AdvertiseAddr", "%q must be host:port", c.AdvertiseAddr)
		}
	}
	if _, ok := c.Runtime.(runtime.Restorer); c.LiveRestore && !ok {
		return configError("LiveRestore", "needs a Runtime that can restore tasks (a runtime.Restorer such as runtime/runc); %T cannot", c.Runtime)
	}
	if e := c.ExternalCA; e != nil {
		if e.URL == "" {
			return configError("ExternalCA.URL", "is required")
		}
		if _, err := pki.ParseRootCA(e.RootCert, nil); err != nil {
			return configError("ExternalCA.RootCert", "must be the PEM root certificate of the external CA: %v", err)
		}
	}
	if c.CertValidity < 0 || (c.CertValidity > 0 && c.CertValidity < pki.MinCertValidity) {
		return configError("CertValidity", "must be at least %v", pki.MinCertValidity)
	}
	if c.HeartbeatPeriod < 0 || (c.HeartbeatPeriod > 0 && c.HeartbeatPeriod < 10*time.Millisecond) {
		return configError("HeartbeatPeriod", "must be at least 10ms")
	}
	for _, f := range []struct {
		name string
		neg  bool
	}{
		{"RestartDelay", c.RestartDelay < 0}, {"TaskHistoryLimit", c.TaskHistoryLimit < 0},
		{"Resources.NanoCPUs", c.NanoCPUs < 0}, {"Resources.MemoryBytes", c.MemoryBytes < 0},
		{"Raft.TickInterval", c.Raft.TickInterval < 0}, {"Raft.ElectionTicks", c.Raft.ElectionTicks < 0},
	} {
		if f.neg {
			return configError(f.name, "must be >= 0")
		}
	}
	for k := range c.Labels {
		if k == "" {
			return configError("Labels", "keys must not be empty")
		}
	}
	return c.Mesh.validate()
}

func (c MeshConfig) validate() error {
	if c.Disabled {
		return nil
	}
	for _, f := range []struct{ name, v string }{{"Mesh.GossipAddr", c.Mesh.GossipAddr}, {"Mesh.GossipAdvertiseAddr", c.Mesh.GossipAdvertiseAddr}} {
		if f.v == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(f.v); err != nil {
			return configError(f.name, "%q must be host:port", f.v)
		}
	}
	if b := c.Mesh.Balancer; b < mesh.Userspace || b > mesh.None {
		return configError("Mesh.Balancer", "must be BalancerUserspace, BalancerNFTables, BalancerIPVS or BalancerNone, got %d", int(b))
	}
	for _, f := range []struct {
		name string
		v    time.Duration
	}{{"Mesh.DrainDelay", c.DrainDelay}, {"Mesh.DrainTimeout", c.DrainTimeout}, {"Mesh.KeyRotationGrace", c.KeyRotationGrace}} {
		if f.v < 0 {
			return configError(f.name, "must be >= 0")
		}
	}
	return nil
}

// WithDefaults returns c with its zero settings taken from d (the public
// DefaultConfig, converted) and its Labels copied, so the node never shares
// the host's map.
func (c Config) WithDefaults(d Config) Config {
	set := func(v *time.Duration, def time.Duration) {
		if *v == 0 {
			*v = def
		}
	}
	set(&c.HeartbeatPeriod, d.HeartbeatPeriod)
	set(&c.CertValidity, d.CertValidity)
	set(&c.RestartDelay, d.RestartDelay)
	set(&c.Raft.TickInterval, d.Raft.TickInterval)
	set(&c.Mesh.DrainDelay, d.Mesh.DrainDelay)
	set(&c.Mesh.DrainTimeout, d.Mesh.DrainTimeout)
	set(&c.Mesh.KeyRotationGrace, d.Mesh.KeyRotationGrace)
	if c.TaskHistoryLimit == 0 {
		c.TaskHistoryLimit = d.TaskHistoryLimit
	}
	if c.Raft.ElectionTicks == 0 {
		c.Raft.ElectionTicks = d.Raft.ElectionTicks
	}
	if c.Raft.SnapshotInterval == 0 {
		c.Raft.SnapshotInterval = d.Raft.SnapshotInterval
	}
	if c.Logger == nil {
		c.Logger = d.Logger
	}
	if c.Labels != nil {
		labels := make(map[string]string, len(c.Labels))
		for k, v := range c.Labels {
			labels[k] = v
		}
		c.Labels = labels
	}
	return c
}
