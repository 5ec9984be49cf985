package controlapi

import (
	"context"
	"fmt"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/identity"
	"github.com/shoalhq/shoal/internal/state"
	"github.com/shoalhq/shoal/pki"
)

// JoinServer admits nodes that present a valid join token: it creates their
// Node object, whose ID the new node keeps for life. Until the security work
// lands, the token's secret is the only credential; the API is shaped so a
// certificate signing request slots into JoinRequest later.
type JoinServer struct {
	api.UnimplementedJoinServer
	store    *state.Store
	managers func() []string
}

var _ api.JoinServer = (*JoinServer)(nil)

// NewJoinServer returns a join server over store; managers lists the
// addresses returned to joining nodes.
func NewJoinServer(store *state.Store, managers func() []string) *JoinServer {
	return &JoinServer{store: store, managers: managers}
}

// Join checks the token and registers the node.
func (s *JoinServer) Join(ctx context.Context, req *api.JoinRequest) (*api.JoinResponse, error) {
	tok, err := pki.ParseToken(req.GetToken())
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	var cluster *api.Cluster
	s.store.View(func(tx state.ReadTx) {
		if cs, _ := tx.FindClusters(state.All()); len(cs) > 0 {
			cluster = cs[0]
		}
	})
	if cluster == nil {
		return nil, errdefs.ToGRPC(fmt.Errorf("join: this manager has no cluster yet: %w", errdefs.ErrStopped))
	}
	if tok.Digest != pki.Digest([]byte(cluster.Id)) {
		return nil, errdefs.ToGRPC(fmt.Errorf("join token is for another cluster: %w", errdefs.ErrInvalidToken))
	}
	role := api.NodeRole_NODE_ROLE_WORKER
	worker, _ := pki.ParseToken(cluster.GetJoinTokens().GetWorker())
	manager, _ := pki.ParseToken(cluster.GetJoinTokens().GetManager())
	switch {
	case tok.Equal(worker):
	case tok.Equal(manager):
		role = api.NodeRole_NODE_ROLE_MANAGER
	default:
		return nil, errdefs.ToGRPC(fmt.Errorf("join token was rotated or never issued: %w", errdefs.ErrInvalidToken))
	}
	if role == api.NodeRole_NODE_ROLE_MANAGER {
		return nil, errdefs.ToGRPC(fmt.Errorf("joining as a manager needs multi-manager support, which this version does not have yet; join as a worker: %w", errdefs.ErrInvalidSpec))
	}
	desc := req.GetDescription()
	node := &api.Node{
		Id:          identity.NewID(),
		Role:        role,
		Spec:        &api.NodeSpec{DesiredRole: role, Availability: api.NodeAvailability_NODE_AVAILABILITY_ACTIVE, Labels: req.GetLabels()},
		Description: desc,
		Status:      &api.NodeStatus{State: api.NodeState_NODE_STATE_UNKNOWN, Addr: req.GetAddr(), Message: "joined; waiting for its first session"},
	}
	if err := s.store.Update(ctx, func(tx state.WriteTx) error { return tx.CreateNode(node) }); err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return &api.JoinResponse{NodeId: node.Id, ClusterId: cluster.Id, Role: role, Managers: s.managers()}, nil
}
