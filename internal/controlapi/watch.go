package controlapi

import (
	"fmt"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/state"
)

// Watch streams change events that match the request.
func (s *Server) Watch(req *api.WatchRequest, stream api.Control_WatchServer) error {
	w := s.store.Watch(watchFilter(req))
	defer w.Cancel()
	if err := stream.Send(&api.WatchMessage{}); err != nil {
		return err
	}
	ctx := stream.Context()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.C:
			if !ok {
				return errdefs.ToGRPC(fmt.Errorf("watch ended: %w", w.Err()))
			}
			msg := &api.WatchMessage{Events: []*api.WatchEvent{toWatchEvent(e)}}
			// Send the rest of what is queued in the same message.
		drain:
			for len(msg.Events) < 256 {
				select {
				case e, ok := <-w.C:
					if !ok {
						break drain
					}
					msg.Events = append(msg.Events, toWatchEvent(e))
				default:
					break drain
				}
			}
			if err := stream.Send(msg); err != nil {
				return err
			}
		}
	}
}

func toWatchEvent(e state.Event) *api.WatchEvent {
	var kind api.StoreAction_Kind
	switch e.Action {
	case state.ActionCreate:
		kind = api.StoreAction_KIND_CREATE
	case state.ActionUpdate:
		kind = api.StoreAction_KIND_UPDATE
	case state.ActionDelete:
		kind = api.StoreAction_KIND_DELETE
	}
	obj, old := redactObject(e.Object), e.Old
	if old != nil {
		old = redactObject(old)
	}
	return &api.WatchEvent{Action: kind, Object: state.StoreAction(kind, obj), Old: state.StoreAction(kind, old), Version: e.Index}
}

func watchFilter(req *api.WatchRequest) state.Filter {
	kinds := map[state.Kind]bool{}
	for _, k := range req.GetKinds() {
		switch k {
		case api.ObjectKind_OBJECT_KIND_NODE:
			kinds[state.KindNode] = true
		case api.ObjectKind_OBJECT_KIND_SERVICE:
			kinds[state.KindService] = true
		case api.ObjectKind_OBJECT_KIND_TASK:
			kinds[state.KindTask] = true
		case api.ObjectKind_OBJECT_KIND_CLUSTER:
			kinds[state.KindCluster] = true
		}
	}
	return func(e state.Event) bool {
		if len(kinds) > 0 && !kinds[e.Kind] {
			return false
		}
		if ids := req.GetIds(); len(ids) > 0 && !contains(ids, e.Object.GetId()) {
			return false
		}
		if sids := req.GetServiceIds(); len(sids) > 0 {
			switch v := e.Object.(type) {
			case *api.Task:
				if !contains(sids, v.ServiceId) {
					return false
				}
			case *api.Service:
				if !contains(sids, v.Id) {
					return false
				}
			default:
				return false
			}
		}
		if nids := req.GetNodeIds(); len(nids) > 0 {
			switch v := e.Object.(type) {
			case *api.Task:
				old, _ := e.Old.(*api.Task)
				if !contains(nids, v.NodeId) && (old == nil || !contains(nids, old.NodeId)) {
					return false
				}
			case *api.Node:
				if !contains(nids, v.Id) {
					return false
				}
			default:
				return false
			}
		}
		return true
	}
}
