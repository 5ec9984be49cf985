package dispatch

import (
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
		},
	}
}
