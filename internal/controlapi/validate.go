package controlapi

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/shoalhq/shoal/dispatch"
	"github.com/shoalhq/shoal/internal/allocator"
	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/pki"
	"github.com/shoalhq/shoal/runtime"
	"github.com/shoalhq/shoal/scheduler"
)

var serviceName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$`)

// MinHeartbeatPeriod is the shortest heartbeat period a cluster accepts: tens
// of milliseconds serve tests; anything shorter only burns CPU.
const MinHeartbeatPeriod = 10 * time.Millisecond

func invalid(field, rule string, args ...any) error {
	return fmt.Errorf("%s: %s: %w", field, fmt.Sprintf(rule, args...), errdefs.ErrInvalidSpec)
}

// ValidateServiceSpec checks a service spec. Errors name the field (as the
// public shoal.ServiceSpec names it) and the rule, and wrap ErrInvalidSpec.
func ValidateServiceSpec(s *api.ServiceSpec) error {
	if s == nil {
		return invalid("ServiceSpec", "is required")
	}
	if s.Name == "" {
		return invalid("ServiceSpec.Name", "is required")
	}
	if !serviceName.MatchString(s.Name) {
		return invalid("ServiceSpec.Name", "%q must be 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit", s.Name)
	}
	if err := validateLabels("ServiceSpec.Labels", s.Labels); err != nil {
		return err
	}
	switch s.Mode.(type) {
	case *api.ServiceSpec_Replicated, *api.ServiceSpec_Global:
	default:
		return invalid("ServiceSpec.Mode", "must be replicated or global")
	}
	if err := validateTaskSpec(s); err != nil {
		return err
	}
	if u := s.Update; u != nil {
		if u.Delay < 0 {
			return invalid("ServiceSpec.Update.Delay", "must be >= 0")
		}
		if u.Order != api.UpdateOrder_UPDATE_ORDER_STOP_FIRST && u.Order != api.UpdateOrder_UPDATE_ORDER_START_FIRST {
			return invalid("ServiceSpec.Update.Order", "must be stop-first or start-first")
		}
		if u.Order == api.UpdateOrder_UPDATE_ORDER_START_FIRST {
			for i, p := range s.GetTask().GetPorts() {
				if p.GetMode() == api.PublishMode_PUBLISH_MODE_HOST {
					return invalid("ServiceSpec.Update.Order", "start-first runs a slot's old and new task at once, which ServiceSpec.Ports[%d] (host mode, one task per node and port) forbids: use stop-first", i)
				}
			}
		}
	}
	return nil
}

func validateLabels(field string, labels map[string]string) error {
	for k := range labels {
		if strings.TrimSpace(k) == "" {
			return invalid(field, "keys must not be empty")
		}
	}
	return nil
}

// validateTaskSpec checks the task spec of service spec s; see
// ValidateServiceSpec.
func validateTaskSpec(s *api.ServiceSpec) error {
	t := s.Task
	if t.GetImage() == "" && (len(t.GetCommand()) == 0 || t.Command[0] == "") {
		return invalid("ServiceSpec.Task.Command", "is required (the program and its arguments) unless ServiceSpec.Task.Image is set")
	}
	if t.Image != "" {
		if _, err := name.ParseReference(t.Image); err != nil {
			return invalid("ServiceSpec.Task.Image", "%q is not an image reference: %v", t.Image, err)
		}
	} else if t.HostNetwork {
		return invalid("ServiceSpec.Task.HostNetwork", "needs ServiceSpec.Task.Image: a program of the node always runs in the node's network")
	}
	for i, e := range t.Env {
		k, _, ok := strings.Cut(e, "=")
		if !ok || k == "" {
			return invalid(fmt.Sprintf("ServiceSpec.Task.Env[%d]", i), "%q must have the form KEY=value", e)
		}
	}
	if t.StopSignal != "" {
		if _, err := runtime.ParseSignal(t.StopSignal); err != nil {
			return invalid("ServiceSpec.Task.StopSignal", "%v", err)
		}
	}
	if t.StopGracePeriod < 0 {
		return invalid("ServiceSpec.Task.StopGracePeriod", "must be >= 0")
	}
	res := t.GetResources()
	for _, r := range []struct {
		name string
		v    int64
	}{
		{"Reservations.NanoCPUs", res.GetReservations().GetNanoCpus()},
		{"Reservations.MemoryBytes", res.GetReservations().GetMemoryBytes()},
		{"Limits.NanoCPUs", res.GetLimits().GetNanoCpus()},
		{"Limits.MemoryBytes", res.GetLimits().GetMemoryBytes()},
		{"Limits.Pids", res.GetLimits().GetPids()},
	} {
		if r.v < 0 {
			return invalid("ServiceSpec.Task."+r.name, "must be >= 0")
		}
	}
	if res.GetReservations().GetPids() != 0 {
		return invalid("ServiceSpec.Task.Reservations.Pids", "must be 0: processes are only limited (Limits.Pids), never reserved")
	}
	if l, r := res.GetLimits().GetNanoCpus(), res.GetReservations().GetNanoCpus(); l > 0 && r > l {
		return invalid("ServiceSpec.Task.Reservations.NanoCPUs", "must not exceed Limits.NanoCPUs (%d > %d)", r, l)
	}
	if l, r := res.GetLimits().GetMemoryBytes(), res.GetReservations().GetMemoryBytes(); l > 0 && r > l {
		return invalid("ServiceSpec.Task.Reservations.MemoryBytes", "must not exceed Limits.MemoryBytes (%d > %d)", r, l)
	}
	if _, err := scheduler.ParseConstraints(t.GetPlacement().GetConstraints()); err != nil {
		return invalid("ServiceSpec.Task.Constraints", "%v", err)
	}
	if _, err := scheduler.ParsePreferences(t.GetPlacement().GetPreferences()); err != nil {
		return invalid("ServiceSpec.Task.Preferences", "%v", err)
	}
	if err := validatePorts(t.Ports); err != nil {
		return err
	}
	if err := validateHealthCheck(t.HealthCheck, t.Ports); err != nil {
		return err
	}
	if rp := t.Restart; rp != nil {
		switch rp.Condition {
		case api.RestartCondition_RESTART_CONDITION_ANY, api.RestartCondition_RESTART_CONDITION_ON_FAILURE,
			api.RestartCondition_RESTART_CONDITION_NONE:
		default:
			return invalid("ServiceSpec.Task.Restart.Condition", "must be any, on-failure or none")
		}
		if rp.Delay < 0 {
			return invalid("ServiceSpec.Task.Restart.Delay", "must be >= 0")
		}
		if rp.Window < 0 {
			return invalid("ServiceSpec.Task.Restart.Window", "must be >= 0")
		}
	}
	return validateAsRuntime(s)
}

// validateHealthCheck checks a task's health check: exactly one test, or
// disable alone; HTTP and TCP checks on a TCP target port of ports; no
// negative duration or retry count.
func validateHealthCheck(h *api.HealthCheck, ports []*api.PortConfig) error {
	if h == nil {
		return nil
	}
	const f = "ServiceSpec.Task.HealthCheck"
	var kinds []string
	if len(h.Command) > 0 {
		kinds = append(kinds, "Command")
	}
	if h.Http != nil {
		kinds = append(kinds, "HTTP")
	}
	if h.Tcp != nil {
		kinds = append(kinds, "TCP")
	}
	switch {
	case h.Disable && len(kinds) > 0:
		return invalid(f+".Disable", "cannot be set with a test (%s): Disable only switches off the image's HEALTHCHECK", strings.Join(kinds, ", "))
	case len(kinds) > 1:
		return invalid(f, "must have exactly one test, got %s", strings.Join(kinds, " and "))
	case len(kinds) == 0 && !h.Disable:
		return invalid(f, "needs a test (Command, HTTP or TCP), or Disable to switch off the image's HEALTHCHECK")
	}
	if len(h.Command) > 0 && h.Command[0] == "" {
		return invalid(f+".Command[0]", "program must not be empty")
	}
	for i, a := range h.Command {
		if strings.IndexByte(a, 0) >= 0 {
			return invalid(fmt.Sprintf("%s.Command[%d]", f, i), "must not contain NUL bytes")
		}
	}
	exposed := func(field string, port uint32) error {
		if port == 0 || port > 0xffff {
			return invalid(field, "must be 1-65535, got %d", port)
		}
		for _, p := range ports {
			if p.GetTargetPort() == port && p.GetProtocol() == api.PortProtocol_PORT_PROTOCOL_TCP {
				return nil
			}
		}
		return invalid(field, "%d/tcp is not a target port of the service (ServiceSpec.Ports)", port)
	}
	if c := h.Http; c != nil {
		if err := exposed(f+".HTTP.Port", c.Port); err != nil {
			return err
		}
		if c.Path != "" && !strings.HasPrefix(c.Path, "/") {
			return invalid(f+".HTTP.Path", "must start with '/' (or be empty for \"/\"), got %q", c.Path)
		}
		if strings.ContainsAny(c.Path, " \r\n\x00") {
			return invalid(f+".HTTP.Path", "must not contain spaces or control characters, got %q", c.Path)
		}
		minS, maxS := c.StatusMin, c.StatusMax
		if minS != 0 || maxS != 0 {
			if minS < 100 || minS > 599 {
				return invalid(f+".HTTP.Status.Min", "must be 100-599, got %d", minS)
			}
			if maxS < minS || maxS > 599 {
				return invalid(f+".HTTP.Status.Max", "must be %d-599 (at least Min), got %d", minS, maxS)
			}
		}
	}
	if c := h.Tcp; c != nil {
		if err := exposed(f+".TCP.Port", c.Port); err != nil {
			return err
		}
	}
	for _, d := range []struct {
		name string
		v    int64
	}{
		{"Interval", h.Interval}, {"Timeout", h.Timeout}, {"Retries", h.Retries},
		{"StartPeriod", h.StartPeriod}, {"StartInterval", h.StartInterval},
	} {
		if d.v < 0 {
			return invalid(f+"."+d.name, "must be >= 0 (0 means the default), got %d", d.v)
		}
	}
	return nil
}

// The sample task and node a spec is checked on: IDs of the real length, a
// short host name.
const (
	sampleTaskID = "sampletask000000000000000"
	sampleNodeID = "samplenode000000000000000"
)

var sampleNode = &api.NodeDescription{Hostname: "sample-node", Platform: &api.Platform{Os: "linux", Arch: "amd64"}}

// validateAsRuntime checks s's task spec the way a node will see it: a
// sample task of the service goes through dispatch.RuntimeTask, as the
// agent's tasks do (which executes the hostname template, so a field the
// template context lacks is found here), and the result through
// runtime.Spec.Validate. The API and the runtime so share one set of rules
// for the container fields (mounts, capabilities, user, sysctls, ulimits,
// the fields that need an image); runtime field names ("Spec.Mounts[1]")
// are reported as the public ones ("ServiceSpec.Task.Mounts[1]").
func validateAsRuntime(s *api.ServiceSpec) error {
	sample := &api.Task{Id: sampleTaskID, ServiceId: sampleTaskID, ServiceName: s.Name, ServiceLabels: s.Labels,
		Slot: 1, NodeId: sampleNodeID, Spec: s.Task}
	if _, global := s.Mode.(*api.ServiceSpec_Global); global {
		sample.Slot = 0
	}
	rt, err := dispatch.RuntimeTask(sample, sampleNode)
	expanded := err == nil
	if expanded {
		err = rt.Spec.Validate()
	}
	if err == nil {
		return nil
	}
	msg, ok := strings.CutPrefix(err.Error(), runtime.ErrInvalidTask.Error()+": ")
	field, rule, found := strings.Cut(msg, ": ")
	if !ok || !found || !errors.Is(err, runtime.ErrInvalidTask) {
		return invalid("ServiceSpec.Task", "%v", err)
	}
	if field == "Spec.CapAdd" && len(s.Task.CapAdd) == 0 {
		field = "Spec.CapDrop" // the runtime names CapAdd for both
	}
	if field == "Spec.Hostname" && expanded && rt.Spec.Hostname != s.Task.Hostname {
		rule += fmt.Sprintf(" (%q is %q for a sample task)", s.Task.Hostname, rt.Spec.Hostname)
	}
	return invalid(runtimeName.ReplaceAllStringFunc(field, publicName), "%s", runtimeName.ReplaceAllStringFunc(rule, publicName))
}

// runtimeName matches a runtime.Spec field name in an error of Validate.
var runtimeName = regexp.MustCompile(`\bSpec\.[A-Za-z]+`)

// publicName returns the public name of runtime field "Spec.X".
func publicName(field string) string {
	switch x := strings.TrimPrefix(field, "Spec."); x {
	case "Resources":
		return "ServiceSpec.Task.Limits"
	case "Labels":
		return "ServiceSpec.Task.ContainerLabels"
	case "Ports":
		return "ServiceSpec.Ports"
	default:
		return "ServiceSpec.Task." + x
	}
}

// ValidateNodeSpec checks a node spec.
func ValidateNodeSpec(s *api.NodeSpec) error {
	if s == nil {
		return invalid("NodeUpdate", "is required")
	}
	switch s.Availability {
	case api.NodeAvailability_NODE_AVAILABILITY_ACTIVE, api.NodeAvailability_NODE_AVAILABILITY_PAUSE,
		api.NodeAvailability_NODE_AVAILABILITY_DRAIN:
	default:
		return invalid("NodeUpdate.Availability", "must be active, pause or drain")
	}
	switch s.DesiredRole {
	case api.NodeRole_NODE_ROLE_WORKER, api.NodeRole_NODE_ROLE_MANAGER:
	default:
		return invalid("NodeUpdate.Role", "must be worker or manager")
	}
	return validateLabels("NodeUpdate.Labels", s.Labels)
}

// ValidateClusterSpec checks a cluster spec.
func ValidateClusterSpec(s *api.ClusterSpec) error {
	if s == nil {
		return invalid("ClusterSpec", "is required")
	}
	if s.TaskHistoryLimit < 0 {
		return invalid("ClusterSpec.TaskHistoryLimit", "must be >= 0")
	}
	if s.HeartbeatPeriod != 0 && time.Duration(s.HeartbeatPeriod) < MinHeartbeatPeriod {
		return invalid("ClusterSpec.HeartbeatPeriod", "must be at least %v", MinHeartbeatPeriod)
	}
	if s.NodeCertValidity != 0 && time.Duration(s.NodeCertValidity) < pki.MinCertValidity {
		return invalid("ClusterSpec.NodeCertValidity", "must be at least %v", pki.MinCertValidity)
	}
	return nil
}

// validatePorts checks a service's ports: targets and published ports in
// 1-65535 (published 0 asks for an allocated port in ingress mode; host
// mode needs an explicit one), known protocols and modes, no target listed
// twice for one protocol and no published port used twice in the service.
func validatePorts(ports []*api.PortConfig) error {
	targets := make(map[allocator.PortKey]int, len(ports))
	published := make(map[allocator.PortKey]int, len(ports))
	for i, p := range ports {
		field := fmt.Sprintf("ServiceSpec.Ports[%d]", i)
		if p == nil {
			return invalid(field, "must not be nil")
		}
		if p.TargetPort < 1 || p.TargetPort > 65535 {
			return invalid(field+".Target", "must be 1-65535, got %d", p.TargetPort)
		}
		if p.PublishedPort > 65535 {
			return invalid(field+".Published", "must be 1-65535 (or 0 to allocate one in ingress mode), got %d", p.PublishedPort)
		}
		switch p.Protocol {
		case api.PortProtocol_PORT_PROTOCOL_TCP, api.PortProtocol_PORT_PROTOCOL_UDP:
		default:
			return invalid(field+".Protocol", "must be tcp or udp, got %d", int32(p.Protocol))
		}
		switch p.Mode {
		case api.PublishMode_PUBLISH_MODE_INGRESS:
		case api.PublishMode_PUBLISH_MODE_HOST:
			if p.PublishedPort == 0 {
				return invalid(field+".Published", "must be set in host mode (1-65535)")
			}
		default:
			return invalid(field+".Mode", "must be ingress or host, got %d", int32(p.Mode))
		}
		tk := allocator.PortKey{Port: p.TargetPort, Protocol: p.Protocol}
		if j, dup := targets[tk]; dup {
			return invalid(field+".Target", "%s is already listed in Ports[%d]", tk, j)
		}
		targets[tk] = i
		if p.PublishedPort != 0 {
			pk := allocator.PortKey{Port: p.PublishedPort, Protocol: p.Protocol}
			if j, dup := published[pk]; dup {
				return invalid(field+".Published", "%s is already published by Ports[%d]", pk, j)
			}
			published[pk] = i
		}
	}
	return nil
}
