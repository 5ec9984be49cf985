package controlapi

import (
	"context"
	"fmt"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/ca"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/gossipkeys"
	"github.com/shoalhq/shoal/internal/keys"
	"github.com/shoalhq/shoal/internal/state"
)

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
