package dispatch

import (
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/runtime"
)

// RuntimeTask converts task t as the manager stores it into what the
// runtime of its node is asked to run; node is the description the node's
// agent reports (AgentConfig.Description, nil if it reports none). Limits
// become Spec.Resources and reservations Spec.Reservations, the container
// labels Spec.Labels, and the hostname template is expanded for the task,
// its service and node (see TaskSpec.Hostname in package shoal). The agent
// calls it for every task it runs; the control API calls it on a sample
// task to check a spec the way the agent will see it. An error (a template
// that does not execute) wraps runtime.ErrInvalidTask: the task can never
// run, so the agent rejects it.
func RuntimeTask(t *api.Task, node *api.NodeDescription) (runtime.Task, error) {
	spec := t.GetSpec()
	res := spec.GetResources()
	hostname, err := expandTemplate(spec.GetHostname(), newTemplateContext(t, node))
	if err != nil {
		return runtime.Task{}, fmt.Errorf("%w: Spec.Hostname: template %q: %w", runtime.ErrInvalidTask, spec.GetHostname(), err)
	}
	return runtime.Task{
		ID:          t.GetId(),
		ServiceID:   t.GetServiceId(),
		ServiceName: t.GetServiceName(),
		Slot:        t.GetSlot(),
		NodeID:      t.GetNodeId(),
		Spec: runtime.Spec{
			Command:         slices.Clone(spec.GetCommand()),
			Args:            slices.Clone(spec.GetArgs()),
			Env:             slices.Clone(spec.GetEnv()),
			Dir:             spec.GetDir(),
			StopSignal:      spec.GetStopSignal(),
			StopGracePeriod: time.Duration(spec.GetStopGracePeriod()),
			Resources:       runtimeResources(res.GetLimits()),
			Reservations:    runtimeResources(res.GetReservations()),
			Ports:           portRequests(spec.GetPorts()),
			Image:           spec.GetImage(),
			RegistryAuth:    registryAuth(spec.GetRegistryAuth()),
			User:            spec.GetUser(),
			Hostname:        hostname,
			Mounts:          mounts(spec.GetMounts()),
			ReadOnlyRootfs:  spec.GetReadOnlyRootfs(),
			CapAdd:          slices.Clone(spec.GetCapAdd()),
			CapDrop:         slices.Clone(spec.GetCapDrop()),
			Sysctls:         maps.Clone(spec.GetSysctls()),
			Ulimits:         ulimits(spec.GetUlimits()),
			Init:            spec.GetInit(),
			Labels:          maps.Clone(spec.GetContainerLabels()),
			HostNetwork:     spec.GetHostNetwork(),
		},
	}, nil
}

func runtimeResources(r *api.Resources) runtime.Resources {
	return runtime.Resources{NanoCPUs: r.GetNanoCpus(), MemoryBytes: r.GetMemoryBytes(), Pids: r.GetPids()}
}

func registryAuth(a *api.RegistryAuth) runtime.RegistryAuth {
	return runtime.RegistryAuth{Username: a.GetUsername(), Password: a.GetPassword(),
		IdentityToken: a.GetIdentityToken(), RegistryToken: a.GetRegistryToken()}
}

// mounts converts a task's mounts; a type this agent does not know keeps its
// number as its name, which the runtime refuses.
func mounts(ms []*api.Mount) []runtime.Mount {
	if len(ms) == 0 {
		return nil
	}
	out := make([]runtime.Mount, len(ms))
	for i, m := range ms {
		typ := m.GetType().String()
		switch m.GetType() {
		case api.MountType_MOUNT_TYPE_BIND:
			typ = runtime.MountBind
		case api.MountType_MOUNT_TYPE_VOLUME:
			typ = runtime.MountVolume
		case api.MountType_MOUNT_TYPE_TMPFS:
			typ = runtime.MountTmpfs
		}
		out[i] = runtime.Mount{Type: typ, Source: m.GetSource(), Target: m.GetTarget(),
			ReadOnly: m.GetReadOnly(), TmpfsSize: m.GetTmpfsSize()}
	}
	return out
}

func ulimits(us []*api.Ulimit) []runtime.Ulimit {
	if len(us) == 0 {
		return nil
	}
	out := make([]runtime.Ulimit, len(us))
	for i, u := range us {
		out[i] = runtime.Ulimit{Name: u.GetName(), Soft: u.GetSoft(), Hard: u.GetHard()}
	}
	return out
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
