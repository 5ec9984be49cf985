package allocator

import (
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/state"
)

// The dynamic range: ingress ports a spec leaves at 0 are allocated from it,
// lowest free first. It is the range Docker swarm mode and Kubernetes
// NodePorts use, so firewall rules written for them fit.
const (
	DynamicPortFirst = 30000
	DynamicPortLast  = 32767
)

// PortRange is an inclusive range of ports to allocate from.
type PortRange struct{ First, Last uint32 }

// DynamicPorts is the dynamic range, DynamicPortFirst-DynamicPortLast.
var DynamicPorts = PortRange{DynamicPortFirst, DynamicPortLast}

// String returns the range as "first-last".
func (r PortRange) String() string { return fmt.Sprintf("%d-%d", r.First, r.Last) }

// PortKey is a port number with its protocol, e.g. 8080/tcp.
type PortKey struct {
	Port     uint32
	Protocol api.PortProtocol
}

// String returns the port as "8080/tcp".
func (k PortKey) String() string { return fmt.Sprintf("%d/%s", k.Port, ProtocolName(k.Protocol)) }

// ProtocolName returns "udp" for UDP and "tcp" for anything else.
func ProtocolName(p api.PortProtocol) string {
	if p == api.PortProtocol_PORT_PROTOCOL_UDP {
		return "udp"
	}
	return "tcp"
}

// ServiceFinder is the part of a store transaction port allocation reads
// (state.ReadTx and state.WriteTx implement it). AllocatePorts calls
// FindServices(state.All()) once.
type ServiceFinder interface {
	FindServices(by state.By) ([]*api.Service, error)
}

var (
	_ ServiceFinder = state.ReadTx(nil)
	_ ServiceFinder = state.WriteTx(nil)
)

// portUser is a service publishing a port, for conflict messages.
type portUser struct {
	name, id string
	mode     api.PublishMode
}

// AllocatePorts sets svc.Endpoint from svc.Spec.Task.Ports, reading the
// ports the other services in tx hold; the caller stores svc in the same
// transaction. svc.Spec is not modified; without ports, svc.Endpoint becomes
// nil.
//
// Rules, every refusal wrapping errdefs.ErrInvalidSpec and naming the field:
//   - an explicit ingress port must not be published by another service in
//     either mode (an ingress port is bound on every node);
//   - an explicit host-mode port must not be another service's ingress port;
//     host-mode ports of different services may coincide: they conflict per
//     node, which the scheduler handles;
//   - an ingress port left at 0 keeps the port the service had for the same
//     target and protocol if it is still free, else gets the lowest free port
//     of r.
func AllocatePorts(tx ServiceFinder, svc *api.Service, r PortRange) error {
	ports := svc.GetSpec().GetTask().GetPorts()
	if len(ports) == 0 {
		svc.Endpoint = nil
		return nil
	}
	all, err := tx.FindServices(state.All())
	if err != nil {
		return err
	}
	used := make(map[PortKey]portUser)
	for _, o := range all {
		if o.GetId() == svc.GetId() {
			continue
		}
		for _, p := range o.GetEndpoint().GetPorts() {
			k := PortKey{p.GetPublishedPort(), p.GetProtocol()}
			if p.GetPublishedPort() == 0 {
				continue
			}
			// An ingress user wins the record: it conflicts with everything.
			if cur, ok := used[k]; ok && cur.mode == api.PublishMode_PUBLISH_MODE_INGRESS {
				continue
			}
			used[k] = portUser{name: o.GetSpec().GetName(), id: o.GetId(), mode: p.GetMode()}
		}
	}
	prev := make(map[PortKey]uint32)
	for _, p := range svc.GetEndpoint().GetPorts() {
		if p.GetMode() == api.PublishMode_PUBLISH_MODE_INGRESS && p.GetPublishedPort() != 0 {
			prev[PortKey{p.GetTargetPort(), p.GetProtocol()}] = p.GetPublishedPort()
		}
	}
	out := make([]*api.PortConfig, len(ports))
	mine := make(map[PortKey]bool)
	for i, p := range ports {
		out[i] = proto.Clone(p).(*api.PortConfig)
		if p.GetPublishedPort() == 0 {
			continue
		}
		k := PortKey{p.GetPublishedPort(), p.GetProtocol()}
		if u, ok := used[k]; ok && (p.GetMode() == api.PublishMode_PUBLISH_MODE_INGRESS || u.mode == api.PublishMode_PUBLISH_MODE_INGRESS) {
			how := "published"
			if u.mode == api.PublishMode_PUBLISH_MODE_HOST {
				how = "published in host mode"
			}
			return fmt.Errorf("ServiceSpec.Ports[%d].Published: port %s is already %s by service %s (id %s): %w",
				i, k, how, u.name, u.id, errdefs.ErrInvalidSpec)
		}
		mine[k] = true
	}
	free := func(k PortKey) bool {
		_, taken := used[k]
		return !taken && !mine[k]
	}
	// Ports kept from before go first, so a new port listed ahead of them
	// does not take theirs.
	for _, p := range out {
		if p.PublishedPort != 0 {
			continue
		}
		if old, ok := prev[PortKey{p.TargetPort, p.Protocol}]; ok && free(PortKey{old, p.Protocol}) {
			p.PublishedPort = old
			mine[PortKey{old, p.Protocol}] = true
		}
	}
	for i, p := range out {
		if p.PublishedPort != 0 {
			continue
		}
		for port := r.First; port <= r.Last; port++ {
			if k := (PortKey{port, p.Protocol}); free(k) {
				p.PublishedPort = port
				mine[k] = true
				break
			}
		}
		if p.PublishedPort == 0 {
			return fmt.Errorf("ServiceSpec.Ports[%d].Published: no free %s port left in the dynamic range %s; set one explicitly or remove a service: %w",
				i, ProtocolName(p.Protocol), r, errdefs.ErrInvalidSpec)
		}
	}
	svc.Endpoint = &api.Endpoint{Ports: out}
	return nil
}
