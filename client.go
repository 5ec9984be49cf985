package shoal

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/controlapi"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/pki"
)

// Client is the control API of a cluster: services, tasks, nodes and cluster
// settings. Get one from a manager node (Node.Client) or over the network
// (Dial). A Client is safe for concurrent use. Every method takes a context
// and returns errors that match the package's sentinels (ErrNotFound,
// ErrConflict, ErrInvalidSpec, ...) with errors.Is.
type Client struct {
	ctl   api.ControlClient
	conn  *grpc.ClientConn // closed by Close when owned
	owned bool
	err   error // set for clients that cannot work (a worker's Client)
}

func newClient(conn *grpc.ClientConn, owned bool) *Client {
	return &Client{ctl: api.NewControlClient(conn), conn: conn, owned: owned}
}

// Close releases the client's connection. Clients from Node.Client share the
// node's connection; closing them does nothing.
func (c *Client) Close() error {
	if c.owned && c.conn != nil {
		return c.conn.Close()
	}
	return nil
}

// ReadInfo says how fresh a read was; see WithReadInfo.
type ReadInfo struct {
	// Stale is true when the manager answered from its own state without a
	// quorum of managers to confirm it is current: the answer may miss the
	// latest writes. Reason says why (for example "no quorum: 1 of 3
	// managers reachable, 2 needed").
	Stale  bool
	Reason string
}

type readInfoKey struct{}

// WithReadInfo returns a context whose reads (GetService, ListServices,
// GetTask, ListTasks, GetNode, ListNodes, Cluster) fill info. Reads are
// linearizable: they see every write that completed before they started,
// whichever manager serves them; without a quorum they still answer, from
// the manager's own state, and set info.Stale.
func WithReadInfo(ctx context.Context, info *ReadInfo) context.Context {
	return context.WithValue(ctx, readInfoKey{}, info)
}

// readOpts returns the call options of a read and a func to run after it.
func readOpts(ctx context.Context) ([]grpc.CallOption, func()) {
	info, _ := ctx.Value(readInfoKey{}).(*ReadInfo)
	if info == nil {
		return nil, func() {}
	}
	var md metadata.MD
	return []grpc.CallOption{grpc.Header(&md)}, func() {
		if v := md.Get(controlapi.StaleReadHeader); len(v) > 0 {
			info.Stale, info.Reason = true, v[0]
		} else {
			info.Stale, info.Reason = false, ""
		}
	}
}

// retries is how many times read-modify-write helpers (ScaleService,
// UpdateNode) retry after a conflict with another writer.
const retries = 10

func (c *Client) check() error { return c.err }

// retryOnConflict runs a read-modify-write attempt again, up to retries
// times, while it fails with ErrConflict (another writer got there first).
func retryOnConflict[T any](attempt func() (T, error)) (T, error) {
	var out T
	var err error
	for i := 0; i < retries; i++ {
		if out, err = attempt(); !errors.Is(err, ErrConflict) {
			return out, err
		}
	}
	return out, err
}

// CreateService creates a service. The spec is validated first; an invalid
// spec writes nothing and returns an error naming the field and the rule.
func (c *Client) CreateService(ctx context.Context, spec ServiceSpec) (*Service, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	as, err := toAPIServiceSpec(spec)
	if err != nil {
		return nil, err
	}
	resp, err := c.ctl.CreateService(ctx, &api.CreateServiceRequest{Spec: as})
	if err != nil {
		return nil, errdefs.FromGRPC(err)
	}
	svc := fromAPIService(resp.Service)
	svc.Warnings = resp.Warnings
	return svc, nil
}

// GetService returns a service by ID, name or unique ID prefix.
func (c *Client) GetService(ctx context.Context, ref string) (*Service, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	opts, done := readOpts(ctx)
	resp, err := c.ctl.GetService(ctx, &api.GetRequest{Id: ref}, opts...)
	done()
	if err != nil {
		return nil, errdefs.FromGRPC(err)
	}
	return fromAPIService(resp.Service), nil
}

