package shoal

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/pki"
)

// This file is the one place public types convert to and from internal/api:
// specs are checked for what only the public types can get wrong, then
// converted; stored objects convert back for the API's answers.

func copyMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func specError(field, rule string, args ...any) error {
	return fmt.Errorf("%s: %s: %w", field, fmt.Sprintf(rule, args...), ErrInvalidSpec)
}

// toAPIServiceSpec checks what only the public types can get wrong (negative
// counts, unknown enum values) and converts; the manager validates the rest.
func toAPIServiceSpec(s ServiceSpec) (*api.ServiceSpec, error) {
	out := &api.ServiceSpec{Name: s.Name, Labels: copyMap(s.Labels)}
	switch s.Mode {
	case Replicated:
		if s.Replicas < 0 {
			return nil, specError("ServiceSpec.Replicas", "must be >= 0, got %d", s.Replicas)
		}
		out.Mode = &api.ServiceSpec_Replicated{Replicated: &api.ReplicatedService{Replicas: uint64(s.Replicas)}}
	case Global:
		if s.Replicas != 0 {
			return nil, specError("ServiceSpec.Replicas", "must be 0 for a global service, got %d", s.Replicas)
		}
		out.Mode = &api.ServiceSpec_Global{Global: &api.GlobalService{}}
	default:
		return nil, specError("ServiceSpec.Mode", "must be Replicated or Global, got %d", int(s.Mode))
	}
	ts, err := toAPITaskSpec(s.Task)
	if err != nil {
		return nil, err
	}
	out.Task = ts
	u := s.Update
	if u.Parallelism < 0 {
		return nil, specError("ServiceSpec.Update.Parallelism", "must be >= 0, got %d", u.Parallelism)
	}
	if u.Order != StopFirst && u.Order != StartFirst {
		return nil, specError("ServiceSpec.Update.Order", "must be StopFirst or StartFirst, got %d", int(u.Order))
	}
	out.Update = &api.UpdateConfig{Parallelism: uint64(u.Parallelism), Delay: int64(u.Delay), Order: api.UpdateOrder(u.Order)}
	for i, p := range s.Ports {
		if p.Protocol != TCP && p.Protocol != UDP {
			return nil, specError(fmt.Sprintf("ServiceSpec.Ports[%d].Protocol", i), "must be TCP or UDP, got %d", int(p.Protocol))
		}
		if p.Mode != Ingress && p.Mode != Host {
			return nil, specError(fmt.Sprintf("ServiceSpec.Ports[%d].Mode", i), "must be Ingress or Host, got %d", int(p.Mode))
		}
		out.Task.Ports = append(out.Task.Ports, &api.PortConfig{TargetPort: uint32(p.Target), PublishedPort: uint32(p.Published),
			Protocol: api.PortProtocol(p.Protocol), Mode: api.PublishMode(p.Mode)})
	}
	return out, nil
}

func fromAPIPorts(ps []*api.PortConfig) []PortConfig {
	if len(ps) == 0 {
		return nil
	}
	out := make([]PortConfig, len(ps))
	for i, p := range ps {
		out[i] = PortConfig{Target: uint16(p.GetTargetPort()), Published: uint16(p.GetPublishedPort()),
			Protocol: Protocol(p.GetProtocol()), Mode: PublishMode(p.GetMode())}
	}
	return out
}

func fromAPITaskEndpoints(es []*api.TaskEndpoint) []TaskEndpoint {
	if len(es) == 0 {
		return nil
	}
	out := make([]TaskEndpoint, 0, len(es))
	for _, e := range es {
		te := TaskEndpoint{Target: uint16(e.GetTargetPort()), Protocol: Protocol(e.GetProtocol())}
		if ip, err := netip.ParseAddr(e.GetIp()); err == nil {
			te.Addr = netip.AddrPortFrom(ip.Unmap(), uint16(e.GetPort()))
		} else {
			te.Addr = netip.AddrPortFrom(netip.Addr{}, uint16(e.GetPort()))
		}
		out = append(out, te)
	}
	return out
}

