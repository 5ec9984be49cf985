package shoaltest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/shoalhq/shoal/runtime"
	"github.com/shoalhq/shoal/runtime/runc"
)

// Containers makes real container runtimes (runtime/runc) for the nodes of
// a test cluster, each with a bridge and address pool of its own, so that
// several nodes share one machine: pass its Runtime method as
// Options.Runtime. Make it before Start, so that its clean-up (the
// containers a node left running, the bridges, the runtimes) runs after the
// cluster has stopped.
type Containers struct {
	tb   testing.TB
	dir  string
	tag  string // distinguishes this cluster's bridges from others'
	base [2]byte

	// Configure, if set, edits each runtime's configuration (the image
	// store's insecure registries, for instance) before runc.New.
	Configure func(name string, cfg *runc.Config)

	mu       sync.Mutex
	n        int
	runtimes map[string]*runc.Runtime
	subnets  map[string]netip.Prefix
}

// NewContainers returns a maker of runc runtimes for one test's cluster.
// Bridges are named "sht<tag>-<n>" and pools are /24s of 10.x.0.0/16 with x
// drawn per cluster, so concurrent tests do not collide.
func NewContainers(tb testing.TB) *Containers {
	tb.Helper()
	c := &Containers{
		tb:       tb,
		dir:      tb.TempDir(),
		tag:      fmt.Sprintf("%04x", rand.IntN(0x10000)),
		base:     [2]byte{10, byte(64 + rand.IntN(128))},
		runtimes: map[string]*runc.Runtime{},
		subnets:  map[string]netip.Prefix{},
	}
	tb.Cleanup(c.cleanup)
	return c
}

// Runtime makes the runtime of node name (Options.Runtime). A test fails
// if runc.New refuses (no runc binary, for instance): check for what the
// runtime needs first and skip with a sentence.
func (c *Containers) Runtime(name string) runtime.Runtime {
	c.mu.Lock()
	defer c.mu.Unlock()
	if rt, ok := c.runtimes[name]; ok {
		return rt
	}
	c.n++
	cfg := runc.DefaultConfig()
	cfg.Dir = filepath.Join(c.dir, name)
	cfg.Network.Bridge = fmt.Sprintf("sht%s-%d", c.tag, c.n)
	cfg.Network.Subnet = netip.PrefixFrom(netip.AddrFrom4([4]byte{c.base[0], c.base[1], byte(c.n), 0}), 24)
	if c.Configure != nil {
		c.Configure(name, &cfg)
	}
	rt, err := runc.New(cfg)
	if err != nil {
		c.tb.Fatalf("shoaltest: the runc runtime of %s: %v", name, err)
	}
	c.runtimes[name] = rt
	c.subnets[name] = cfg.Network.Subnet
	return rt
}

// Of returns the runtime made for node name, nil if none was.
func (c *Containers) Of(name string) *runc.Runtime {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.runtimes[name]
}

// Subnet returns the address pool of node name's bridge.
func (c *Containers) Subnet(name string) netip.Prefix {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.subnets[name]
}

// cleanup discards the containers a node left running (a LiveRestore stop),
// removes the bridges and closes the runtimes.
func (c *Containers) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, rt := range c.runtimes {
		ids, _ := rt.Restorable(ctx)
		for _, id := range ids {
			if err := rt.Discard(ctx, id); err != nil {
				c.tb.Logf("shoaltest: discarding container %s of %s: %v", id, name, err)
			}
		}
		if b := rt.Bridge(); b != nil {
			if err := b.Teardown(ctx); err != nil {
				c.tb.Logf("shoaltest: removing the bridge of %s: %v", name, err)
			}
		}
		_ = rt.Close()
	}
}
