package ingress

import (
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Config configures a Userspace balancer.
type Config struct {
	// ListenAddr is the address every published port is bound on.
	// Default 0.0.0.0 (all IPv4 and, where the system allows it, IPv6
	// addresses): the routing mesh answers on every address of every node.
	ListenAddr netip.Addr
	// DialTimeout bounds the connection attempt to one endpoint before the
	// next one is tried. Default 2s: endpoints are on the cluster network,
	// where a connect takes well under a millisecond, and 2s still allows
	// one SYN retransmission (sent after 1s) before giving up on a dropped
	// packet.
	DialTimeout time.Duration
	// UDPFlowIdleTimeout is how long a UDP flow (a client address and its
	// chosen endpoint) lives without a datagram in either direction.
	// Default 30s: the same as Linux conntrack's timeout for unreplied UDP,
	// long enough for request/response protocols, short enough that the
	// flow table of a busy port recycles.
	UDPFlowIdleTimeout time.Duration
	// MaxConnsPerPort bounds the TCP connections proxied at once through one
	// published port; further connections wait in the listen backlog.
	// Default 4096: each connection holds two file descriptors and two
	// goroutines, so a few saturated ports stay far from a typical 65536
	// descriptor limit.
	MaxConnsPerPort int
	// MaxUDPFlowsPerPort bounds the UDP flows of one published port;
	// datagrams of new flows are dropped while the table is full.
	// Default 4096, for the same descriptor budget as MaxConnsPerPort.
	MaxUDPFlowsPerPort int
	// Logger receives the balancer's logs. Default: discard, because a
	// library must not write to the host's logs unless asked.
	Logger *slog.Logger
	// Registerer, when not nil, receives the balancer's Prometheus metrics.
	// Default nil: no metrics, since only the host program knows which
	// registry it serves.
	Registerer prometheus.Registerer
}

// DefaultConfig returns the configuration with every default set.
func DefaultConfig() Config {
	return Config{
		ListenAddr:         netip.IPv4Unspecified(),
		DialTimeout:        2 * time.Second,
		UDPFlowIdleTimeout: 30 * time.Second,
		MaxConnsPerPort:    4096,
		MaxUDPFlowsPerPort: 4096,
		Logger:             slog.New(slog.DiscardHandler),
	}
}

// withDefaults fills zero fields from DefaultConfig and validates the
// result. It works on a copy; the caller's struct is never changed.
func (c Config) withDefaults() (Config, error) {
	d := DefaultConfig()
	if !c.ListenAddr.IsValid() {
		c.ListenAddr = d.ListenAddr
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = d.DialTimeout
	}
	if c.UDPFlowIdleTimeout == 0 {
		c.UDPFlowIdleTimeout = d.UDPFlowIdleTimeout
	}
	if c.MaxConnsPerPort == 0 {
		c.MaxConnsPerPort = d.MaxConnsPerPort
	}
	if c.MaxUDPFlowsPerPort == 0 {
		c.MaxUDPFlowsPerPort = d.MaxUDPFlowsPerPort
	}
	if c.Logger == nil {
		c.Logger = d.Logger
	}
	switch {
	case c.ListenAddr.Zone() != "":
		return c, fmt.Errorf("ingress: Config.ListenAddr: must not have a zone, got %v", c.ListenAddr)
	case c.DialTimeout < 0:
		return c, fmt.Errorf("ingress: Config.DialTimeout: must not be negative, got %v", c.DialTimeout)
	case c.UDPFlowIdleTimeout < time.Millisecond:
		return c, fmt.Errorf("ingress: Config.UDPFlowIdleTimeout: must be at least 1ms, got %v", c.UDPFlowIdleTimeout)
	case c.MaxConnsPerPort < 1:
		return c, fmt.Errorf("ingress: Config.MaxConnsPerPort: must be at least 1, got %d", c.MaxConnsPerPort)
	case c.MaxUDPFlowsPerPort < 1:
		return c, fmt.Errorf("ingress: Config.MaxUDPFlowsPerPort: must be at least 1, got %d", c.MaxUDPFlowsPerPort)
	}
	return c, nil
}
