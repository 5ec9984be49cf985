package controlapi

import (
	"context"
	"fmt"

	"github.com/shoalhq/shoal/internal/allocator"
	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/identity"
	"github.com/shoalhq/shoal/internal/state"
	"google.golang.org/protobuf/proto"
)

// portRetries bounds the attempts of a service write whose allocated port
// another manager took at the same moment.
const portRetries = 5

// CreateService validates the spec and stores a new service with its
// published ports allocated (see allocator.AllocatePorts; a port another service
// publishes is refused with ErrInvalidSpec naming the port and the service)
// and its image pinned to a digest (pinImage; the answer's warnings say
// when it could not be).
func (s *Server) CreateService(ctx context.Context, req *api.CreateServiceRequest) (*api.ServiceResponse, error) {
	if err := ValidateServiceSpec(req.GetSpec()); err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	spec := proto.Clone(req.Spec).(*api.ServiceSpec)
	settleAuth(spec.Task, nil)
	warnings, err := s.pinImage(ctx, spec.Task, "")
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	if len(req.GetSpec().GetTask().GetPorts()) > 0 {
		s.portMu.Lock()
		defer s.portMu.Unlock()
	}
	svc := &api.Service{Id: identity.NewID(), Spec: spec, SpecVersion: 1}
	// Retried on a conflict: another manager may have allocated the same free
	// port at the same moment (the store refuses the second when it applies).
	err = s.store.UpdateRetry(ctx, portRetries, func(tx state.WriteTx) error {
		if err := nameFree(tx, svc); err != nil {
			return err
		}
		if err := allocator.AllocatePorts(tx, svc, s.ports); err != nil {
			return err
		}
		return tx.CreateService(svc)
	})
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return s.localService(svc.Id, warnings)
}

// nameFree checks that no other service in tx has svc's name (names are
// unique case-insensitively), with an error that names the field and wraps
// ErrExist. The store enforces the same when it applies the write.
func nameFree(tx state.ReadTx, svc *api.Service) error {
	others, err := tx.FindServices(state.ByName(svc.GetSpec().GetName()))
	if err != nil {
		return err
	}
	for _, o := range others {
		if o.GetId() != svc.GetId() {
			return fmt.Errorf("ServiceSpec.Name: %q is used by service %s: %w", svc.GetSpec().GetName(), o.GetId(), errdefs.ErrExist)
		}
	}
	return nil
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
	if err := s.readBarrier(ctx); err != nil {
		return nil, err
	}
	var svc *api.Service
	s.read(func(tx state.ReadTx) { svc = withProgress(tx, lookupService(tx, req.GetId())) })
	if svc == nil {
		return nil, notFound("service", req.GetId())
	}
	return &api.ServiceResponse{Service: RedactService(svc)}, nil
}

// ListServices lists services, optionally by names or ID prefixes.
func (s *Server) ListServices(ctx context.Context, req *api.ListServicesRequest) (*api.ListServicesResponse, error) {
	if err := s.readBarrier(ctx); err != nil {
		return nil, err
	}
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
	s.read(func(tx state.ReadTx) {
		if out, err = tx.FindServices(by); err == nil {
			for i, svc := range out {
				out[i] = withProgress(tx, svc)
			}
		}
	})
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return &api.ListServicesResponse{Services: redactServices(out)}, nil
}

// UpdateService replaces a service's spec. The request's version must be the
// service's current version. A change of the task spec bumps SpecVersion,
// which makes the orchestrator replace the tasks. Published ports are
// allocated again in the same write; a port the spec leaves at 0 keeps the
// one allocated before for the same target and protocol. Registry
// credentials follow settleAuth; a changed image is pinned to a digest
// (pinImage) before the write.
func (s *Server) UpdateService(ctx context.Context, req *api.UpdateServiceRequest) (*api.ServiceResponse, error) {
	if err := ValidateServiceSpec(req.GetSpec()); err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	// The stored service decides the credentials and whether the image
	// changed; the write checks it is still the version read here.
	var cur *api.Service
	s.read(func(tx state.ReadTx) { cur = lookupService(tx, req.GetId()) })
	if err := updatable(cur, req); err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	spec := proto.Clone(req.Spec).(*api.ServiceSpec)
	settleAuth(spec.Task, cur.GetSpec().GetTask())
	warnings, err := s.pinImage(ctx, spec.Task, cur.GetSpec().GetTask().GetImage())
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	if len(req.GetSpec().GetTask().GetPorts()) > 0 {
		s.portMu.Lock()
		defer s.portMu.Unlock()
	}
	id := cur.Id
	err = s.store.UpdateRetry(ctx, portRetries, func(tx state.WriteTx) error {
		cur := tx.GetService(id)
		if err := updatable(cur, req); err != nil {
			return err
		}
		_, wasGlobal := cur.Spec.Mode.(*api.ServiceSpec_Global)
		_, isGlobal := req.Spec.Mode.(*api.ServiceSpec_Global)
		if wasGlobal != isGlobal {
			return fmt.Errorf("ServiceSpec.Mode: cannot change between replicated and global; remove and create the service: %w", errdefs.ErrInvalidSpec)
		}
		if !proto.Equal(cur.Spec.Task, spec.Task) {
			cur.SpecVersion++
		}
		cur.Spec = proto.Clone(spec).(*api.ServiceSpec)
		if err := nameFree(tx, cur); err != nil {
			return err
		}
		if err := allocator.AllocatePorts(tx, cur, s.ports); err != nil {
			return err
		}
		return tx.UpdateService(cur)
	})
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return s.localService(id, warnings)
}

// updatable checks that cur, the stored service req updates (nil when there
// is none), is at the version req was made from.
func updatable(cur *api.Service, req *api.UpdateServiceRequest) error {
	if cur == nil {
		return fmt.Errorf("service %q: %w", req.GetId(), errdefs.ErrNotFound)
	}
	if cur.GetMeta().GetVersion() != req.GetVersion() {
		return fmt.Errorf("service %s: version %d is not the current %d: %w", cur.Id, req.GetVersion(), cur.GetMeta().GetVersion(), errdefs.ErrConflict)
	}
	return nil
}

// settleAuth applies the update rule of a task spec's registry credentials
// to spec, the spec being written over cur (nil on create): clients never
// read them back, so nil keeps cur's (while spec has an image to pull), and
// an empty RegistryAuth removes them.
func settleAuth(spec, cur *api.TaskSpec) {
	switch a := spec.GetRegistryAuth(); {
	case a == nil && spec.GetImage() != "":
		spec.RegistryAuth = cur.GetRegistryAuth()
	case a != nil && proto.Equal(a, &api.RegistryAuth{}):
		spec.RegistryAuth = nil
	}
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
