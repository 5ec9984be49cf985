package ingress

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// Protocol is the transport protocol of a published port. Its values are
// those of shoal.Protocol: the zero Protocol is TCP.
type Protocol uint8

const (
	// TCP is a published TCP port: each new connection is balanced.
	TCP Protocol = iota
	// UDP is a published UDP port: each new flow (client address) is
	// balanced.
	UDP
)

// String returns "tcp", "udp", or "protocol(N)" for an invalid value.
func (p Protocol) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	default:
		return fmt.Sprintf("protocol(%d)", uint8(p))
	}
}

// ParseProtocol parses "tcp" or "udp" (any case).
func ParseProtocol(s string) (Protocol, error) {
	switch strings.ToLower(s) {
	case "tcp":
		return TCP, nil
	case "udp":
		return UDP, nil
	default:
		return 0, fmt.Errorf("ingress: protocol %q: must be tcp or udp", s)
	}
}

// valid reports whether p is TCP or UDP.
func (p Protocol) valid() bool { return p == TCP || p == UDP }

// Endpoint is one live task address for a published port.
type Endpoint struct {
	// Service is the ID or name of the service the task belongs to.
	Service string
	// Task is the ID of the task.
	Task string
	// Addr is where the task accepts the port's traffic.
	Addr netip.AddrPort
}

// String returns "task@addr".
func (e Endpoint) String() string { return e.Task + "@" + e.Addr.String() }

// Port is one published port of a service in ingress mode.
type Port struct {
	// Service is the ID or name of the service that publishes the port.
	Service string
	// Protocol is TCP (the zero value) or UDP.
	Protocol Protocol
	// Published is the port number every node answers on.
	Published uint16
}

// String returns "tcp/8080 (service web)".
func (p Port) String() string {
	return fmt.Sprintf("%s/%d (service %s)", p.Protocol, p.Published, p.Service)
}

// Table is the whole desired state: for each published port, its endpoints.
// The order of a port's endpoints is the round-robin order.
type Table map[Port][]Endpoint

// Balancer makes every published port of the table answer on this node and
// spreads new TCP connections and UDP flows across the port's endpoints.
//
// Implementations: Userspace (this package; no root needed). Kernel
// balancers (nftables, IPVS) implement the same contract.
type Balancer interface {
	// Apply replaces the whole state with t. It is idempotent and diffed
	// internally: ports whose endpoints are unchanged keep their listeners
	// and flows; a port whose endpoint list changed sends new connections
	// and flows only to the new list at once, while connections and flows
	// already established through a removed endpoint continue (drain) until
	// they end; a port no longer in t stops answering and its connections
	// are closed. A port that cannot be set up yields an error naming it
	// (a *PortError, joined with the others) and the rest of t is still
	// applied. Apply calls are serialized; Apply after Stop returns
	// ErrStopped. Safe for concurrent use.
	Apply(ctx context.Context, t Table) error
	// Stop removes everything the balancer set up and waits, bounded by
	// ctx, until its goroutines have ended. Idempotent; safe for concurrent
	// use.
	Stop(ctx context.Context) error
}

// ErrStopped is returned by Apply after Stop.
var ErrStopped = errors.New("ingress: balancer stopped")

// PortError is an Apply failure of one published port.
type PortError struct {
	Port Port
	Err  error
}

func (e *PortError) Error() string {
	return fmt.Sprintf("ingress: port %s: %v", e.Port, e.Err)
}

func (e *PortError) Unwrap() error { return e.Err }

// portKey identifies a listener: a node has one socket per protocol and
// port number, whatever service owns it.
type portKey struct {
	proto Protocol
	num   uint16
}

func keyOf(p Port) portKey { return portKey{p.Protocol, p.Published} }
