package ca

import (
	"context"
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/state"
	"github.com/shoalhq/shoal/pki"
)

// StartRootRotation returns the cluster's root CA with a rotation started: a
// new root, and its certificate cross-signed by the current root. c is not
// modified. A cluster with an external CA, or one already rotating, is
// refused with errdefs.ErrInvalidSpec naming UpdateClusterRequest.RotateRootCA.
func StartRootRotation(c *api.Cluster) (*api.RootCA, error) {
	rc := c.GetRootCa()
	switch {
	case rc.GetExternalUrl() != "":
		return nil, invalid("UpdateClusterRequest.RotateRootCA", "the cluster uses an external CA; rotate its root there")
	case rc.GetRotation() != nil:
		return nil, invalid("UpdateClusterRequest.RotateRootCA", "a root rotation is already in progress")
	}
	old, err := pki.ParseRootCA(rc.GetCertPem(), rc.GetKeyPem())
	if err != nil {
		return nil, fmt.Errorf("cluster root CA: %w", err)
	}
	next, err := pki.NewRootCA(c.GetId(), 0)
	if err != nil {
		return nil, err
	}
	cross, err := pki.CrossSign(old, next)
	if err != nil {
		return nil, err
	}
	out := proto.Clone(rc).(*api.RootCA)
	out.Rotation = &api.RootRotation{NewCertPem: next.CertPEM, NewKeyPem: next.KeyPEM, CrossSignedPem: cross}
	return out, nil
}

// RootRotationProgress reports, during a root rotation, how many nodes still
// need a certificate from the new root (nodes that are DOWN do not count:
// they join again after the rotation), and whether a rotation is in progress.
// A new root that does not parse reports -1 pending.
func RootRotationProgress(tx state.ReadTx, c *api.Cluster) (pending int, rotating bool) {
	rot := c.GetRootCa().GetRotation()
	if rot == nil {
		return 0, false
	}
	next, err := pki.ParseRootCA(rot.GetNewCertPem(), nil)
	if err != nil {
		return -1, true
	}
	nodes, _ := tx.FindNodes(state.All())
	for _, n := range nodes {
		if n.GetStatus().GetState() == api.NodeState_NODE_STATE_DOWN {
			continue
		}
		if n.GetCertRootDigest() != next.Digest() {
			pending++
		}
	}
	return pending, true
}

// FinishRootRotation completes a root rotation whose nodes all have
// certificates from the new root: the new root replaces the old, and the join
// tokens are replaced with tokens carrying its digest, in one write. It
// reports whether it did; without a rotation, or while a node lags, it
// writes nothing.
func FinishRootRotation(ctx context.Context, store *state.Store) (bool, error) {
	done := false
	err := store.Update(ctx, func(tx state.WriteTx) error {
		cs, _ := tx.FindClusters(state.All())
		if len(cs) == 0 {
			return nil
		}
		c := cs[0]
		if pending, rotating := RootRotationProgress(tx, c); !rotating || pending != 0 {
			return nil
		}
		rot := c.RootCa.Rotation
		c.RootCa = &api.RootCA{CertPem: rot.NewCertPem, KeyPem: rot.NewKeyPem}
		tokens, err := RotateTokens(c, true, true)
		if err != nil {
			return err
		}
		c.JoinTokens = tokens
		done = true
		return tx.UpdateCluster(c)
	})
	if err != nil {
		return false, err
	}
	return done, nil
}

// RotateTokens returns the cluster's join tokens with the worker and/or
// manager token replaced by a new one for the cluster's root CA. c is not
// modified.
func RotateTokens(c *api.Cluster, worker, manager bool) (*api.JoinTokens, error) {
	root, err := pki.ParseRootCA(c.GetRootCa().GetCertPem(), nil)
	if err != nil {
		return nil, fmt.Errorf("cluster root CA: %w", err)
	}
	out := &api.JoinTokens{Worker: c.GetJoinTokens().GetWorker(), Manager: c.GetJoinTokens().GetManager()}
	if worker {
		t, err := pki.NewToken(root.Digest())
		if err != nil {
			return nil, err
		}
		out.Worker = t.String()
	}
	if manager {
		t, err := pki.NewToken(root.Digest())
		if err != nil {
			return nil, err
		}
		out.Manager = t.String()
	}
	return out, nil
}
