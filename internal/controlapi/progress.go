package controlapi

import (
	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/state"
)

// withProgress returns svc with its progress counted from its tasks in tx:
// a shallow copy (nested messages are shared, and read only), so the
// store's object is not modified.
func withProgress(tx state.ReadTx, svc *api.Service) *api.Service {
	if svc == nil {
		return nil
	}
	tasks, err := tx.FindTasks(state.ByServiceID(svc.GetId()))
	if err != nil {
		return svc
	}
	p := &api.ServiceProgress{}
	if r, ok := svc.GetSpec().GetMode().(*api.ServiceSpec_Replicated); ok {
		p.Desired = r.Replicated.GetReplicas()
	}
	_, global := svc.GetSpec().GetMode().(*api.ServiceSpec_Global)
	for _, t := range tasks {
		if t.GetDesiredState() != api.TaskState_TASK_STATE_RUNNING {
			continue
		}
		if global {
			p.Desired++
		}
		if t.GetStatus().GetState() == api.TaskState_TASK_STATE_RUNNING {
			p.Running++
			if t.GetSpecVersion() == svc.GetSpecVersion() {
				p.Updated++
			}
		}
	}
	return &api.Service{Id: svc.Id, Meta: svc.Meta, Spec: svc.Spec, SpecVersion: svc.SpecVersion,
		UpdateStatus: svc.UpdateStatus, Endpoint: svc.Endpoint, Progress: p}
}
