package network

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
)

// Errors returned by a Bridge, wrapped with the details; test them with
// errors.Is.
var (
	// ErrPoolExhausted: Attach found no free address in Config.Subnet.
	ErrPoolExhausted = errors.New("network: address pool exhausted")
	// ErrNotAttached: Publish named an ID that has no attachment.
	ErrNotAttached = errors.New("network: no attachment with this ID")
	// ErrNotSetUp: Attach, Detach or Publish before Setup (or after
	// Teardown).
	ErrNotSetUp = errors.New("network: bridge not set up (call Setup first)")
	// ErrClosed: any call after Close.
	ErrClosed = errors.New("network: bridge closed")
)

// Port protocols, the values of PortMapping.Protocol.
const (
	ProtocolTCP = "tcp"
	ProtocolUDP = "udp"
)

// maxIDLen bounds attachment IDs, which name files under StateDir.
const maxIDLen = 128

// ContainerIfName is the name of the container's end of its veth pair,
// inside its namespace.
const ContainerIfName = "eth0"

// Attachment is one container task's place on the bridge. Values returned
// by a Bridge are copies: the caller may keep and change them.
type Attachment struct {
	// ID is the task ID the caller gave Attach.
	ID string
	// NetnsPath is the bind mount that keeps the task's network namespace
	// alive, for the OCI spec's network namespace path
	// (linux.namespaces[{type: network, path: NetnsPath}]).
	NetnsPath string
	// Addr is the container's address, on its eth0.
	Addr netip.Addr
	// Prefix is Addr with the pool's prefix length.
	Prefix netip.Prefix
	// Gateway is the bridge's address, the container's default route.
	Gateway netip.Addr
	// MAC is eth0's hardware address, derived from Addr (see MACFor).
	MAC net.HardwareAddr
	// HostVeth is the name of the host's end of the veth pair, a port of
	// the bridge.
	HostVeth string
	// Ports are the published ports of the attachment (see Publish),
	// sorted by protocol, then host port.
	Ports []PortMapping
}

// clone returns a deep copy of a.
func (a *Attachment) clone() *Attachment {
	c := *a
	c.MAC = slices.Clone(a.MAC)
	c.Ports = slices.Clone(a.Ports)
	return &c
}

// PortMapping publishes a container port on a port of the node (host
// mode): connections and datagrams to any of the node's own addresses at
// HostPort go to the container's address at Target.
type PortMapping struct {
	HostPort uint16
	Target   uint16
	Protocol string // ProtocolTCP or ProtocolUDP
}

func (p PortMapping) String() string {
	return fmt.Sprintf("%d:%d/%s", p.HostPort, p.Target, p.Protocol)
}

// validID checks an attachment ID: 1 to 128 characters of [a-zA-Z0-9_.-],
// not starting with a dot (IDs name files, and dot files are the
// package's temporary ones).
func validID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("network: ID: required")
	case len(id) > maxIDLen:
		return fmt.Errorf("network: ID: must be at most %d characters, got %d", maxIDLen, len(id))
	case id[0] == '.':
		return fmt.Errorf("network: ID: must not start with '.', got %q", id)
	}
	for i := 0; i < len(id); i++ {
		if !nameChar(id[i]) {
			return fmt.Errorf("network: ID: must contain only [a-zA-Z0-9_.-], got %q", id)
		}
	}
	return nil
}

// normalizePorts validates ports and returns them sorted by protocol and
// host port, in a new slice. Each (Protocol, HostPort) may appear once.
func normalizePorts(ports []PortMapping) ([]PortMapping, error) {
	out := slices.Clone(ports)
	for i, p := range out {
		switch {
		case p.Protocol != ProtocolTCP && p.Protocol != ProtocolUDP:
			return nil, fmt.Errorf("network: ports[%d] (%s): Protocol: must be %q or %q", i, p, ProtocolTCP, ProtocolUDP)
		case p.HostPort == 0:
			return nil, fmt.Errorf("network: ports[%d] (%s): HostPort: must not be 0", i, p)
		case p.Target == 0:
			return nil, fmt.Errorf("network: ports[%d] (%s): Target: must not be 0", i, p)
		}
	}
	slices.SortFunc(out, comparePorts)
	for i := 1; i < len(out); i++ {
		if out[i].Protocol == out[i-1].Protocol && out[i].HostPort == out[i-1].HostPort {
			return nil, fmt.Errorf("network: ports: host port %d/%s appears twice", out[i].HostPort, out[i].Protocol)
		}
	}
	if len(out) == 0 {
		out = nil
	}
	return out, nil
}

func comparePorts(a, b PortMapping) int {
	return cmp.Or(cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.HostPort, b.HostPort), cmp.Compare(a.Target, b.Target))
}

// MACFor is the hardware address this package gives the interface with
// IPv4 address a: 02:53 (locally administered, unicast) followed by the
// four bytes of a. A container keeps its MAC across repairs and restarts,
// and an address handed out again comes with the same MAC, so no
// neighbour cache holds a stale entry for it. It returns nil for anything
// but an IPv4 address.
func MACFor(a netip.Addr) net.HardwareAddr {
	if !a.Is4() {
		return nil
	}
	b := a.As4()
	return net.HardwareAddr{0x02, 0x53, b[0], b[1], b[2], b[3]}
}

// hostVethName is the host end's name for attachment id on bridge: "vsh"
// and 12 hex digits of SHA-256(bridge NUL id), 15 characters, the same
// every time, so Attach finds the pair again.
func hostVethName(bridge, id string) string {
	h := sha256.Sum256([]byte(bridge + "\x00" + id))
	return "vsh" + hex.EncodeToString(h[:6])
}

// tableName is the nftables table (family ip) of the bridge.
func tableName(bridge string) string { return "shoal-nat-" + bridge }