// ListServices returns every service, sorted by name.
func (c *Client) ListServices(ctx context.Context) ([]*Service, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	opts, done := readOpts(ctx)
	resp, err := c.ctl.ListServices(ctx, &api.ListServicesRequest{}, opts...)
	done()
	if err != nil {
		return nil, errdefs.FromGRPC(err)
	}
	out := make([]*Service, 0, len(resp.Services))
	for _, s := range resp.Services {
		out = append(out, fromAPIService(s))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Spec.Name < out[j].Spec.Name })
	return out, nil
}

// UpdateService replaces a service's spec. version must be the service's
// current Meta.Version (from GetService), else ErrConflict. A change to
// spec.Task replaces the service's tasks according to spec.Update.
func (c *Client) UpdateService(ctx context.Context, ref string, version Version, spec ServiceSpec) (*Service, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	as, err := toAPIServiceSpec(spec)
	if err != nil {
		return nil, err
	}
	resp, err := c.ctl.UpdateService(ctx, &api.UpdateServiceRequest{Id: ref, Version: uint64(version), Spec: as})
	if err != nil {
		return nil, errdefs.FromGRPC(err)
	}
	svc := fromAPIService(resp.Service)
	svc.Warnings = resp.Warnings
	return svc, nil
}

// ScaleService sets a replicated service's replica count, retrying if the
// service is changed concurrently.
func (c *Client) ScaleService(ctx context.Context, ref string, replicas int) (*Service, error) {
	if replicas < 0 {
		return nil, fmt.Errorf("ServiceSpec.Replicas: must be >= 0, got %d: %w", replicas, ErrInvalidSpec)
	}
	return retryOnConflict(func() (*Service, error) {
		svc, err := c.GetService(ctx, ref)
		if err != nil {
			return nil, err
		}
		if svc.Spec.Mode != Replicated {
			return nil, fmt.Errorf("ServiceSpec.Replicas: service %s is global and cannot be scaled: %w", svc.Spec.Name, ErrInvalidSpec)
		}
		spec := svc.Spec
		spec.Replicas = replicas
		return c.UpdateService(ctx, svc.ID, svc.Version, spec)
	})
}

// RemoveService removes a service; its tasks are stopped and removed.
func (c *Client) RemoveService(ctx context.Context, ref string) error {
	if err := c.check(); err != nil {
		return err
	}
	_, err := c.ctl.RemoveService(ctx, &api.RemoveRequest{Id: ref})
	return errdefs.FromGRPC(err)
}

// GetTask returns a task by ID.
func (c *Client) GetTask(ctx context.Context, id string) (*Task, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	opts, done := readOpts(ctx)
	resp, err := c.ctl.GetTask(ctx, &api.GetRequest{Id: id}, opts...)
	done()
	if err != nil {
		return nil, errdefs.FromGRPC(err)
	}
	return fromAPITask(resp.Task), nil
}

// ListTasks returns the tasks that match f, sorted by service name, slot (or
// node), then newest first.
func (c *Client) ListTasks(ctx context.Context, f TaskFilter) ([]*Task, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	req := &api.ListTasksRequest{}
	if f.Service != "" {
		req.ServiceIds = []string{f.Service}
	}
	if f.Node != "" {
		req.NodeIds = []string{f.Node}
	}
	for _, s := range f.DesiredStates {
		req.DesiredStates = append(req.DesiredStates, api.TaskState(s))
	}
	if f.Slot != 0 {
		req.Slots = []uint64{f.Slot}
	}
	opts, done := readOpts(ctx)
	resp, err := c.ctl.ListTasks(ctx, req, opts...)
	done()
	if err != nil {
		return nil, errdefs.FromGRPC(err)
	}
	out := make([]*Task, 0, len(resp.Tasks))
	for _, t := range resp.Tasks {
		out = append(out, fromAPITask(t))
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.ServiceName != b.ServiceName {
			return a.ServiceName < b.ServiceName
		}
		if a.Slot != b.Slot {
			return a.Slot < b.Slot
		}
		if a.Slot == 0 && a.NodeID != b.NodeID {
			return a.NodeID < b.NodeID
		}
		if !a.CreatedAt.Equal(b.CreatedAt) {
			return a.CreatedAt.After(b.CreatedAt)
		}
		return a.ID < b.ID
	})
	return out, nil
}

