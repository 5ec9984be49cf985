// Package controlapi serves the control API (api.ControlServer) of a manager
// over its object store: services, tasks, nodes and the cluster object.
// Every request is validated before anything is written; errors are gRPC
// status errors that errdefs.FromGRPC turns back into the module's sentinels.
package controlapi

import (
	"context"
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/identity"
	"github.com/shoalhq/shoal/internal/state"
)

// Server implements api.ControlServer.
type Server struct {
	api.UnimplementedControlServer
	store *state.Store
}

var _ api.ControlServer = (*Server)(nil)

// New returns a control API server over store.
func New(store *state.Store) *Server { return &Server{store: store} }

func notFound(kind, id string) error {
	return errdefs.ToGRPC(fmt.Errorf("%s %q: %w", kind, id, errdefs.ErrNotFound))
}

// CreateService validates the spec and stores a new service.
func (s *Server) CreateService(ctx context.Context, req *api.CreateServiceRequest) (*api.ServiceResponse, error) {
	if err := ValidateServiceSpec(req.GetSpec()); err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	svc := &api.Service{Id: identity.NewID(), Spec: req.Spec, SpecVersion: 1}
	err := s.store.Update(ctx, func(tx state.WriteTx) error { return tx.CreateService(svc) })
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return s.GetService(ctx, &api.GetRequest{Id: svc.Id})
}

// lookupService finds a service by ID, then by name, then by unique ID prefix.
func lookupService(tx state.ReadTx, ref string) *api.Service {
	if ref == "" {
		return nil
	}
	if svc := tx.GetService(ref); svc != nil {
		return svc
	}
	if byName, _ := tx.FindServices(state.ByName(ref)); len(byName) == 1 {
		return byName[0]
	}
	if byPrefix, _ := tx.FindServices(state.ByIDPrefix(ref)); len(byPrefix) == 1 {
		return byPrefix[0]
	}
	return nil
}

// GetService returns a service by ID or name.
func (s *Server) GetService(ctx context.Context, req *api.GetRequest) (*api.ServiceResponse, error) {
	var svc *api.Service
	s.store.View(func(tx state.ReadTx) { svc = lookupService(tx, req.GetId()) })
	if svc == nil {
		return nil, notFound("service", req.GetId())
	}
	return &api.ServiceResponse{Service: svc}, nil
}

// ListServices lists services, optionally by names or ID prefixes.
func (s *Server) ListServices(ctx context.Context, req *api.ListServicesRequest) (*api.ListServicesResponse, error) {
	var bys []state.By
	for _, n := range req.GetNames() {
		bys = append(bys, state.ByName(n))
	}
	for _, p := range req.GetIdPrefixes() {
		bys = append(bys, state.ByIDPrefix(p))
	}
	by := state.All()
	if len(bys) > 0 {
		by = state.Or(bys...)
	}
	var out []*api.Service
	var err error
	s.store.View(func(tx state.ReadTx) { out, err = tx.FindServices(by) })
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return &api.ListServicesResponse{Services: out}, nil
}

// UpdateService replaces a service's spec. The request's version must be the
// service's current version. A change of the task spec bumps SpecVersion,
// which makes the orchestrator replace the tasks.
func (s *Server) UpdateService(ctx context.Context, req *api.UpdateServiceRequest) (*api.ServiceResponse, error) {
	if err := ValidateServiceSpec(req.GetSpec()); err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	var id string
	err := s.store.Update(ctx, func(tx state.WriteTx) error {
		cur := lookupService(tx, req.GetId())
		if cur == nil {
			return fmt.Errorf("service %q: %w", req.GetId(), errdefs.ErrNotFound)
		}
		id = cur.Id
		if cur.Meta.GetVersion() != req.GetVersion() {
			return fmt.Errorf("service %s: version %d is not the current %d: %w", cur.Id, req.GetVersion(), cur.Meta.GetVersion(), errdefs.ErrConflict)
		}
		_, wasGlobal := cur.Spec.Mode.(*api.ServiceSpec_Global)
		_, isGlobal := req.Spec.Mode.(*api.ServiceSpec_Global)
		if wasGlobal != isGlobal {
			return fmt.Errorf("ServiceSpec.Mode: cannot change between replicated and global; remove and create the service: %w", errdefs.ErrInvalidSpec)
		}
		if !proto.Equal(cur.Spec.Task, req.Spec.Task) {
			cur.SpecVersion++
		}
		cur.Spec = req.Spec
		return tx.UpdateService(cur)
	})
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return s.GetService(ctx, &api.GetRequest{Id: id})
}

