package gossip

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Endpoint is one task's reachable address for one service port.
type Endpoint struct {
	Service  string         // service ID
	Task     string         // task ID
	Node     string         // node ID that publishes it
	Port     uint32         // the service's published (ingress) port this endpoint serves
	Protocol string         // "tcp" or "udp"
	Addr     netip.AddrPort // where to connect: node address + the task's host port
}

// String renders the endpoint for logs.
func (e Endpoint) String() string {
	return fmt.Sprintf("%s/%s@%s %d/%s -> %s", e.Service, e.Task, e.Node, e.Port, e.Protocol, e.Addr)
}

// maxIDLen bounds the service and task IDs accepted on the wire and from
// SetLocal; project IDs are 25 characters, 255 leaves room for host-chosen names.
const maxIDLen = 255

// validate checks the fields a publisher controls. Node is not checked: the
// publishing node always stamps its own ID.
func (e Endpoint) validate() error {
	switch {
	case e.Service == "":
		return fmt.Errorf("gossip: endpoint Service: must not be empty")
	case len(e.Service) > maxIDLen:
		return fmt.Errorf("gossip: endpoint Service: longer than %d bytes", maxIDLen)
	case e.Task == "":
		return fmt.Errorf("gossip: endpoint Task: must not be empty")
	case len(e.Task) > maxIDLen:
		return fmt.Errorf("gossip: endpoint Task: longer than %d bytes", maxIDLen)
	case e.Port == 0 || e.Port > 65535:
		return fmt.Errorf("gossip: endpoint Port: %d is not in 1-65535", e.Port)
	case e.Protocol != "tcp" && e.Protocol != "udp":
		return fmt.Errorf("gossip: endpoint Protocol: %q is not \"tcp\" or \"udp\"", e.Protocol)
	case !e.Addr.IsValid() || e.Addr.Port() == 0:
		return fmt.Errorf("gossip: endpoint Addr: %v is not a valid address with a non-zero port", e.Addr)
	}
	return nil
}

// epKey identifies an endpoint within one node's set: a task may serve several
// published ports and both protocols.
type epKey struct {
	Service  string
	Task     string
	Port     uint32
	Protocol string
}

func (e Endpoint) key() epKey {
	return epKey{Service: e.Service, Task: e.Task, Port: e.Port, Protocol: e.Protocol}
}

// compareEndpoints orders the table: by service, port, protocol, node, task.
func compareEndpoints(a, b Endpoint) int {
	if c := strings.Compare(a.Service, b.Service); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Port, b.Port); c != 0 {
		return c
	}
	if c := strings.Compare(a.Protocol, b.Protocol); c != 0 {
		return c
	}
	if c := strings.Compare(a.Node, b.Node); c != 0 {
		return c
	}
	if c := strings.Compare(a.Task, b.Task); c != 0 {
		return c
	}
	return a.Addr.Compare(b.Addr)
}

func sortEndpoints(eps []Endpoint) { slices.SortFunc(eps, compareEndpoints) }
