package controlapi

import (
	"fmt"
	"regexp"
	"strings"
	"time"

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
	if err := ValidateTaskSpec(s.Task); err != nil {
		return err
	}
	if u := s.Update; u != nil {
		if u.Delay < 0 {
			return invalid("ServiceSpec.Update.Delay", "must be >= 0")
		}
		if u.Order != api.UpdateOrder_UPDATE_ORDER_STOP_FIRST && u.Order != api.UpdateOrder_UPDATE_ORDER_START_FIRST {
			return invalid("ServiceSpec.Update.Order", "must be stop-first or start-first")
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

// ValidateTaskSpec checks a task spec; see ValidateServiceSpec.
func ValidateTaskSpec(t *api.TaskSpec) error {
	if t == nil || len(t.Command) == 0 || t.Command[0] == "" {
		return invalid("ServiceSpec.Task.Command", "is required (the program and its arguments)")
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
	} {
		if r.v < 0 {
			return invalid("ServiceSpec.Task."+r.name, "must be >= 0")
		}
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
	return nil
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