// RemoveService deletes a service; the orchestrator then stops and removes
// its tasks.
func (s *Server) RemoveService(ctx context.Context, req *api.RemoveRequest) (*api.RemoveResponse, error) {
	err := s.store.Update(ctx, func(tx state.WriteTx) error {
		cur := lookupService(tx, req.GetId())
		if cur == nil {
			return fmt.Errorf("service %q: %w", req.GetId(), errdefs.ErrNotFound)
		}
		return tx.DeleteService(cur.Id)
	})
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return &api.RemoveResponse{}, nil
}

// GetTask returns a task by ID.
func (s *Server) GetTask(ctx context.Context, req *api.GetRequest) (*api.TaskResponse, error) {
	var t *api.Task
	s.store.View(func(tx state.ReadTx) { t = tx.GetTask(req.GetId()) })
	if t == nil {
		return nil, notFound("task", req.GetId())
	}
	return &api.TaskResponse{Task: t}, nil
}

// ListTasks lists tasks. Service IDs may also be service names.
func (s *Server) ListTasks(ctx context.Context, req *api.ListTasksRequest) (*api.ListTasksResponse, error) {
	var out []*api.Task
	var err error
	s.store.View(func(tx state.ReadTx) {
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
	return &api.ListTasksResponse{Tasks: out}, nil
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

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// lookupNode finds a node by ID, then by hostname, then by unique ID prefix.
func lookupNode(tx state.ReadTx, ref string) *api.Node {
	if ref == "" {
		return nil
	}
	if n := tx.GetNode(ref); n != nil {
		return n
	}
	if byName, _ := tx.FindNodes(state.ByName(ref)); len(byName) == 1 {
		return byName[0]
	}
	if byPrefix, _ := tx.FindNodes(state.ByIDPrefix(ref)); len(byPrefix) == 1 {
		return byPrefix[0]
	}
	return nil
}

// GetNode returns a node by ID or hostname.
func (s *Server) GetNode(ctx context.Context, req *api.GetRequest) (*api.NodeResponse, error) {
	var n *api.Node
	s.store.View(func(tx state.ReadTx) { n = lookupNode(tx, req.GetId()) })
	if n == nil {
		return nil, notFound("node", req.GetId())
	}
	return &api.NodeResponse{Node: n}, nil
}

// ListNodes lists nodes, optionally by role.
func (s *Server) ListNodes(ctx context.Context, req *api.ListNodesRequest) (*api.ListNodesResponse, error) {
	by := state.All()
	if rs := req.GetRoles(); len(rs) > 0 {
		var bys []state.By
		for _, r := range rs {
			bys = append(bys, state.ByRole(r))
		}
		by = state.Or(bys...)
	}
	var out []*api.Node
	var err error
	s.store.View(func(tx state.ReadTx) { out, err = tx.FindNodes(by) })
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return &api.ListNodesResponse{Nodes: out}, nil
}

// UpdateNode replaces a node's spec (availability, labels). Role changes need
// multi-manager support and are refused for now.
func (s *Server) UpdateNode(ctx context.Context, req *api.UpdateNodeRequest) (*api.NodeResponse, error) {
	if err := ValidateNodeSpec(req.GetSpec()); err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	var id string
	err := s.store.Update(ctx, func(tx state.WriteTx) error {
		cur := lookupNode(tx, req.GetId())
		if cur == nil {
			return fmt.Errorf("node %q: %w", req.GetId(), errdefs.ErrNotFound)
		}
		id = cur.Id
		if req.GetVersion() != 0 && cur.Meta.GetVersion() != req.GetVersion() {
			return fmt.Errorf("node %s: version %d is not the current %d: %w", cur.Id, req.GetVersion(), cur.Meta.GetVersion(), errdefs.ErrConflict)
		}
		if req.Spec.DesiredRole != cur.Role {
			return fmt.Errorf("NodeUpdate.Role: changing a node's role (promote/demote) is not supported yet: %w", errdefs.ErrInvalidSpec)
		}
		cur.Spec = req.Spec
		return tx.UpdateNode(cur)
	})
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return s.GetNode(ctx, &api.GetRequest{Id: id})
}

// RemoveNode deletes a node from the cluster. A node that is not DOWN is
// refused unless Force; a manager is always refused (it holds the state).
func (s *Server) RemoveNode(ctx context.Context, req *api.RemoveRequest) (*api.RemoveResponse, error) {
	err := s.store.Update(ctx, func(tx state.WriteTx) error {
		cur := lookupNode(tx, req.GetId())
		if cur == nil {
			return fmt.Errorf("node %q: %w", req.GetId(), errdefs.ErrNotFound)
		}
		if cur.Role == api.NodeRole_NODE_ROLE_MANAGER {
			return fmt.Errorf("node %s is a manager: removing managers is not supported yet: %w", cur.Id, errdefs.ErrInvalidSpec)
		}
		if cur.GetStatus().GetState() != api.NodeState_NODE_STATE_DOWN && !req.GetForce() {
			return fmt.Errorf("node %s is %s, not down: stop it first or use force: %w", cur.Id,
				strings.ToLower(strings.TrimPrefix(cur.GetStatus().GetState().String(), "NODE_STATE_")), errdefs.ErrInvalidSpec)
		}
		return tx.DeleteNode(cur.Id)
	})
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return &api.RemoveResponse{}, nil
}

func (s *Server) theCluster(tx state.ReadTx, id string) *api.Cluster {
	if id != "" {
		return tx.GetCluster(id)
	}
	cs, _ := tx.FindClusters(state.All())
	if len(cs) > 0 {
		return cs[0]
	}
	return nil
}

// GetCluster returns the cluster object (id may be empty: there is one).
func (s *Server) GetCluster(ctx context.Context, req *api.GetRequest) (*api.ClusterResponse, error) {
	var c *api.Cluster
	s.store.View(func(tx state.ReadTx) { c = s.theCluster(tx, req.GetId()) })
	if c == nil {
		return nil, notFound("cluster", req.GetId())
	}
	return &api.ClusterResponse{Cluster: c}, nil
}

// UpdateCluster replaces the cluster's spec.
func (s *Server) UpdateCluster(ctx context.Context, req *api.UpdateClusterRequest) (*api.ClusterResponse, error) {
	if err := ValidateClusterSpec(req.GetSpec()); err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	var id string
	err := s.store.Update(ctx, func(tx state.WriteTx) error {
		cur := s.theCluster(tx, req.GetId())
		if cur == nil {
			return fmt.Errorf("cluster %q: %w", req.GetId(), errdefs.ErrNotFound)
		}
		id = cur.Id
		if req.GetVersion() != 0 && cur.Meta.GetVersion() != req.GetVersion() {
			return fmt.Errorf("cluster: version %d is not the current %d: %w", req.GetVersion(), cur.Meta.GetVersion(), errdefs.ErrConflict)
		}
		name := cur.Spec.GetName()
		cur.Spec = req.Spec
		cur.Spec.Name = name
		return tx.UpdateCluster(cur)
	})
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return s.GetCluster(ctx, &api.GetRequest{Id: id})
}

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
	return &api.WatchEvent{Action: kind, Object: state.StoreAction(kind, e.Object), Old: state.StoreAction(kind, e.Old), Version: e.Index}
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
