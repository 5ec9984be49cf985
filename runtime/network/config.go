package network

import (
	"fmt"
	"log/slog"
	"net/netip"
)

// Limits on Config fields.
const (
	// maxIfNameLen is IFNAMSIZ (16) less the terminating NUL byte.
	maxIfNameLen = 15
	minPrefixLen = 8
	maxPrefixLen = 30
	// minMTU is the smallest MTU IPv4 allows (RFC 791); maxMTU is the
	// largest a bridge or veth accepts.
	minMTU = 68
	maxMTU = 65535
)

// Config configures a Bridge.
type Config struct {
	// Bridge is the name of the node's bridge device: at most 15
	// characters of [a-zA-Z0-9_.-]. Required. It also names the nftables
	// table (ip shoal-nat-<Bridge>) and the Bridge's directory under
	// StateDir, so two Bridges in one network namespace need two names.
	Bridge string
	// Subnet is the node's address pool, an IPv4 network address with a
	// prefix length from /8 to /30 (for example 172.31.0.0/24). Its first
	// address is the bridge's, the gateway of every container; the
	// addresses between the gateway and the broadcast address go to
	// containers, one each.
	Subnet netip.Prefix
	// StateDir holds the Bridge's leases and namespace bind mounts, in
	// StateDir/<Bridge>/. Required, an absolute path; it must survive the
	// host program's restarts for live restore (for example
	// /var/lib/shoal/network), and a tmpfs is right if containers do not
	// outlive a reboot anyway.
	StateDir string
	// MTU of the bridge and of every veth pair. 0 means 1500, the MTU of
	// Ethernet.
	MTU int
	// Masquerade rewrites the source of traffic from the pool that leaves
	// through another interface than the bridge to the address of that
	// interface, so containers reach the world through the node's
	// addresses. DefaultConfig sets it; the zero Config does not.
	Masquerade bool
	// HostNetns is the path of the network namespace that holds the
	// bridge, the host ends of the veth pairs and the nftables table (the
	// "host side"), such as /var/run/netns/NAME. "" means the namespace of
	// the thread that calls Setup (or Teardown, when it comes first),
	// which is the host's for a program that does not move its threads.
	// A path lets several nodes in one process, or a test, keep each
	// node's host side apart.
	HostNetns string
	// Logger receives the Bridge's logs. nil means discard: a library does
	// not write to the host's logs unless asked.
	Logger *slog.Logger
}

// DefaultConfig returns the defaults. StateDir has none: it must be chosen
// by the host program.
func DefaultConfig() Config {
	return Config{
		// shoal0 is short, says whose bridge it is, and does not collide
		// with docker0 or cni0.
		Bridge: "shoal0",
		// 172.31.0.0/24 is private (RFC 1918) and the last /16 of the
		// 172.17-31 range docker allocates from, so it collides with
		// docker's own networks only on a host with fifteen of them; a
		// /24 holds 253 containers, above the 110 pods a Kubernetes node
		// runs by default.
		Subnet: netip.MustParsePrefix("172.31.0.0/24"),
		// 1500 is Ethernet's MTU, the right value for a bridge whose
		// traffic leaves through an Ethernet interface.
		MTU: 1500,
		// Masquerade, as docker does for its bridge: without it containers
		// reach the world only if the network routes the pool back to
		// this node.
		Masquerade: true,
		Logger:     slog.New(slog.DiscardHandler),
	}
}

// withDefaults fills the zero MTU and Logger and validates the result. It
// works on a copy: the caller's struct is never changed.
func (c Config) withDefaults() (Config, error) {
	if c.MTU == 0 {
		c.MTU = 1500
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, c.validate()
}

func (c Config) validate() error {
	if err := validIfName(c.Bridge); err != nil {
		return fmt.Errorf("network: Config.Bridge: %w", err)
	}
	switch s := c.Subnet; {
	case !s.IsValid():
		return fmt.Errorf("network: Config.Subnet: required, an IPv4 prefix such as 172.31.0.0/24")
	case !s.Addr().Is4():
		return fmt.Errorf("network: Config.Subnet: must be IPv4, got %s", s)
	case s.Bits() < minPrefixLen || s.Bits() > maxPrefixLen:
		return fmt.Errorf("network: Config.Subnet: prefix length must be from /%d to /%d, got %s", minPrefixLen, maxPrefixLen, s)
	case s.Masked() != s:
		return fmt.Errorf("network: Config.Subnet: must be a network address (%s), got %s", s.Masked(), s)
	}
	switch {
	case c.StateDir == "":
		return fmt.Errorf("network: Config.StateDir: required")
	case c.StateDir[0] != '/':
		return fmt.Errorf("network: Config.StateDir: must be an absolute path, got %q", c.StateDir)
	}
	if c.MTU < minMTU || c.MTU > maxMTU {
		return fmt.Errorf("network: Config.MTU: must be from %d to %d (or 0 for 1500), got %d", minMTU, maxMTU, c.MTU)
	}
	if c.HostNetns != "" && c.HostNetns[0] != '/' {
		return fmt.Errorf("network: Config.HostNetns: must be an absolute path or empty, got %q", c.HostNetns)
	}
	return nil
}

// validIfName checks a network interface name the way this package names
// its own: 1 to 15 characters of [a-zA-Z0-9_.-], not "." or "..".
func validIfName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("required")
	case len(name) > maxIfNameLen:
		return fmt.Errorf("must be at most %d characters, got %d (%q)", maxIfNameLen, len(name), name)
	case name == "." || name == "..":
		return fmt.Errorf("must not be %q", name)
	}
	for i := 0; i < len(name); i++ {
		if !nameChar(name[i]) {
			return fmt.Errorf("must contain only [a-zA-Z0-9_.-], got %q", name)
		}
	}
	return nil
}

func nameChar(ch byte) bool {
	return ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '_' || ch == '.' || ch == '-'
}
