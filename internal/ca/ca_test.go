package ca

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/state"
	"github.com/shoalhq/shoal/internal/state/statetest"
	"github.com/shoalhq/shoal/pki"
)

const clusterID = "cluster00000000000000000a"

func newCluster(t *testing.T) (*api.Cluster, *pki.RootCA) {
	t.Helper()
	root, err := pki.NewRootCA(clusterID, 0)
	require.NoError(t, err)
	c := &api.Cluster{Id: clusterID, Spec: &api.ClusterSpec{Name: "default"}, RootCa: &api.RootCA{CertPem: root.CertPEM, KeyPem: root.KeyPEM}}
	c.JoinTokens, err = RotateTokens(c, true, true)
	require.NoError(t, err)
	return c, root
}

func TestIssueFollowsTheRotation(t *testing.T) {
	ctx := context.Background()
	c, root := newCluster(t)
	_, csr, err := pki.NewKeyAndCSR("node1")
	require.NoError(t, err)
	var s Signers

	resp, digest, err := s.Issue(ctx, c, csr, pki.Subject{NodeID: "node1", Role: OU(api.NodeRole_NODE_ROLE_WORKER)}, CertValidity(c))
	require.NoError(t, err)
	assert.Equal(t, root.Digest(), digest)
	assert.NotEmpty(t, resp.CertificatePem)

	before := proto.Clone(c)
	rc, err := StartRootRotation(c)
	require.NoError(t, err)
	assert.True(t, proto.Equal(before, c), "the cluster is not modified")
	require.NotNil(t, rc.Rotation)
	assert.NotEmpty(t, rc.Rotation.CrossSignedPem)
	c.RootCa = rc
	next, err := pki.ParseRootCA(rc.Rotation.NewCertPem, nil)
	require.NoError(t, err)
	_, digest, err = s.Issue(ctx, c, csr, pki.Subject{NodeID: "node1", Role: pki.OUWorker}, CertValidity(c))
	require.NoError(t, err)
	assert.Equal(t, next.Digest(), digest, "during a rotation the new root issues")

	_, err = StartRootRotation(c)
	require.ErrorIs(t, err, errdefs.ErrInvalidSpec)
	assert.ErrorContains(t, err, "UpdateClusterRequest.RotateRootCA: a root rotation is already in progress")
	ext := &api.Cluster{Id: clusterID, RootCa: &api.RootCA{CertPem: root.CertPEM, ExternalUrl: "https://ca.example"}}
	_, err = StartRootRotation(ext)
	require.ErrorIs(t, err, errdefs.ErrInvalidSpec)

	_, _, err = s.Issue(ctx, c, []byte("not a csr"), pki.Subject{NodeID: "node1", Role: pki.OUWorker}, time.Hour)
	require.ErrorIs(t, err, errdefs.ErrInvalidSpec)
	_, _, err = s.Issue(ctx, &api.Cluster{Id: clusterID}, csr, pki.Subject{NodeID: "node1", Role: pki.OUWorker}, time.Hour)
	require.ErrorIs(t, err, errdefs.ErrStopped, "a cluster without a root CA")
}

func TestFinishRootRotation(t *testing.T) {
	ctx := context.Background()
	c, root := newCluster(t)
	oldTokens := c.JoinTokens
	st := statetest.NewStore(state.Config{})
	require.NoError(t, st.Update(ctx, func(tx state.WriteTx) error {
		if err := tx.CreateCluster(c); err != nil {
			return err
		}
		for _, n := range []*api.Node{
			{Id: "n1", Status: &api.NodeStatus{State: api.NodeState_NODE_STATE_READY}, CertRootDigest: root.Digest()},
			{Id: "down", Status: &api.NodeStatus{State: api.NodeState_NODE_STATE_DOWN}, CertRootDigest: root.Digest()},
		} {
			if err := tx.CreateNode(n); err != nil {
				return err
			}
		}
		return nil
	}))
	done, err := FinishRootRotation(ctx, st)
	require.NoError(t, err)
	assert.False(t, done, "no rotation runs")

	var next *pki.RootCA
	require.NoError(t, st.Update(ctx, func(tx state.WriteTx) error {
		c := tx.GetCluster(clusterID)
		rc, err := StartRootRotation(c)
		if err != nil {
			return err
		}
		c.RootCa = rc
		next, err = pki.ParseRootCA(rc.Rotation.NewCertPem, nil)
		if err != nil {
			return err
		}
		return tx.UpdateCluster(c)
	}))
	progress := func() (int, bool) {
		var pending int
		var rotating bool
		st.View(func(tx state.ReadTx) { pending, rotating = RootRotationProgress(tx, tx.GetCluster(clusterID)) })
		return pending, rotating
	}
	pending, rotating := progress()
	assert.True(t, rotating)
	assert.Equal(t, 1, pending, "a DOWN node does not count")
	done, err = FinishRootRotation(ctx, st)
	require.NoError(t, err)
	assert.False(t, done, "n1 lags")

	require.NoError(t, st.Update(ctx, func(tx state.WriteTx) error {
		n := tx.GetNode("n1")
		n.CertRootDigest = next.Digest()
		return tx.UpdateNode(n)
	}))
	done, err = FinishRootRotation(ctx, st)
	require.NoError(t, err)
	assert.True(t, done)
	_, rotating = progress()
	assert.False(t, rotating)
	var got *api.Cluster
	st.View(func(tx state.ReadTx) { got = tx.GetCluster(clusterID) })
	assert.Equal(t, next.CertPEM, got.RootCa.CertPem)
	tok, err := pki.ParseToken(got.JoinTokens.Worker)
	require.NoError(t, err)
	assert.Equal(t, next.Digest(), tok.Digest)
	assert.NotEqual(t, oldTokens.Manager, got.JoinTokens.Manager)
}

func TestRotateTokensAndHelpers(t *testing.T) {
	c, _ := newCluster(t)
	only, err := RotateTokens(c, true, false)
	require.NoError(t, err)
	assert.NotEqual(t, c.JoinTokens.Worker, only.Worker)
	assert.Equal(t, c.JoinTokens.Manager, only.Manager)

	assert.Equal(t, pki.OUManager, OU(api.NodeRole_NODE_ROLE_MANAGER))
	assert.Equal(t, pki.OUWorker, OU(api.NodeRole_NODE_ROLE_WORKER))
	assert.Equal(t, pki.DefaultCertValidity, CertValidity(c))
	c.Spec.NodeCertValidity = int64(48 * time.Hour)
	assert.Equal(t, 48*time.Hour, CertValidity(c))
	assert.True(t, ClientNameRE.MatchString("ops.alice"))
	assert.False(t, ClientNameRE.MatchString("-x"))
}