func toAPITaskSpec(t TaskSpec) (*api.TaskSpec, error) {
	if t.MaxReplicasPerNode < 0 {
		return nil, specError("ServiceSpec.Task.MaxReplicasPerNode", "must be >= 0, got %d", t.MaxReplicasPerNode)
	}
	r := t.Restart
	if r.MaxAttempts < 0 {
		return nil, specError("ServiceSpec.Task.Restart.MaxAttempts", "must be >= 0, got %d", r.MaxAttempts)
	}
	if r.Condition < RestartAny || r.Condition > RestartNever {
		return nil, specError("ServiceSpec.Task.Restart.Condition", "must be RestartAny, RestartOnFailure or RestartNever, got %d", int(r.Condition))
	}
	out := &api.TaskSpec{
		Command:         append([]string(nil), t.Command...),
		Env:             append([]string(nil), t.Env...),
		Dir:             t.Dir,
		StopSignal:      t.StopSignal,
		StopGracePeriod: int64(t.StopGracePeriod),
		Resources: &api.ResourceRequirements{
			Reservations: &api.Resources{NanoCpus: t.Reservations.NanoCPUs, MemoryBytes: t.Reservations.MemoryBytes, Pids: t.Reservations.Pids},
			Limits:       &api.Resources{NanoCpus: t.Limits.NanoCPUs, MemoryBytes: t.Limits.MemoryBytes, Pids: t.Limits.Pids},
		},
		Placement: &api.Placement{Constraints: append([]string(nil), t.Constraints...), MaxReplicasPerNode: uint64(t.MaxReplicasPerNode),
			Preferences: append([]string(nil), t.Preferences...)},
		Restart: &api.RestartPolicy{Condition: api.RestartCondition(r.Condition), Delay: int64(r.Delay),
			MaxAttempts: uint64(r.MaxAttempts), Window: int64(r.Window)},
		ForceUpdate: t.ForceUpdate,
		Image:       t.Image, Args: slices.Clone(t.Args), User: t.User, Hostname: t.Hostname,
		ReadOnlyRootfs: t.ReadOnlyRootfs, CapAdd: slices.Clone(t.CapAdd), CapDrop: slices.Clone(t.CapDrop),
		Sysctls: copyMap(t.Sysctls), Init: t.Init, ContainerLabels: copyMap(t.ContainerLabels), HostNetwork: t.HostNetwork,
	}
	for i, m := range t.Mounts {
		if m.Type < MountBind || m.Type > MountTmpfs {
			return nil, specError(fmt.Sprintf("ServiceSpec.Task.Mounts[%d].Type", i), "must be MountBind, MountVolume or MountTmpfs, got %d", int(m.Type))
		}
		out.Mounts = append(out.Mounts, &api.Mount{Type: api.MountType(m.Type), Source: m.Source, Target: m.Target,
			ReadOnly: m.ReadOnly, TmpfsSize: m.TmpfsSize})
	}
	for _, u := range t.Ulimits {
		out.Ulimits = append(out.Ulimits, &api.Ulimit{Name: u.Name, Soft: u.Soft, Hard: u.Hard})
	}
	if a := t.RegistryAuth; a != nil {
		out.RegistryAuth = &api.RegistryAuth{Username: a.Username, Password: a.Password, IdentityToken: a.IdentityToken, RegistryToken: a.RegistryToken}
	}
	if h := t.HealthCheck; h != nil {
		hc, err := toAPIHealthCheck(h)
		if err != nil {
			return nil, err
		}
		out.HealthCheck = hc
	}
	return out, nil
}

