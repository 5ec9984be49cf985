package ipvs

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
)

// schedulers lists the IPVS schedulers of a stock Linux kernel that need no
// per-service option; Config.Scheduler must be one of them.
var schedulers = []string{"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos"}

// Config configures a Balancer.
type Config struct {
	// VIP is the virtual address of every virtual server the balancer
	// creates: traffic to VIP on a published port is balanced. Required,
	// no default: it is the node's own address, which only the caller
	// knows (a node has several, and picking one would be a guess). Only
	// endpoints of VIP's address family are used, because IPVS's masquerade
	// forwarding cannot translate between IPv4 and IPv6.
	VIP netip.Addr
	// Scheduler is the IPVS scheduler of every virtual server. Default
	// "rr" (round robin), the order the ingress contract promises; every
	// endpoint gets weight 1, so "wrr" behaves the same.
	Scheduler string
	// NetNS is the path of a network namespace to program, such as
	// /var/run/netns/NAME or /proc/PID/ns/net. Default "" (the namespace of
	// the calling process), which is what a node programming its own host
	// wants; a path lets a host or a test program another namespace
	// without moving its own threads.
	NetNS string
	// AdoptExisting makes Apply take over a virtual server at (VIP,
	// protocol, port) that it finds already present, such as one left by a
	// previous run of the host program that could not Stop. Default false:
	// a balancer touches only the virtual servers it created itself, so it
	// never rewrites one that another program (kube-proxy, Docker, an
	// operator with ipvsadm) owns; such a port is reported as a
	// *ingress.PortError instead.
	AdoptExisting bool
	// Logger receives the balancer's logs. Default: discard, because a
	// library must not write to the host's logs unless asked.
	Logger *slog.Logger
}

// DefaultConfig returns the configuration with every default set. VIP has
// no default and must still be set.
func DefaultConfig() Config {
	return Config{
		Scheduler: "rr",
		Logger:    slog.New(slog.DiscardHandler),
	}
}

// withDefaults fills zero fields from DefaultConfig and validates the
// result. It works on a copy; the caller's struct is never changed.
func (c Config) withDefaults() (Config, error) {
	d := DefaultConfig()
	if c.Scheduler == "" {
		c.Scheduler = d.Scheduler
	}
	if c.Logger == nil {
		c.Logger = d.Logger
	}
	c.VIP = c.VIP.Unmap()
	switch {
	case !c.VIP.IsValid():
		return c, fmt.Errorf("ipvs: Config.VIP: must be set to the node's address")
	case c.VIP.Zone() != "":
		return c, fmt.Errorf("ipvs: Config.VIP: must not have a zone, got %s", c.VIP)
	case c.VIP.IsUnspecified() || c.VIP.IsMulticast():
		return c, fmt.Errorf("ipvs: Config.VIP: must be a unicast address, got %s", c.VIP)
	}
	if !slices.Contains(schedulers, c.Scheduler) {
		return c, fmt.Errorf("ipvs: Config.Scheduler: must be one of %s, got %q", strings.Join(schedulers, ", "), c.Scheduler)
	}
	if c.NetNS != "" && c.NetNS[0] != '/' {
		return c, fmt.Errorf("ipvs: Config.NetNS: must be an absolute path, got %q", c.NetNS)
	}
	return c, nil
}
