package controlapi

import (
	"context"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/state"
)

// GetTask returns a task by ID.
func (s *Server) GetTask(ctx context.Context, req *api.GetRequest) (*api.TaskResponse, error) {
	if err := s.readBarrier(ctx); err != nil {
		return nil, err
	}
	var t *api.Task
	s.read(func(tx state.ReadTx) { t = tx.GetTask(req.GetId()) })
	if t == nil {
		return nil, notFound("task", req.GetId())
	}
	return &api.TaskResponse{Task: RedactTask(t)}, nil
}

// ListTasks lists tasks. Service IDs may also be service names.
func (s *Server) ListTasks(ctx context.Context, req *api.ListTasksRequest) (*api.ListTasksResponse, error) {
	if err := s.readBarrier(ctx); err != nil {
		return nil, err
	}
	var out []*api.Task
	var err error
	s.read(func(tx state.ReadTx) {
		var bys []state.By
		for _, ref := range req.GetServiceIds() {
			id := ref
			if svc := lookupService(tx, ref); svc != nil {
				id = svc.Id
			}
			bys = append(bys, state.ByServiceID(id))
		}
		if len(bys) == 0 {
			for _, n := range req.GetNodeIds() {
				bys = append(bys, state.ByNodeID(n))
			}
		}
		by := state.All()
		if len(bys) > 0 {
			by = state.Or(bys...)
		}
		var all []*api.Task
		all, err = tx.FindTasks(by)
		for _, t := range all {
			if matchTask(t, req) {
				out = append(out, t)
			}
		}
	})
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return &api.ListTasksResponse{Tasks: redactTasks(out)}, nil
}

func matchTask(t *api.Task, req *api.ListTasksRequest) bool {
	if ns := req.GetNodeIds(); len(ns) > 0 && !contains(ns, t.NodeId) {
		return false
	}
	if ds := req.GetDesiredStates(); len(ds) > 0 {
		ok := false
		for _, d := range ds {
			ok = ok || t.DesiredState == d
		}
		if !ok {
			return false
		}
	}
	if sl := req.GetSlots(); len(sl) > 0 {
		ok := false
		for _, x := range sl {
			ok = ok || t.Slot == x
		}
		if !ok {
			return false
		}
	}
	return true
}