// GetNode returns a node by ID, hostname or unique ID prefix.
func (c *Client) GetNode(ctx context.Context, ref string) (*NodeInfo, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	opts, done := readOpts(ctx)
	resp, err := c.ctl.GetNode(ctx, &api.GetRequest{Id: ref}, opts...)
	done()
	if err != nil {
		return nil, errdefs.FromGRPC(err)
	}
	return fromAPINode(resp.Node), nil
}

// ListNodes returns every node, sorted by hostname then ID.
func (c *Client) ListNodes(ctx context.Context) ([]*NodeInfo, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	opts, done := readOpts(ctx)
	resp, err := c.ctl.ListNodes(ctx, &api.ListNodesRequest{}, opts...)
	done()
	if err != nil {
		return nil, errdefs.FromGRPC(err)
	}
	out := make([]*NodeInfo, 0, len(resp.Nodes))
	for _, n := range resp.Nodes {
		out = append(out, fromAPINode(n))
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Hostname != out[j].Hostname {
			return out[i].Hostname < out[j].Hostname
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// UpdateNode changes a node's availability or labels, retrying if the node is
// changed concurrently (heartbeats change node status often).
func (c *Client) UpdateNode(ctx context.Context, ref string, u NodeUpdate) (*NodeInfo, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	if u.Availability != 0 && (u.Availability < Active || u.Availability > Drain) {
		return nil, fmt.Errorf("NodeUpdate.Availability: must be Active, Pause or Drain, got %d: %w", int(u.Availability), ErrInvalidSpec)
	}
	if u.Role != nil && *u.Role != Worker && *u.Role != Manager {
		return nil, fmt.Errorf("NodeUpdate.Role: must be Worker or Manager, got %d: %w", int(*u.Role), ErrInvalidSpec)
	}
	return retryOnConflict(func() (*NodeInfo, error) {
		resp, err := c.ctl.GetNode(ctx, &api.GetRequest{Id: ref})
		if err != nil {
			return nil, errdefs.FromGRPC(err)
		}
		n := resp.Node
		spec := n.Spec
		if spec == nil {
			spec = &api.NodeSpec{DesiredRole: n.Role}
		}
		if u.Availability != 0 {
			spec.Availability = api.NodeAvailability(u.Availability - 1)
		}
		if u.Labels != nil {
			spec.Labels = copyMap(u.Labels)
		}
		if u.Role != nil {
			spec.DesiredRole = api.NodeRole_NODE_ROLE_WORKER
			if *u.Role == Manager {
				spec.DesiredRole = api.NodeRole_NODE_ROLE_MANAGER
			}
		}
		up, err := c.ctl.UpdateNode(ctx, &api.UpdateNodeRequest{Id: n.Id, Version: n.Meta.GetVersion(), Spec: spec})
		if err != nil {
			return nil, errdefs.FromGRPC(err)
		}
		return fromAPINode(up.Node), nil
	})
}

// RemoveNode removes a worker from the cluster. A node that is not down is
// refused unless force is true.
func (c *Client) RemoveNode(ctx context.Context, ref string, force bool) error {
	if err := c.check(); err != nil {
		return err
	}
	_, err := c.ctl.RemoveNode(ctx, &api.RemoveRequest{Id: ref, Force: force})
	return errdefs.FromGRPC(err)
}

// Cluster returns the cluster's settings and join tokens.
func (c *Client) Cluster(ctx context.Context) (*ClusterInfo, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	opts, done := readOpts(ctx)
	resp, err := c.ctl.GetCluster(ctx, &api.GetRequest{}, opts...)
	done()
	if err != nil {
		return nil, errdefs.FromGRPC(err)
	}
	return fromAPICluster(resp.Cluster), nil
}

// ClusterUpdate changes cluster-wide settings; nil fields are left as they are.
type ClusterUpdate struct {
	// TaskHistoryLimit is how many dead tasks are kept per slot (>= 0); the
	// reaper applies a new limit at once.
	TaskHistoryLimit *int
	// CertValidity is how long node certificates issued from now on are
	// valid (at least 30 minutes; 0 restores the default of 90 days).
	// Nodes pick it up at their next renewal.
	CertValidity *time.Duration
	// RotateWorkerToken and RotateManagerToken replace that join token with a
	// new one; the old token stops working at once. Nodes already joined are
	// not affected.
	RotateWorkerToken, RotateManagerToken bool
	// AutoLock turns autolock on or off: with it on, every manager keeps the
	// key of its Raft log wrapped with the cluster's unlock key and a
	// restarted manager waits for Node.Unlock. Turning it on creates the
	// unlock key (ClusterInfo.UnlockKey).
	AutoLock *bool
	// RotateUnlockKey replaces the unlock key (autolock on): managers rewrap
	// their data keys and the old key stops working.
	RotateUnlockKey bool
	// RotateRootCA starts a root CA rotation: a new root, cross-signed by the
	// current one, is trusted next to it; every node gets a certificate from
	// it (its connections keep working throughout); once all nodes that are
	// not DOWN have one, the old root is retired and the join tokens change
	// (ClusterInfo.RootRotating turns false). Operator credentials issued
	// before must be issued again afterwards. Not available with an external
	// CA.
	RotateRootCA bool
	// RotateGossipKey starts a rotation of the routing mesh's gossip
	// encryption key. It runs in phases (install the new key everywhere,
	// encrypt with it, drop the old one), each lasting the leader's
	// Config.Mesh.KeyRotationGrace, so gossip never stops;
	// ClusterInfo.GossipKeyRotating is true until it ends. Refused while a
	// rotation runs.
	RotateGossipKey bool
}

// UpdateCluster changes cluster-wide settings, retrying if the cluster
// object is changed concurrently.
func (c *Client) UpdateCluster(ctx context.Context, u ClusterUpdate) (*ClusterInfo, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	if u.TaskHistoryLimit != nil && *u.TaskHistoryLimit < 0 {
		return nil, specError("ClusterUpdate.TaskHistoryLimit", "must be >= 0, got %d", *u.TaskHistoryLimit)
	}
	if u.CertValidity != nil && *u.CertValidity != 0 && *u.CertValidity < pki.MinCertValidity {
		return nil, specError("ClusterUpdate.CertValidity", "must be 0 (the default) or at least %v, got %v", pki.MinCertValidity, *u.CertValidity)
	}
	return retryOnConflict(func() (*ClusterInfo, error) {
		resp, err := c.ctl.GetCluster(ctx, &api.GetRequest{})
		if err != nil {
			return nil, errdefs.FromGRPC(err)
		}
		cl := resp.Cluster
		spec := cl.GetSpec()
		if spec == nil {
			spec = &api.ClusterSpec{}
		}
		if u.TaskHistoryLimit != nil {
			spec.TaskHistoryLimit = int64(*u.TaskHistoryLimit)
		}
		if u.CertValidity != nil {
			spec.NodeCertValidity = int64(*u.CertValidity)
		}
		if u.AutoLock != nil {
			spec.Autolock = *u.AutoLock
		}
		up, err := c.ctl.UpdateCluster(ctx, &api.UpdateClusterRequest{Id: cl.Id, Version: cl.GetMeta().GetVersion(), Spec: spec,
			RotateWorkerToken: u.RotateWorkerToken, RotateManagerToken: u.RotateManagerToken, RotateUnlockKey: u.RotateUnlockKey, RotateRootCa: u.RotateRootCA,
			RotateGossipKey: u.RotateGossipKey})
		if err != nil {
			return nil, errdefs.FromGRPC(err)
		}
		return fromAPICluster(up.Cluster), nil
	})
}

// ObjectKind names the kind of object an Event is about.
type ObjectKind int

// Object kinds.
const (
	KindService ObjectKind = iota + 1
	KindTask
	KindNode
	KindCluster
)

func (k ObjectKind) String() string {
	switch k {
	case KindService:
		return "service"
	case KindTask:
		return "task"
	case KindNode:
		return "node"
	case KindCluster:
		return "cluster"
	}
	return fmt.Sprintf("ObjectKind(%d)", int(k))
}

// EventAction is what happened to an object.
type EventAction int

// Event actions.
const (
	Created EventAction = iota + 1
	Updated
	Removed
)

func (a EventAction) String() string {
	switch a {
	case Created:
		return "created"
	case Updated:
		return "updated"
	case Removed:
		return "removed"
	}
	return fmt.Sprintf("EventAction(%d)", int(a))
}

// Event is one change in the cluster's state. Exactly one of Service, Task,
// Node and Cluster is set: the object after the change (before it, when
// removed). For updates the matching Old field holds the object before.
type Event struct {
	Action  EventAction
	Kind    ObjectKind
	Version Version

	Service *Service
	Task    *Task
	Node    *NodeInfo
	Cluster *ClusterInfo

	OldService *Service
	OldTask    *Task
	OldNode    *NodeInfo
}

// WatchFilter selects events; empty fields match everything.
type WatchFilter struct {
	// Kinds limits events to these kinds of object.
	Kinds []ObjectKind
	// IDs limits events to these objects.
	IDs []string
	// Services limits events to these services (by ID) and their tasks.
	Services []string
	// Nodes limits events to these nodes and the tasks on them.
	Nodes []string
}

// Watch streams the changes that match f, from the moment Watch returns.
// The channel is closed when ctx is done or the connection to the manager
// breaks; watch again (and list to catch up) to continue.
func (c *Client) Watch(ctx context.Context, f WatchFilter) (<-chan Event, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	req := &api.WatchRequest{Ids: f.IDs, ServiceIds: f.Services, NodeIds: f.Nodes}
	for _, k := range f.Kinds {
		switch k {
		case KindService:
			req.Kinds = append(req.Kinds, api.ObjectKind_OBJECT_KIND_SERVICE)
		case KindTask:
			req.Kinds = append(req.Kinds, api.ObjectKind_OBJECT_KIND_TASK)
		case KindNode:
			req.Kinds = append(req.Kinds, api.ObjectKind_OBJECT_KIND_NODE)
		case KindCluster:
			req.Kinds = append(req.Kinds, api.ObjectKind_OBJECT_KIND_CLUSTER)
		default:
			return nil, fmt.Errorf("WatchFilter.Kinds: unknown kind %d: %w", int(k), ErrInvalidSpec)
		}
	}
	sctx, cancel := context.WithCancel(ctx)
	stream, err := c.ctl.Watch(sctx, req)
	if err != nil {
		cancel()
		return nil, errdefs.FromGRPC(err)
	}
	// The first message says the watch is established.
	if _, err := stream.Recv(); err != nil {
		cancel()
		return nil, errdefs.FromGRPC(err)
	}
	out := make(chan Event, 64)
	go func() {
		defer cancel()
		defer close(out)
		for {
			msg, err := stream.Recv()
			if err != nil {
				// The stream ended (ctx done, or the manager went away):
				// closing the channel says so.
				return
			}
			for _, e := range msg.Events {
				ev, ok := fromAPIEvent(e)
				if !ok {
					continue
				}
				select {
				case out <- ev:
				case <-sctx.Done():
					return
				}
			}
		}
	}()
	return out, nil
}

// ---- conversions between the public types and internal/api ----
