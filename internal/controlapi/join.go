package controlapi

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/ca"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/identity"
	"github.com/shoalhq/shoal/internal/state"
	"github.com/shoalhq/shoal/pki"
)

// Membership is the part of the replicated log the join server needs to add
// a manager: raftstore.Node implements it.
//
// Its methods are safe for concurrent use (joins are served concurrently).
// AddLearner must be called on the leader, blocks until the change is applied
// on this member or ctx ends, and waits while another membership change is
// pending. IsLeader does not block.
type Membership interface {
	// IsLeader reports whether this member leads the Raft group now.
	IsLeader() bool
	// AddLearner adds a member that receives the log but does not vote,
	// returning once the change is applied; context is stored with it.
	AddLearner(ctx context.Context, id uint64, context []byte) error
}

// JoinConfig configures a JoinServer.
type JoinConfig struct {
	Store *state.Store
	// Managers lists the managers' addresses, leader first, for joiners. It
	// is called concurrently, once per join.
	Managers func() []string
	// Membership adds new managers to the Raft group.
	Membership Membership
	// Forward sends a manager's join to the leader; used when this manager is
	// not the leader (adding a Raft member needs the leader). It is called
	// concurrently.
	Forward func(ctx context.Context, req *api.JoinRequest) (*api.JoinResponse, error)
	// Signers signs the new node's certificate with the cluster's CA; nil
	// means a Signers of the join server's own.
	Signers *ca.Signers
}

// JoinServer admits nodes that present a valid join token: it creates their
// Node object, whose ID the new node keeps for life, and adds managers to the
// Raft group as learners (the leader promotes them once they caught up).
// The token's digest must be the cluster's root CA digest (the joining node
// checked the same against the root it fetched), and its secret one of the
// cluster's current tokens; the node's CSR is signed with the role the token
// grants.
type JoinServer struct {
	api.UnimplementedJoinServer
	cfg JoinConfig
}

var _ api.JoinServer = (*JoinServer)(nil)

// NewJoinServer returns a join server.
func NewJoinServer(cfg JoinConfig) *JoinServer {
	if cfg.Signers == nil {
		cfg.Signers = &ca.Signers{}
	}
	return &JoinServer{cfg: cfg}
}

// Join checks the token and registers the node.
func (s *JoinServer) Join(ctx context.Context, req *api.JoinRequest) (*api.JoinResponse, error) {
	tok, err := pki.ParseToken(req.GetToken())
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	var cluster *api.Cluster
	s.cfg.Store.View(func(tx state.ReadTx) {
		if cs, _ := tx.FindClusters(state.All()); len(cs) > 0 {
			cluster = cs[0]
		}
	})
	if cluster == nil {
		return nil, errdefs.ToGRPC(fmt.Errorf("join: this manager has no cluster yet: %w", errdefs.ErrStopped))
	}
	root, err := pki.ParseRootCA(cluster.GetRootCa().GetCertPem(), nil)
	if err != nil {
		return nil, errdefs.ToGRPC(fmt.Errorf("join: cluster root CA: %w", err))
	}
	if tok.Digest != root.Digest() {
		return nil, errdefs.ToGRPC(fmt.Errorf("join token is for another cluster (its digest is not this cluster's root CA): %w", errdefs.ErrInvalidToken))
	}
	if len(req.GetCsr()) == 0 {
		return nil, errdefs.ToGRPC(invalid("JoinRequest.Csr", "is required: the node's certificate signing request"))
	}
	if _, err := pki.ParseCSR(req.GetCsr()); err != nil {
		return nil, errdefs.ToGRPC(invalid("JoinRequest.Csr", "%v", err))
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
		if s.cfg.Membership == nil {
			return nil, errdefs.ToGRPC(fmt.Errorf("join: this node cannot add managers: %w", errdefs.ErrNotManager))
		}
		if !s.cfg.Membership.IsLeader() {
			if s.cfg.Forward == nil {
				return nil, errdefs.ToGRPC(fmt.Errorf("join: this manager is not the leader: %w", errdefs.ErrNotLeader))
			}
			return s.cfg.Forward(ctx, req)
		}
	}
	desc := req.GetDescription()
	node := &api.Node{
		Id:          identity.NewID(),
		Role:        role,
		Spec:        &api.NodeSpec{DesiredRole: role, Availability: api.NodeAvailability_NODE_AVAILABILITY_ACTIVE, Labels: req.GetLabels()},
		Description: desc,
		Status:      &api.NodeStatus{State: api.NodeState_NODE_STATE_UNKNOWN, Addr: req.GetAddr(), Message: "joined; waiting for its first session"},
	}
	resp := &api.JoinResponse{NodeId: node.Id, ClusterId: cluster.Id, Role: role}
	if role == api.NodeRole_NODE_ROLE_MANAGER {
		if req.GetAddr() == "" {
			return nil, errdefs.ToGRPC(fmt.Errorf("JoinRequest.Addr: a manager must say where other managers reach it: %w", errdefs.ErrInvalidSpec))
		}
		peers, raftID, err := s.peersAndNewID()
		if err != nil {
			return nil, errdefs.ToGRPC(err)
		}
		node.ManagerStatus = &api.ManagerStatus{RaftId: raftID, Addr: req.GetAddr()}
		resp.RaftId = raftID
		resp.Peers = peers
	}
	cert, digest, err := s.cfg.Signers.Issue(ctx, cluster, req.GetCsr(), pki.Subject{NodeID: node.Id, Role: ca.OU(role)}, ca.CertValidity(cluster))
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	node.CertRootDigest = digest
	resp.CertificatePem, resp.RootCaPem = cert.CertificatePem, cert.RootCaPem
	if err := s.cfg.Store.Update(ctx, func(tx state.WriteTx) error { return tx.CreateNode(node) }); err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	if role == api.NodeRole_NODE_ROLE_MANAGER {
		if err := s.cfg.Membership.AddLearner(ctx, resp.RaftId, []byte(req.GetAddr())); err != nil {
			// Leave no manager object behind for a member that was not added.
			_ = s.cfg.Store.Update(context.WithoutCancel(ctx), func(tx state.WriteTx) error { return tx.DeleteNode(node.Id) })
			return nil, errdefs.ToGRPC(fmt.Errorf("join: add manager to the Raft group: %w", err))
		}
	}
	resp.Managers = s.cfg.Managers()
	return resp, nil
}

// peersAndNewID lists the current managers' Raft IDs and addresses and picks
// an unused Raft ID for a new one.
func (s *JoinServer) peersAndNewID() (peers []*api.RaftPeer, id uint64, err error) {
	s.cfg.Store.View(func(tx state.ReadTx) { peers, id, err = raftPeersAndNewID(tx) })
	return peers, id, err
}

// raftPeersAndNewID lists the managers' Raft IDs and addresses in tx and
// picks a random unused Raft ID.
func raftPeersAndNewID(tx state.ReadTx) ([]*api.RaftPeer, uint64, error) {
	var peers []*api.RaftPeer
	used := map[uint64]bool{}
	nodes, err := tx.FindNodes(state.ByRole(api.NodeRole_NODE_ROLE_MANAGER))
	if err != nil {
		return nil, 0, err
	}
	for _, n := range nodes {
		if ms := n.GetManagerStatus(); ms.GetRaftId() != 0 {
			used[ms.RaftId] = true
			peers = append(peers, &api.RaftPeer{RaftId: ms.RaftId, Addr: ms.Addr})
		}
	}
	for {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, 0, err
		}
		id := binary.BigEndian.Uint64(b[:])
		if id != 0 && !used[id] {
			return peers, id, nil
		}
	}
}