func toAPIHealthCheck(h *HealthCheck) (*api.HealthCheck, error) {
	out := &api.HealthCheck{
		Command: slices.Clone(h.Command), Interval: int64(h.Interval), Timeout: int64(h.Timeout),
		Retries: int64(h.Retries), StartPeriod: int64(h.StartPeriod), StartInterval: int64(h.StartInterval),
		Disable: h.Disable,
	}
	if c := h.HTTP; c != nil {
		for _, f := range []struct {
			name string
			v    int
		}{{"Min", c.Status.Min}, {"Max", c.Status.Max}} {
			if f.v < 0 || f.v > 999 {
				return nil, specError("ServiceSpec.Task.HealthCheck.HTTP.Status."+f.name, "must be an HTTP status code (100-599) or 0, got %d", f.v)
			}
		}
		out.Http = &api.HTTPCheck{Port: uint32(c.Port), Path: c.Path, StatusMin: uint32(c.Status.Min), StatusMax: uint32(c.Status.Max)}
	}
	if c := h.TCP; c != nil {
		out.Tcp = &api.TCPCheck{Port: uint32(c.Port)}
	}
	return out, nil
}

func fromAPIHealthCheck(h *api.HealthCheck) *HealthCheck {
	if h == nil {
		return nil
	}
	out := &HealthCheck{
		Command: slices.Clone(h.Command), Interval: time.Duration(h.Interval), Timeout: time.Duration(h.Timeout),
		Retries: int(h.Retries), StartPeriod: time.Duration(h.StartPeriod), StartInterval: time.Duration(h.StartInterval),
		Disable: h.Disable,
	}
	if c := h.Http; c != nil {
		out.HTTP = &HTTPCheck{Port: uint16(c.Port), Path: c.Path, Status: StatusRange{Min: int(c.StatusMin), Max: int(c.StatusMax)}}
	}
	if c := h.Tcp; c != nil {
		out.TCP = &TCPCheck{Port: uint16(c.Port)}
	}
	return out
}

func fromAPITaskSpec(t *api.TaskSpec) TaskSpec {
	if t == nil {
		return TaskSpec{}
	}
	res, lim := t.GetResources().GetReservations(), t.GetResources().GetLimits()
	out := TaskSpec{
		Command:            append([]string(nil), t.Command...),
		Env:                append([]string(nil), t.Env...),
		Dir:                t.Dir,
		StopSignal:         t.StopSignal,
		StopGracePeriod:    time.Duration(t.StopGracePeriod),
		Reservations:       Resources{NanoCPUs: res.GetNanoCpus(), MemoryBytes: res.GetMemoryBytes(), Pids: res.GetPids()},
		Limits:             Resources{NanoCPUs: lim.GetNanoCpus(), MemoryBytes: lim.GetMemoryBytes(), Pids: lim.GetPids()},
		Constraints:        append([]string(nil), t.GetPlacement().GetConstraints()...),
		Preferences:        append([]string(nil), t.GetPlacement().GetPreferences()...),
		MaxReplicasPerNode: int(t.GetPlacement().GetMaxReplicasPerNode()),
		Restart: RestartPolicy{
			Condition:   RestartCondition(t.GetRestart().GetCondition()),
			Delay:       time.Duration(t.GetRestart().GetDelay()),
			MaxAttempts: int(t.GetRestart().GetMaxAttempts()),
			Window:      time.Duration(t.GetRestart().GetWindow()),
		},
		ForceUpdate: t.ForceUpdate,
		Image:       t.Image, Args: slices.Clone(t.Args), User: t.User, Hostname: t.Hostname,
		ReadOnlyRootfs: t.ReadOnlyRootfs, CapAdd: slices.Clone(t.CapAdd), CapDrop: slices.Clone(t.CapDrop),
		Sysctls: copyMap(t.Sysctls), Init: t.Init, ContainerLabels: copyMap(t.ContainerLabels), HostNetwork: t.HostNetwork,
	}
	for _, m := range t.Mounts {
		out.Mounts = append(out.Mounts, Mount{Type: MountType(m.GetType()), Source: m.GetSource(), Target: m.GetTarget(),
			ReadOnly: m.GetReadOnly(), TmpfsSize: m.GetTmpfsSize()})
	}
	for _, u := range t.Ulimits {
		out.Ulimits = append(out.Ulimits, Ulimit{Name: u.GetName(), Soft: u.GetSoft(), Hard: u.GetHard()})
	}
	if a := t.RegistryAuth; a != nil {
		out.RegistryAuth = &RegistryAuth{a.Username, a.Password, a.IdentityToken, a.RegistryToken}
	}
	out.HealthCheck = fromAPIHealthCheck(t.HealthCheck)
	return out
}

