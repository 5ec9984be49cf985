package controlapi

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"google.golang.org/protobuf/proto"

	"github.com/shoalhq/shoal/internal/allocator"
	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/ca"
	"github.com/shoalhq/shoal/internal/clock"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/gossipkeys"
	"github.com/shoalhq/shoal/internal/identity"
	"github.com/shoalhq/shoal/internal/keys"
	"github.com/shoalhq/shoal/internal/state"
)

// Server implements api.ControlServer.
//
// The read RPCs (Get*, List*, and the object a write answers with) return
// the store's shared objects without copying them (state.Store.ViewShared):
// gRPC only marshals a response, so that is safe for them, but an in-process
// caller of these methods must not modify what they return.
type Server struct {
	api.UnimplementedControlServer
	store *state.Store
	opts  Options
	clock clock.Clock // opts.Clock, or the real clock
	// ports is the range ingress ports are allocated from; tests shrink it.
	ports allocator.PortRange
	// portMu serializes the service writes of this manager that allocate
	// ports, so two of them do not hand out the same free port.
	portMu sync.Mutex
}

var _ api.ControlServer = (*Server)(nil)

// MemberAdmin changes the Raft membership; raftstore.Node implements it.
//
// Its methods are safe for concurrent use. The membership changes
// (RemoveMember, AddLearner) must be made on the leader (elsewhere they fail
// with an error matching ErrNotLeader), block until the change is applied on
// this member or ctx ends, and are made one at a time: a call waits while
// another change is pending. IsLeader does not block.
type MemberAdmin interface {
	// IsLeader reports whether this member leads now; the answer may be stale
	// by the time the caller acts on it, which the changes then report.
	IsLeader() bool
	// RemoveMember removes a member, refusing (errors.Is ErrNoQuorum) when
	// the remaining voters could not reach a quorum, and an unknown ID with
	// an error matching ErrNotFound. It returns once applied. On the leader
	// removing itself it hands leadership over first and returns an error
	// matching ErrNotLeader: repeat on the new leader.
	RemoveMember(ctx context.Context, id uint64) error
	// AddLearner adds a member that receives the log but does not vote (the
	// leader promotes it once it caught up); context is stored with it. It
	// returns once the change is applied.
	AddLearner(ctx context.Context, id uint64, context []byte) error
}

// Options are a manager's hooks into the Raft group, for the operations that
// need the leader, and its clock. Zero Options serve a store without Raft
// membership (tests): role changes and removing a manager are refused with
// ErrInvalidSpec.
type Options struct {
	// Members changes the Raft membership (removing managers).
	Members MemberAdmin
	// Leader returns a control client of the leader and a func to release
	// it; requests that must run on the leader are forwarded through it. It
	// is called concurrently, once per forwarded request.
	Leader func(ctx context.Context) (api.ControlClient, func(), error)
	// Clock is the time source of what the server stamps into the cluster
	// object (the start of a gossip key rotation phase). Nil means
	// clock.Real().
	Clock clock.Clock
}

// New returns a control API server over store.
func New(store *state.Store, opts ...Options) *Server {
	s := &Server{store: store, ports: allocator.DynamicPorts}
	if len(opts) > 0 {
		s.opts = opts[0]
	}
	s.clock = s.opts.Clock
	if s.clock == nil {
		s.clock = clock.Real()
	}
	return s
}

// portRetries bounds the attempts of a service write whose allocated port
// another manager took at the same moment.
const portRetries = 5

// StaleReadHeader is the response header a read carries when it was served
// from this manager's local state without a quorum to confirm it is current.
const StaleReadHeader = "shoal-stale-read"

// readBarrier makes the following read linearizable: it waits until this
// manager has applied every write committed before the call. Without a
// quorum the read is served anyway from local state, and says so in the
// StaleReadHeader response header.
func (s *Server) readBarrier(ctx context.Context) error {
	err := s.store.ReadBarrier(ctx)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, errdefs.ErrNoQuorum), errors.Is(err, errdefs.ErrNotLeader), errors.Is(err, errdefs.ErrStopped):
		_ = grpc.SetHeader(ctx, metadata.Pairs(StaleReadHeader, err.Error()))
		return nil
	default:
		return errdefs.ToGRPC(err)
	}
}

