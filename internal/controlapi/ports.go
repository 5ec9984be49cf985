package controlapi

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

// portRange is an inclusive range of ports to allocate from.
type portRange struct{ first, last uint32 }

func (r portRange) String() string { return fmt.Sprintf("%d-%d", r.first, r.last) }

// serviceFinder is the part of a transaction allocation reads.
type serviceFinder interface {
	FindServices(by state.By) ([]*api.Service, error)
}

// portUser is a service publishing a port, for conflict messages.
type portUser struct {
	name, id string
	mode     api.PublishMode
}

// allocatePorts sets svc.Endpoint from svc.Spec.Task.Ports inside the write
// transaction that stores svc, so the allocation is atomic with the spec and
// replicated with it (a new leader sees it; removing the service frees its
// ports, since allocations are only ever read from the stored services).
//
// Rules, every refusal wrapping ErrInvalidSpec and naming the field:
//   - an explicit ingress port must not be published by another service in
//     either mode (an ingress port is bound on every node);
//   - an explicit host-mode port must not be another service's ingress port;
//     host-mode ports of different services may coincide: they conflict per
//     node, which the scheduler handles;
//   - an ingress port left at 0 keeps the port the service had for the same
//     target and protocol if it is still free, else gets the lowest free port
//     of the dynamic range.
func allocatePorts(tx serviceFinder, svc *api.Service, r portRange) error {
	ports := svc.GetSpec().GetTask().GetPorts()
	if len(ports) == 0 {
		svc.Endpoint = nil
		return nil
	}
	all, err := tx.FindServices(state.All())
	if err != nil {
		return err
	}
	used := make(map[portKey]portUser)
	for _, o := range all {
		if o.GetId() == svc.GetId() {
			continue
		}
		for _, p := range o.GetEndpoint().GetPorts() {
			k := portKey{p.GetPublishedPort(), p.GetProtocol()}
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
	prev := make(map[portKey]uint32)
	for _, p := range svc.GetEndpoint().GetPorts() {
		if p.GetMode() == api.PublishMode_PUBLISH_MODE_INGRESS && p.GetPublishedPort() != 0 {
			prev[portKey{p.GetTargetPort(), p.GetProtocol()}] = p.GetPublishedPort()
		}
	}
	out := make([]*api.PortConfig, len(ports))
	mine := make(map[portKey]bool)
	for i, p := range ports {
		out[i] = proto.Clone(p).(*api.PortConfig)
		if p.GetPublishedPort() == 0 {
			continue
		}
		k := portKey{p.GetPublishedPort(), p.GetProtocol()}
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
	free := func(k portKey) bool {
		_, taken := used[k]
		return !taken && !mine[k]
	}
	for i, p := range out {
		if p.PublishedPort != 0 {
			continue
		}
		if old, ok := prev[portKey{p.TargetPort, p.Protocol}]; ok && free(portKey{old, p.Protocol}) {
			p.PublishedPort = old
			mine[portKey{old, p.Protocol}] = true
			continue
		}
		for port := r.first; port <= r.last; port++ {
			if k := (portKey{port, p.Protocol}); free(k) {
				p.PublishedPort = port
				mine[k] = true
				break
			}
		}
		if p.PublishedPort == 0 {
			return fmt.Errorf("ServiceSpec.Ports[%d].Published: no free %s port left in the dynamic range %s; set one explicitly or remove a service: %w",
				i, protoName(p.Protocol), r, errdefs.ErrInvalidSpec)
		}
	}
	svc.Endpoint = &api.Endpoint{Ports: out}
	return nil
}