func unixTime(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

func fromAPIMeta(m *api.Meta) Meta {
	return Meta{Version: Version(m.GetVersion()), CreatedAt: unixTime(m.GetCreatedAt()), UpdatedAt: unixTime(m.GetUpdatedAt())}
}

func fromAPIService(s *api.Service) *Service {
	if s == nil {
		return nil
	}
	spec := s.GetSpec()
	out := &Service{
		ID:          s.Id,
		Meta:        fromAPIMeta(s.Meta),
		SpecVersion: s.SpecVersion,
		Spec: ServiceSpec{
			Name:   spec.GetName(),
			Labels: copyMap(spec.GetLabels()),
			Task:   fromAPITaskSpec(spec.GetTask()),
			Update: UpdatePolicy{
				Parallelism: int(spec.GetUpdate().GetParallelism()),
				Delay:       time.Duration(spec.GetUpdate().GetDelay()),
				Order:       UpdateOrder(spec.GetUpdate().GetOrder()),
			},
			Ports: fromAPIPorts(spec.GetTask().GetPorts()),
		},
		Ports: fromAPIPorts(s.GetEndpoint().GetPorts()),
		UpdateStatus: UpdateStatus{
			State:       UpdateState(s.GetUpdateStatus().GetState()),
			StartedAt:   unixTime(s.GetUpdateStatus().GetStartedAt()),
			CompletedAt: unixTime(s.GetUpdateStatus().GetCompletedAt()),
			Message:     s.GetUpdateStatus().GetMessage(),
		},
		Progress: ServiceProgress{Desired: int(s.GetProgress().GetDesired()), Running: int(s.GetProgress().GetRunning()),
			Updated: int(s.GetProgress().GetUpdated())},
	}
	switch m := spec.GetMode().(type) {
	case *api.ServiceSpec_Replicated:
		out.Spec.Mode = Replicated
		out.Spec.Replicas = int(m.Replicated.GetReplicas())
	case *api.ServiceSpec_Global:
		out.Spec.Mode = Global
	}
	return out
}

func fromAPITask(t *api.Task) *Task {
	if t == nil {
		return nil
	}
	st := t.GetStatus()
	return &Task{
		ID:           t.Id,
		Meta:         fromAPIMeta(t.Meta),
		ServiceID:    t.ServiceId,
		ServiceName:  t.ServiceName,
		Slot:         t.Slot,
		NodeID:       t.NodeId,
		Spec:         fromAPITaskSpec(t.Spec),
		SpecVersion:  t.SpecVersion,
		DesiredState: TaskState(t.DesiredState),
		Status: TaskStatus{
			State:        TaskState(st.GetState()),
			Timestamp:    unixTime(st.GetTimestamp()),
			Message:      st.GetMessage(),
			Err:          st.GetErr(),
			ExitCode:     int(st.GetExitCode()),
			Health:       HealthState(st.GetHealth()),
			HealthOutput: st.GetHealthOutput(),
		},
		Endpoints: fromAPITaskEndpoints(st.GetEndpoints()),
	}
}

func fromAPINode(n *api.Node) *NodeInfo {
	if n == nil {
		return nil
	}
	d := n.GetDescription()
	info := &NodeInfo{
		ID:           n.Id,
		Meta:         fromAPIMeta(n.Meta),
		Role:         NodeRole(n.Role),
		Availability: Availability(n.GetSpec().GetAvailability() + 1),
		Labels:       copyMap(n.GetSpec().GetLabels()),
		Hostname:     d.GetHostname(),
		Platform:     Platform{OS: d.GetPlatform().GetOs(), Arch: d.GetPlatform().GetArch()},
		Resources:    Resources{NanoCPUs: d.GetResources().GetNanoCpus(), MemoryBytes: d.GetResources().GetMemoryBytes()},
		State:        NodeState(n.GetStatus().GetState()),
		StateMessage: n.GetStatus().GetMessage(),
		Addr:         n.GetStatus().GetAddr(),
		Leader:       n.GetManagerStatus().GetLeader(),
	}
	if n.Role == api.NodeRole_NODE_ROLE_MANAGER {
		ms := n.GetManagerStatus()
		switch {
		case ms.GetLeader():
			info.ManagerStatus = Leader
		case ms.GetReachability() == api.Reachability_REACHABILITY_UNREACHABLE:
			info.ManagerStatus = Unreachable
		default:
			info.ManagerStatus = Reachable
		}
		// A manager without an agent holds no dispatcher session: it is
		// ready while the leader hears from it.
		if ms.GetNoAgent() && info.State == NodeUnknown {
			info.State = NodeReady
			if info.ManagerStatus == Unreachable {
				info.State = NodeDown
			}
		}
	}
	return info
}

func fromAPICluster(c *api.Cluster) *ClusterInfo {
	if c == nil {
		return nil
	}
	return &ClusterInfo{
		ID:                c.Id,
		Meta:              fromAPIMeta(c.Meta),
		Name:              c.GetSpec().GetName(),
		TaskHistoryLimit:  int(c.GetSpec().GetTaskHistoryLimit()),
		HeartbeatPeriod:   time.Duration(c.GetSpec().GetHeartbeatPeriod()),
		WorkerToken:       c.GetJoinTokens().GetWorker(),
		ManagerToken:      c.GetJoinTokens().GetManager(),
		CertValidity:      certValidity(c),
		RootCADigest:      rootDigest(c),
		RootCACert:        c.GetRootCa().GetCertPem(),
		AutoLock:          c.GetSpec().GetAutolock(),
		RootRotating:      c.GetRootCa().GetRotation() != nil,
		GossipKeyRotating: c.GetGossip().GetRotationPhase() != 0,
		UnlockKey:         c.GetUnlockKey(),
	}
}

func certValidity(c *api.Cluster) time.Duration {
	if v := time.Duration(c.GetSpec().GetNodeCertValidity()); v > 0 {
		return v
	}
	return pki.DefaultCertValidity
}

func rootDigest(c *api.Cluster) string {
	root, err := pki.ParseRootCA(api.FirstRoot(c.GetRootCa().GetCertPem()), nil)
	if err != nil {
		return ""
	}
	return root.Digest()
}

func fromAPIEvent(e *api.WatchEvent) (Event, bool) {
	ev := Event{Version: Version(e.Version)}
	switch e.Action {
	case api.StoreAction_KIND_CREATE:
		ev.Action = Created
	case api.StoreAction_KIND_UPDATE:
		ev.Action = Updated
	case api.StoreAction_KIND_DELETE:
		ev.Action = Removed
	default:
		return ev, false
	}
	switch o := e.GetObject().GetTarget().(type) {
	case *api.StoreAction_Service:
		ev.Kind, ev.Service, ev.OldService = KindService, fromAPIService(o.Service), fromAPIService(e.GetOld().GetService())
	case *api.StoreAction_Task:
		ev.Kind, ev.Task, ev.OldTask = KindTask, fromAPITask(o.Task), fromAPITask(e.GetOld().GetTask())
	case *api.StoreAction_Node:
		ev.Kind, ev.Node, ev.OldNode = KindNode, fromAPINode(o.Node), fromAPINode(e.GetOld().GetNode())
	case *api.StoreAction_Cluster:
		ev.Kind, ev.Cluster = KindCluster, fromAPICluster(o.Cluster)
	default:
		return ev, false
	}
	return ev, true
}