// read runs fn on a shared view of the store (no copies). It is for the read
// RPCs only: what fn reads goes into a response unmodified, and gRPC only
// marshals it. Paths that modify what they read use View or Update.
func (s *Server) read(fn func(state.ReadTx)) { s.store.ViewShared(fn) }

func notFound(kind, id string) error {
	return errdefs.ToGRPC(fmt.Errorf("%s %q: %w", kind, id, errdefs.ErrNotFound))
}

// CreateService validates the spec and stores a new service with its
// published ports allocated (see allocator.AllocatePorts; a port another service
// publishes is refused with ErrInvalidSpec naming the port and the service).
func (s *Server) CreateService(ctx context.Context, req *api.CreateServiceRequest) (*api.ServiceResponse, error) {
	if err := ValidateServiceSpec(req.GetSpec()); err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	if len(req.GetSpec().GetTask().GetPorts()) > 0 {
		s.portMu.Lock()
		defer s.portMu.Unlock()
	}
	svc := &api.Service{Id: identity.NewID(), Spec: req.Spec, SpecVersion: 1}
	// Retried on a conflict: another manager may have allocated the same free
	// port at the same moment (the store refuses the second when it applies).
	err := s.store.UpdateRetry(ctx, portRetries, func(tx state.WriteTx) error {
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
	return s.localService(svc.Id)
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

// localService, localNode and localCluster answer a write with the object as
// this manager applied it (the write returned, so it is applied here: no
// read barrier needed).
func (s *Server) localService(id string) (*api.ServiceResponse, error) {
	var svc *api.Service
	s.read(func(tx state.ReadTx) { svc = tx.GetService(id) })
	if svc == nil {
		return nil, notFound("service", id)
	}
	return &api.ServiceResponse{Service: svc}, nil
}

func (s *Server) localNode(id string) (*api.NodeResponse, error) {
	var n *api.Node
	s.read(func(tx state.ReadTx) { n = tx.GetNode(id) })
	if n == nil {
		return nil, notFound("node", id)
	}
	return &api.NodeResponse{Node: n}, nil
}

func (s *Server) localCluster(id string) (*api.ClusterResponse, error) {
	var c *api.Cluster
	s.read(func(tx state.ReadTx) { c = tx.GetCluster(id) })
	if c == nil {
		return nil, notFound("cluster", id)
	}
	return &api.ClusterResponse{Cluster: Redact(c)}, nil
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
	s.read(func(tx state.ReadTx) { svc = lookupService(tx, req.GetId()) })
	if svc == nil {
		return nil, notFound("service", req.GetId())
	}
	return &api.ServiceResponse{Service: svc}, nil
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
	s.read(func(tx state.ReadTx) { out, err = tx.FindServices(by) })
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return &api.ListServicesResponse{Services: out}, nil
}

// UpdateService replaces a service's spec. The request's version must be the
// service's current version. A change of the task spec bumps SpecVersion,
// which makes the orchestrator replace the tasks. Published ports are
// allocated again in the same write; a port the spec leaves at 0 keeps the
// one allocated before for the same target and protocol.
func (s *Server) UpdateService(ctx context.Context, req *api.UpdateServiceRequest) (*api.ServiceResponse, error) {
	if err := ValidateServiceSpec(req.GetSpec()); err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	if len(req.GetSpec().GetTask().GetPorts()) > 0 {
		s.portMu.Lock()
		defer s.portMu.Unlock()
	}
	var id string
	err := s.store.UpdateRetry(ctx, portRetries, func(tx state.WriteTx) error {
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
	return s.localService(id)
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
	if err := s.readBarrier(ctx); err != nil {
		return nil, err
	}
	var t *api.Task
	s.read(func(tx state.ReadTx) { t = tx.GetTask(req.GetId()) })
	if t == nil {
		return nil, notFound("task", req.GetId())
	}
	return &api.TaskResponse{Task: t}, nil
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
	if err := s.readBarrier(ctx); err != nil {
		return nil, err
	}
	var n *api.Node
	s.read(func(tx state.ReadTx) { n = lookupNode(tx, req.GetId()) })
	if n == nil {
		return nil, notFound("node", req.GetId())
	}
	return &api.NodeResponse{Node: n}, nil
}

// ListNodes lists nodes, optionally by role.
func (s *Server) ListNodes(ctx context.Context, req *api.ListNodesRequest) (*api.ListNodesResponse, error) {
	if err := s.readBarrier(ctx); err != nil {
		return nil, err
	}
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
	s.read(func(tx state.ReadTx) { out, err = tx.FindNodes(by) })
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return &api.ListNodesResponse{Nodes: out}, nil
}

// UpdateNode replaces a node's spec (availability, labels, desired role). A
// role change runs on the leader (it is forwarded there): promoting a worker
// adds it to the Raft group as a learner and records it as a manager, which
// the node learns from its dispatcher session; demoting a manager removes it
// from the Raft group first, which is refused when the remaining managers
// could not reach a quorum (ErrNoQuorum) and always for the last manager.
func (s *Server) UpdateNode(ctx context.Context, req *api.UpdateNodeRequest) (*api.NodeResponse, error) {
	if err := ValidateNodeSpec(req.GetSpec()); err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	var cur *api.Node
	s.store.View(func(tx state.ReadTx) { cur = lookupNode(tx, req.GetId()) })
	if cur != nil && req.Spec.DesiredRole != cur.Role {
		return s.changeRole(ctx, req, cur)
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
			return fmt.Errorf("node %s: its role changed concurrently: %w", cur.Id, errdefs.ErrConflict)
		}
		cur.Spec = req.Spec
		return tx.UpdateNode(cur)
	})
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return s.localNode(id)
}

// changeRole promotes a worker or demotes a manager (req asks for the role
// cur does not have). It runs on the leader.
func (s *Server) changeRole(ctx context.Context, req *api.UpdateNodeRequest, cur *api.Node) (*api.NodeResponse, error) {
	if req.GetVersion() != 0 && cur.Meta.GetVersion() != req.GetVersion() {
		return nil, errdefs.ToGRPC(fmt.Errorf("node %s: version %d is not the current %d: %w", cur.Id, req.GetVersion(), cur.Meta.GetVersion(), errdefs.ErrConflict))
	}
	m := s.opts.Members
	if m == nil {
		return nil, errdefs.ToGRPC(fmt.Errorf("NodeUpdate.Role: this server cannot change the Raft group: %w", errdefs.ErrInvalidSpec))
	}
	if !m.IsLeader() {
		return s.forwardUpdate(ctx, req)
	}
	var err error
	if req.Spec.DesiredRole == api.NodeRole_NODE_ROLE_MANAGER {
		err = s.promote(ctx, req, cur, m)
	} else {
		err = s.demote(ctx, req, cur, m)
	}
	if errors.Is(err, errdefs.ErrNotLeader) {
		// This leader demoted itself: it handed leadership over first.
		return s.forwardUpdate(ctx, req)
	}
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return s.localNode(cur.Id)
}

func (s *Server) promote(ctx context.Context, req *api.UpdateNodeRequest, cur *api.Node, m MemberAdmin) error {
	if st := cur.GetStatus(); st.GetState() != api.NodeState_NODE_STATE_READY || st.GetAddr() == "" {
		return fmt.Errorf("NodeUpdate.Role: node %s must be ready, with a known address, to be promoted (it is %s): %w", cur.Id,
			strings.ToLower(strings.TrimPrefix(st.GetState().String(), "NODE_STATE_")), errdefs.ErrInvalidSpec)
	}
	addr := cur.Status.Addr
	var raftID uint64
	var err error
	s.store.View(func(tx state.ReadTx) { _, raftID, err = raftPeersAndNewID(tx) })
	if err != nil {
		return err
	}
	if err := m.AddLearner(ctx, raftID, []byte(addr)); err != nil {
		return fmt.Errorf("promote node %s: add it to the Raft group: %w", cur.Id, err)
	}
	err = s.store.Update(ctx, func(tx state.WriteTx) error {
		n := tx.GetNode(cur.Id)
		if n == nil {
			return fmt.Errorf("node %s: %w", cur.Id, errdefs.ErrNotFound)
		}
		if n.Role != cur.Role || (req.GetVersion() != 0 && n.Meta.GetVersion() != req.GetVersion()) {
			return fmt.Errorf("node %s changed concurrently: %w", cur.Id, errdefs.ErrConflict)
		}
		n.Role = api.NodeRole_NODE_ROLE_MANAGER
		n.Spec = req.Spec
		n.ManagerStatus = &api.ManagerStatus{RaftId: raftID, Addr: addr}
		return tx.UpdateNode(n)
	})
	if err != nil {
		// Leave no Raft member behind for a node that is not recorded as a
		// manager.
		_ = m.RemoveMember(context.WithoutCancel(ctx), raftID)
		return fmt.Errorf("promote node %s: %w", cur.Id, err)
	}
	return nil
}

func (s *Server) demote(ctx context.Context, req *api.UpdateNodeRequest, cur *api.Node, m MemberAdmin) error {
	var managers int
	s.store.View(func(tx state.ReadTx) {
		ms, _ := tx.FindNodes(state.ByRole(api.NodeRole_NODE_ROLE_MANAGER))
		managers = len(ms)
	})
	if managers <= 1 {
		return fmt.Errorf("NodeUpdate.Role: node %s is the last manager; promote another node first: %w", cur.Id, errdefs.ErrInvalidSpec)
	}
	if id := cur.GetManagerStatus().GetRaftId(); id != 0 {
		if err := m.RemoveMember(ctx, id); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			return fmt.Errorf("demote manager %s: %w", cur.Id, err)
		}
	}
	err := s.store.Update(ctx, func(tx state.WriteTx) error {
		n := tx.GetNode(cur.Id)
		if n == nil {
			return fmt.Errorf("node %s: %w", cur.Id, errdefs.ErrNotFound)
		}
		n.Role = api.NodeRole_NODE_ROLE_WORKER
		n.Spec = req.Spec
		n.ManagerStatus = nil
		return tx.UpdateNode(n)
	})
	if err != nil {
		return fmt.Errorf("demote manager %s: %w", cur.Id, err)
	}
	return nil
}

func (s *Server) forwardUpdate(ctx context.Context, req *api.UpdateNodeRequest) (*api.NodeResponse, error) {
	if s.opts.Leader == nil {
		return nil, errdefs.ToGRPC(fmt.Errorf("changing a node's role needs the leader: %w", errdefs.ErrNotLeader))
	}
	c, release, err := s.opts.Leader(ctx)
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	defer release()
	return c.UpdateNode(ctx, req)
}

// RemoveNode deletes a node from the cluster. A node that is not DOWN is
// refused unless Force. A manager is first removed from the Raft group, on
// the leader; that is refused when the remaining managers could not reach a
// quorum, and always for the last manager.
func (s *Server) RemoveNode(ctx context.Context, req *api.RemoveRequest) (*api.RemoveResponse, error) {
	var cur *api.Node
	s.store.View(func(tx state.ReadTx) { cur = lookupNode(tx, req.GetId()) })
	if cur == nil {
		return nil, notFound("node", req.GetId())
	}
	if cur.GetStatus().GetState() != api.NodeState_NODE_STATE_DOWN && !req.GetForce() {
		return nil, errdefs.ToGRPC(fmt.Errorf("node %s is %s, not down: stop it first or use force: %w", cur.Id,
			strings.ToLower(strings.TrimPrefix(cur.GetStatus().GetState().String(), "NODE_STATE_")), errdefs.ErrInvalidSpec))
	}
	if cur.Role == api.NodeRole_NODE_ROLE_MANAGER {
		m := s.opts.Members
		if m == nil {
			return nil, errdefs.ToGRPC(fmt.Errorf("node %s is a manager and this server cannot change the Raft group: %w", cur.Id, errdefs.ErrInvalidSpec))
		}
		if !m.IsLeader() {
			return s.forwardRemove(ctx, req)
		}
		if err := m.RemoveMember(ctx, cur.GetManagerStatus().GetRaftId()); err != nil {
			if errors.Is(err, errdefs.ErrNotLeader) {
				// This manager removed itself: it handed leadership over first.
				return s.forwardRemove(ctx, req)
			}
			return nil, errdefs.ToGRPC(fmt.Errorf("remove manager %s: %w", cur.Id, err))
		}
	}
	err := s.store.Update(ctx, func(tx state.WriteTx) error {
		if tx.GetNode(cur.Id) == nil {
			return nil // removed concurrently
		}
		return tx.DeleteNode(cur.Id)
	})
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return &api.RemoveResponse{}, nil
}

func (s *Server) forwardRemove(ctx context.Context, req *api.RemoveRequest) (*api.RemoveResponse, error) {
	if s.opts.Leader == nil {
		return nil, errdefs.ToGRPC(fmt.Errorf("removing a manager needs the leader: %w", errdefs.ErrNotLeader))
	}
	c, release, err := s.opts.Leader(ctx)
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	defer release()
	return c.RemoveNode(ctx, req)
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
	if err := s.readBarrier(ctx); err != nil {
		return nil, err
	}
	var c *api.Cluster
	s.read(func(tx state.ReadTx) { c = s.theCluster(tx, req.GetId()) })
	if c == nil {
		return nil, notFound("cluster", req.GetId())
	}
	return &api.ClusterResponse{Cluster: Redact(c)}, nil
}

// UpdateCluster replaces the cluster's spec (the cluster keeps its name) and
// makes the changes the request asks for in the same write: a new unlock key,
// new join tokens, and the start of a root CA or gossip key rotation (the
// leader's rootrotation and gossipkeys components carry those on).
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
		switch {
		case !cur.Spec.GetAutolock() && req.GetRotateUnlockKey():
			return invalid("UpdateClusterRequest.RotateUnlockKey", "autolock is off: there is no unlock key to rotate")
		case !cur.Spec.GetAutolock():
			cur.UnlockKey = ""
		case cur.UnlockKey == "" || req.GetRotateUnlockKey():
			k, err := keys.NewUnlockKey()
			if err != nil {
				return err
			}
			cur.UnlockKey = k
		}
		if req.GetRotateRootCa() {
			rc, err := ca.StartRootRotation(cur)
			if err != nil {
				return err
			}
			cur.RootCa = rc
		}
		if req.GetRotateGossipKey() {
			g, err := gossipkeys.StartRotation(cur.GetGossip(), s.clock.Now())
			if err != nil {
				return err
			}
			cur.Gossip = g
		}
		if req.GetRotateWorkerToken() || req.GetRotateManagerToken() {
			tokens, err := ca.RotateTokens(cur, req.GetRotateWorkerToken(), req.GetRotateManagerToken())
			if err != nil {
				return err
			}
			cur.JoinTokens = tokens
		}
		return tx.UpdateCluster(cur)
	})
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return s.localCluster(id)
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
	obj, old := e.Object, e.Old
	if c, ok := obj.(*api.Cluster); ok {
		obj = Redact(c)
	}
	if c, ok := old.(*api.Cluster); ok && c != nil {
		old = Redact(c)
	}
	return &api.WatchEvent{Action: kind, Object: state.StoreAction(kind, obj), Old: state.StoreAction(kind, old), Version: e.Index}
}

// Redact returns the cluster object as the API shows it: without the root
// CA's private key and the external CA's authentication key, which never
// leave the managers' store. c itself is not modified.
func Redact(c *api.Cluster) *api.Cluster {
	if c == nil || (len(c.GetRootCa().GetKeyPem()) == 0 && c.GetRootCa().GetExternalAuthKey() == "" &&
		len(c.GetGossip().GetKeys()) == 0) {
		return c
	}
	out := proto.Clone(c).(*api.Cluster)
	if out.RootCa != nil {
		out.RootCa.KeyPem = nil
		out.RootCa.ExternalAuthKey = ""
	}
	if out.Gossip != nil {
		out.Gossip.Keys = nil
	}
	return out
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
