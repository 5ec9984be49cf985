package dispatch

import (
	"net"
	"net/netip"
	"time"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/runtime"
)

// runtimeTask converts a task as the manager stores it into what a runtime
// is asked to run. Resource limits (not reservations) are what a runtime
// enforces.
func runtimeTask(t *api.Task) runtime.Task {
	spec := t.GetSpec()
	limits := spec.GetResources().GetLimits()
	return runtime.Task{
		ID:          t.GetId(),
		ServiceID:   t.GetServiceId(),
		ServiceName: t.GetServiceName(),
		Slot:        t.GetSlot(),
		NodeID:      t.GetNodeId(),
		Spec: runtime.Spec{
			Command:         append([]string(nil), spec.GetCommand()...),
			Env:             append([]string(nil), spec.GetEnv()...),
			Dir:             spec.GetDir(),
			StopSignal:      spec.GetStopSignal(),
			StopGracePeriod: time.Duration(spec.GetStopGracePeriod()),
			Resources: runtime.Resources{
				NanoCPUs:    limits.GetNanoCpus(),
				MemoryBytes: limits.GetMemoryBytes(),
			},
			Ports: portRequests(spec.GetPorts()),
		},
	}
}

// portRequests converts a task's ports: every target gets a host port, the
// published one in host mode, one the runtime picks in ingress mode (the
// routing mesh forwards the published port to it).
func portRequests(ports []*api.PortConfig) []runtime.PortRequest {
	if len(ports) == 0 {
		return nil
	}
	out := make([]runtime.PortRequest, len(ports))
	for i, p := range ports {
		out[i] = runtime.PortRequest{Target: uint16(p.GetTargetPort()), Protocol: protocolName(p.GetProtocol())}
		if p.GetMode() == api.PublishMode_PUBLISH_MODE_HOST {
			out[i].HostPort = uint16(p.GetPublishedPort())
		}
	}
	return out
}

func protocolName(p api.PortProtocol) string {
	if p == api.PortProtocol_PORT_PROTOCOL_UDP {
		return runtime.ProtocolUDP
	}
	return runtime.ProtocolTCP
}

// runtimeEndpoints asks a started controller where its ports are, if its
// runtime can say.
func runtimeEndpoints(ctl runtime.Controller) []runtime.Endpoint {
	rep, ok := ctl.(runtime.EndpointReporter)
	if !ok {
		return nil
	}
	return rep.Endpoints()
}

// taskEndpoints converts what the runtime said about a task's ports for the
// wire. An unspecified address goes on the wire as "" (the node's address,
// which the dispatcher fills in).
func taskEndpoints(eps []runtime.Endpoint) []*api.TaskEndpoint {
	if len(eps) == 0 {
		return nil
	}
	out := make([]*api.TaskEndpoint, len(eps))
	for i, e := range eps {
		te := &api.TaskEndpoint{TargetPort: uint32(e.Target), Port: uint32(e.Addr.Port())}
		if e.Protocol == runtime.ProtocolUDP {
			te.Protocol = api.PortProtocol_PORT_PROTOCOL_UDP
		}
		if ip := e.Addr.Addr(); ip.IsValid() && !ip.IsUnspecified() {
			te.Ip = ip.String()
		}
		out[i] = te
	}
	return out
}

// fillNodeAddr sets the address of the endpoints that have none (they are
// on the node's address) from nodeAddr, the "host:port" the node's session
// was seen from.
func fillNodeAddr(st *api.TaskStatus, nodeAddr string) {
	if len(st.GetEndpoints()) == 0 {
		return
	}
	host := nodeAddr
	if h, _, err := net.SplitHostPort(nodeAddr); err == nil {
		host = h
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return
	}
	for _, e := range st.Endpoints {
		if e.GetIp() == "" {
			e.Ip = ip.Unmap().String()
		}
	}
}
