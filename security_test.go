package shoal_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"

	"github.com/shoalhq/shoal"
	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/pki"
	"github.com/shoalhq/shoal/runtime/runtimetest"
	"github.com/shoalhq/shoal/shoaltest"
)

// TestSecurityJoinRefusals: every way of presenting a wrong token, or of
// being pointed at the wrong manager, is refused with a reason, matches the
// right sentinel, and writes nothing on the joining node or on either
// cluster.
func TestSecurityJoinRefusals(t *testing.T) {
	dir := t.TempDir()
	a := secInitTCP(t, dir, "a-m1")
	b := secInitTCP(t, dir, "b-m1")
	ctx := ctxT(t)
	infoA := secClusterInfo(t, a.Client())
	infoB := secClusterInfo(t, b.Client())
	require.NotEqual(t, infoA.RootCADigest, infoB.RootCADigest, "two clusters share a root CA")
	tokA, err := pki.ParseToken(infoA.WorkerToken)
	require.NoError(t, err)
	randomSecret, err := pki.NewToken(tokA.Digest)
	require.NoError(t, err)
	nodesA, nodesB := secNodeIDs(t, a.Client()), secNodeIDs(t, b.Client())

	n := 0
	join := func(addr, token string) (string, error) {
		n++
		cfg := secTCPConfig(dir, secName("joiner", n))
		jn, err := shoal.Join(ctx, cfg, addr, token)
		if err == nil {
			secStop(t, jn)
		}
		return cfg.StateDir, err
	}

	cases := []struct {
		name  string
		addr  string
		token string
		is    error  // sentinel the error must match
		says  string // the reason the error must give
		local bool   // refused before any connection: StateDir not even made
	}{
		{name: "malformed", addr: a.Addr(), token: "not-a-token", is: shoal.ErrInvalidToken,
			says: "must have the form SHLTKN-1-<digest>-<secret>", local: true},
		{name: "wrong version", addr: a.Addr(), token: strings.Replace(infoA.WorkerToken, "SHLTKN-1-", "SHLTKN-2-", 1),
			is: shoal.ErrInvalidToken, says: "version", local: true},
		{name: "uppercase secret", addr: a.Addr(), token: "SHLTKN-1-" + tokA.Digest + "-" + strings.ToUpper(tokA.Secret),
			is: shoal.ErrInvalidToken, says: "secret must be 25 lowercase base-36 characters", local: true},
		{name: "truncated digest", addr: a.Addr(), token: "SHLTKN-1-" + tokA.Digest[1:] + "-" + tokA.Secret,
			is: shoal.ErrInvalidToken, says: "digest must be 50", local: true},
		{name: "tampered secret", addr: a.Addr(), token: "SHLTKN-1-" + tokA.Digest + "-" + secTamper(tokA.Secret, 7),
			is: shoal.ErrInvalidToken, says: "rotated or never issued"},
		{name: "random secret", addr: a.Addr(), token: randomSecret.String(),
			is: shoal.ErrInvalidToken, says: "rotated or never issued"},
		{name: "manager token with one character changed", addr: a.Addr(), token: secTamper(infoA.ManagerToken, len(infoA.ManagerToken)-1),
			is: shoal.ErrInvalidToken, says: "rotated or never issued"},
		{name: "tampered digest", addr: a.Addr(), token: "SHLTKN-1-" + secTamper(tokA.Digest, 9) + "-" + tokA.Secret,
			is: pki.ErrDigestMismatch, says: "does not match the join token"},
		{name: "another cluster's worker token", addr: a.Addr(), token: infoB.WorkerToken,
			is: pki.ErrDigestMismatch, says: "does not match the join token"},
		{name: "another cluster's manager token", addr: a.Addr(), token: infoB.ManagerToken,
			is: pki.ErrDigestMismatch, says: "does not match the join token"},
		// A rogue manager: the node holds cluster A's token but is pointed
		// at a manager of cluster B. The token's digest pins A's root CA.
		{name: "rogue manager", addr: b.Addr(), token: infoA.WorkerToken,
			is: pki.ErrDigestMismatch, says: "does not match the join token"},
		{name: "rogue manager with a manager token", addr: b.Addr(), token: infoA.ManagerToken,
			is: pki.ErrDigestMismatch, says: "does not match the join token"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			stateDir, err := join(tc.addr, tc.token)
			require.Error(t, err, "the join was accepted")
			assert.ErrorIs(t, err, tc.is)
			assert.ErrorIs(t, err, shoal.ErrInvalidToken, "every refused token matches ErrInvalidToken")
			assert.Contains(t, err.Error(), tc.says)
			if tc.token != "" {
				tok, perr := pki.ParseToken(tc.token)
				if perr == nil {
					assert.NotContains(t, err.Error(), tok.Secret, "the error echoes the token's secret")
				}
			}
			if tc.local {
				_, serr := os.Stat(stateDir)
				assert.Truef(t, os.IsNotExist(serr), "a malformed token made StateDir (stat: %v)", serr)
			} else {
				secNothingWritten(t, stateDir)
			}
		})
	}
	// Neither cluster admitted anyone.
	assert.Equal(t, nodesA, secNodeIDs(t, a.Client()), "cluster A's node list changed")
	assert.Equal(t, nodesB, secNodeIDs(t, b.Client()), "cluster B's node list changed")

	t.Run("server refuses another cluster's token", func(t *testing.T) {
		// A client that skips the digest check (a hostile or buggy one) is
		// still refused by the manager itself.
		conn, err := grpc.NewClient(a.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(
			&tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true}))) //nolint:gosec // the test plays a hostile client
		require.NoError(t, err)
		defer conn.Close()
		_, csr, err := pki.NewKeyAndCSR("hostile")
		require.NoError(t, err)
		for _, tok := range []struct{ token, says string }{
			{infoB.WorkerToken, "another cluster"},
			{"SHLTKN-1-" + tokA.Digest + "-" + mustParseToken(t, infoB.WorkerToken).Secret, "rotated or never issued"},
		} {
			_, err = api.NewJoinClient(conn).Join(ctx, &api.JoinRequest{Token: tok.token, Csr: csr, Addr: "127.0.0.1:1"})
			require.Error(t, err)
			assert.ErrorIs(t, errdefs.FromGRPC(err), shoal.ErrInvalidToken)
			assert.Contains(t, err.Error(), tok.says)
		}
		assert.Equal(t, nodesA, secNodeIDs(t, a.Client()), "cluster A's node list changed")
	})

	t.Run("rotated token", func(t *testing.T) {
		old := infoA.WorkerToken
		oldManager := infoA.ManagerToken
		info, err := a.Client().UpdateCluster(ctx, shoal.ClusterUpdate{RotateWorkerToken: true})
		require.NoError(t, err)
		require.NotEqual(t, old, info.WorkerToken, "the worker token did not change")
		assert.Equal(t, oldManager, info.ManagerToken, "rotating the worker token changed the manager token")
		assert.Equal(t, infoA.RootCADigest, mustParseToken(t, info.WorkerToken).Digest, "the new token pins another root")

		stateDir, err := join(a.Addr(), old)
		require.Error(t, err, "the rotated-away token still admits a node")
		assert.ErrorIs(t, err, shoal.ErrInvalidToken)
		assert.Contains(t, err.Error(), "rotated or never issued")
		secNothingWritten(t, stateDir)

		stateDir, err = join(a.Addr(), info.WorkerToken)
		require.NoError(t, err, "the new token is refused")
		kp, err := pki.LoadKeyPair(secCertDir(stateDir))
		require.NoError(t, err)
		creds, err := pki.NewCredentials(kp)
		require.NoError(t, err)
		assert.Equal(t, pki.OUWorker, creds.Subject().Role)
		assert.Equal(t, a.ClusterID(), creds.Subject().ClusterID)
		assert.Len(t, secNodeIDs(t, a.Client()), len(nodesA)+1)
		assert.Equal(t, nodesB, secNodeIDs(t, b.Client()), "cluster B's node list changed")
	})

	t.Run("rotated manager token", func(t *testing.T) {
		before := secClusterInfo(t, a.Client())
		info, err := a.Client().UpdateCluster(ctx, shoal.ClusterUpdate{RotateManagerToken: true})
		require.NoError(t, err)
		require.NotEqual(t, before.ManagerToken, info.ManagerToken)
		assert.Equal(t, before.WorkerToken, info.WorkerToken, "rotating the manager token changed the worker token")
		stateDir, err := join(a.Addr(), before.ManagerToken)
		require.Error(t, err, "the rotated-away manager token still admits a manager")
		assert.ErrorIs(t, err, shoal.ErrInvalidToken)
		secNothingWritten(t, stateDir)
		voters, learners, err := a.RaftMembers(ctx)
		require.NoError(t, err)
		assert.Equal(t, 1, voters)
		assert.Equal(t, 0, learners)
	})

	t.Run("StateDir of a live node", func(t *testing.T) {
		// Joining into a StateDir that holds a node with a valid
		// certificate is refused: it must be restarted, not replaced.
		cfg := secTCPConfig(dir, "a-m1")
		_, err := shoal.Join(ctx, cfg, a.Addr(), secClusterInfo(t, a.Client()).WorkerToken)
		require.Error(t, err)
		assert.ErrorIs(t, err, shoal.ErrExist)
		assert.Contains(t, err.Error(), "already holds node "+a.ID())
	})
}

func mustParseToken(t *testing.T, s string) pki.Token {
	t.Helper()
	tok, err := pki.ParseToken(s)
	require.NoError(t, err)
	return tok
}

// TestSecurityCertificatesOnDisk: every node's key material is private,
// names the node, its role and its cluster, and chains to the root the join
// tokens pin.
func TestSecurityCertificatesOnDisk(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Managers: 1, Workers: 1})
	info := secClusterInfo(t, c.Client())
	rootPool := x509.NewCertPool()
	require.True(t, rootPool.AppendCertsFromPEM(info.RootCACert), "ClusterInfo.RootCACert is not PEM")
	block := firstPEM(t, info.RootCACert)
	assert.Equal(t, pki.Digest(block), info.RootCADigest, "RootCADigest is not the digest of RootCACert")
	assert.Equal(t, info.RootCADigest, mustParseToken(t, info.WorkerToken).Digest)
	assert.Equal(t, info.RootCADigest, mustParseToken(t, info.ManagerToken).Digest)
	assert.NotEqual(t, mustParseToken(t, info.WorkerToken).Secret, mustParseToken(t, info.ManagerToken).Secret)

	for _, n := range c.Nodes() {
		t.Run(n.Name, func(t *testing.T) {
			dir := secCertDir(n.StateDir)
			assert.Equal(t, os.FileMode(0o700), secMode(t, dir), "certificates directory mode")
			for _, f := range []string{pki.CertFile, pki.KeyFile, pki.RootFile} {
				assert.Equalf(t, os.FileMode(0o600), secMode(t, filepath.Join(dir, f)), "%s mode", f)
			}
			leaf, kp := secLeaf(t, n.StateDir)
			wantRole := pki.OUWorker
			if n.IsManager() {
				wantRole = pki.OUManager
			}
			assert.Equal(t, n.ID(), leaf.Subject.CommonName, "CN")
			assert.Equal(t, []string{wantRole}, leaf.Subject.OrganizationalUnit, "OU")
			assert.Equal(t, []string{info.ID}, leaf.Subject.Organization, "O")
			_, err := leaf.Verify(x509.VerifyOptions{Roots: rootPool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
			assert.NoError(t, err, "the node certificate does not chain to ClusterInfo.RootCACert")
			_, err = leaf.Verify(x509.VerifyOptions{Roots: rootPool, DNSName: pki.ManagerServerName,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
			if n.IsManager() {
				assert.NoError(t, err, "a manager certificate must serve as %s", pki.ManagerServerName)
			} else {
				assert.Error(t, err, "a worker certificate can pose as a manager")
			}
			assert.Equal(t, pki.Digest(firstPEM(t, kp.RootPEM)), info.RootCADigest, "ca.crt is not the cluster's root")

			ci := n.Shoal().Certificate()
			assert.Equal(t, n.ID(), ci.NodeID)
			assert.Equal(t, wantRole, ci.Role)
			assert.Equal(t, info.ID, ci.ClusterID)
			assert.Equal(t, info.RootCADigest, ci.RootDigest)
			assert.True(t, ci.NotBefore.Equal(leaf.NotBefore) && ci.NotAfter.Equal(leaf.NotAfter),
				"Node.Certificate is not the certificate on disk")
			assert.WithinDuration(t, ci.NotBefore.Add(info.CertValidity), ci.NotAfter, 10*time.Minute,
				"certificate validity is not the cluster's CertValidity")
		})
	}
}

// TestSecurityAuthorization calls the managers' RPCs directly with each kind
// of credential and checks each is allowed only what its role allows.
func TestSecurityAuthorization(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Managers: 1, Workers: 2})
	ctx := ctxT(t)
	m := c.Manager()
	w1, w2 := c.Workers()[0], c.Workers()[1]
	info := secClusterInfo(t, c.Client())

	worker := secRawConn(t, c, "raw-worker", m.Addr, secNodeTLS(t, w1.StateDir))
	mgr := secRawConn(t, c, "raw-manager", m.Addr, secNodeTLS(t, m.StateDir))
	anon := secRawConn(t, c, "raw-anon", m.Addr, secAnonTLS(t, info.RootCACert))
	opCreds, err := c.Client().IssueClientCredentials(ctx, "auth-test", 0)
	require.NoError(t, err)
	op := secRawConn(t, c, "raw-operator", m.Addr, secOperatorTLS(t, opCreds))

	t.Run("worker", func(t *testing.T) {
		_, err := api.NewControlClient(worker).ListServices(ctx, &api.ListServicesRequest{})
		secRequireDenied(t, err, "needs a manager or operator certificate", "worker Control.ListServices")
		_, err = api.NewControlClient(worker).RemoveNode(ctx, &api.RemoveRequest{Id: w2.ID(), Force: true})
		secRequireDenied(t, err, "needs a manager or operator certificate", "worker Control.RemoveNode")
		_, err = api.NewRaftClient(worker).Propose(ctx, &api.ProposeRequest{From: 1, Data: []byte("x")})
		secRequireDenied(t, err, "is for managers", "worker Raft.Propose")
		secRequireDenied(t, secRaftMessages(ctx, worker), "is for managers", "worker Raft.Messages")
		_, err = api.NewDispatcherClient(worker).Heartbeat(ctx, &api.HeartbeatRequest{NodeId: w2.ID()})
		secRequireDenied(t, err, "may only act for itself", "worker Heartbeat for another node")
		_, err = api.NewDispatcherClient(worker).Heartbeat(ctx, &api.HeartbeatRequest{NodeId: m.ID()})
		secRequireDenied(t, err, "may only act for itself", "worker Heartbeat for the manager")
		_, err = api.NewDispatcherClient(worker).Heartbeat(ctx, &api.HeartbeatRequest{NodeId: w1.ID()})
		assert.NotEqual(t, codes.PermissionDenied, secCode(err), "a worker may heartbeat for itself: %v", err)
		assert.NotEqual(t, codes.Unauthenticated, secCode(err), "a worker may heartbeat for itself: %v", err)
		// Any certificate of the cluster may read the root CA.
		resp, err := api.NewCAClient(worker).GetRootCA(ctx, &api.GetRootCARequest{})
		require.NoError(t, err)
		assert.Equal(t, info.RootCADigest, pki.Digest(firstPEM(t, resp.GetCertPem())))
	})

	t.Run("renewal ignores what the CSR asks", func(t *testing.T) {
		// A worker asking, in its CSR, to be the manager gets a worker
		// certificate for itself: the CA writes what the store says.
		_, csr, err := pki.NewKeyAndCSR(m.ID())
		require.NoError(t, err)
		resp, err := api.NewCAClient(worker).RenewCertificate(ctx, &api.RenewCertificateRequest{Csr: csr})
		require.NoError(t, err)
		pool := x509.NewCertPool()
		require.True(t, pool.AppendCertsFromPEM(info.RootCACert))
		_, subj, err := pki.VerifyCert(resp.GetCertificatePem(), pool, time.Now())
		require.NoError(t, err)
		assert.Equal(t, pki.Subject{NodeID: w1.ID(), Role: pki.OUWorker, ClusterID: info.ID}, subj)
	})

	t.Run("TLS 1.2", func(t *testing.T) {
		cfg := secAnonTLS(t, info.RootCACert)
		cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
		old := secRawConn(t, c, "raw-tls12", m.Addr, cfg)
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_, err := api.NewCAClient(old).GetRootCA(cctx, &api.GetRootCARequest{})
		require.Error(t, err, "a TLS 1.2 connection was accepted")
		assert.Equal(t, codes.Unavailable, secCode(err), "%v", err)
	})

	t.Run("manager", func(t *testing.T) {
		// The same calls with the manager's own certificate are allowed:
		// the refusals above are about the role, not the connection.
		_, err := api.NewControlClient(mgr).ListServices(ctx, &api.ListServicesRequest{})
		require.NoError(t, err)
		_, err = api.NewDispatcherClient(mgr).Heartbeat(ctx, &api.HeartbeatRequest{NodeId: w1.ID()})
		secRequireDenied(t, err, "may only act for itself", "manager Heartbeat for a worker")
	})

	t.Run("no certificate", func(t *testing.T) {
		_, err := api.NewControlClient(anon).ListServices(ctx, &api.ListServicesRequest{})
		require.Error(t, err)
		assert.Equal(t, codes.Unauthenticated, secCode(err), "%v", err)
		assert.Contains(t, err.Error(), "needs a client certificate")
		_, err = api.NewRaftClient(anon).Propose(ctx, &api.ProposeRequest{From: 1})
		assert.Equal(t, codes.Unauthenticated, secCode(err), "%v", err)
		_, err = api.NewDispatcherClient(anon).Heartbeat(ctx, &api.HeartbeatRequest{NodeId: w1.ID()})
		assert.Equal(t, codes.Unauthenticated, secCode(err), "%v", err)
		_, csr, kerr := pki.NewKeyAndCSR("anon")
		require.NoError(t, kerr)
		_, err = api.NewCAClient(anon).IssueClientCertificate(ctx, &api.IssueClientCertificateRequest{Csr: csr, Name: "anon"})
		assert.Contains(t, []codes.Code{codes.Unauthenticated, codes.PermissionDenied}, secCode(err), "%v", err)
		_, err = api.NewCAClient(anon).RenewCertificate(ctx, &api.RenewCertificateRequest{Csr: csr})
		assert.Contains(t, []codes.Code{codes.Unauthenticated, codes.PermissionDenied}, secCode(err), "%v", err)
		// The root CA is open: a joining node has no certificate yet.
		resp, err := api.NewCAClient(anon).GetRootCA(ctx, &api.GetRootCARequest{})
		require.NoError(t, err)
		assert.Equal(t, info.RootCADigest, pki.Digest(firstPEM(t, resp.GetCertPem())))
	})

	t.Run("operator", func(t *testing.T) {
		resp, err := api.NewControlClient(op).ListNodes(ctx, &api.ListNodesRequest{})
		require.NoError(t, err, "an operator certificate may use the control API")
		assert.Len(t, resp.GetNodes(), 3)
		_, err = api.NewRaftClient(op).Propose(ctx, &api.ProposeRequest{From: 1, Data: []byte("x")})
		secRequireDenied(t, err, "is for managers", "operator Raft.Propose")
		secRequireDenied(t, secRaftMessages(ctx, op), "is for managers", "operator Raft.Messages")
		_, err = api.NewDispatcherClient(op).Heartbeat(ctx, &api.HeartbeatRequest{NodeId: w1.ID()})
		secRequireDenied(t, err, "is for nodes", "operator Heartbeat")
	})

	t.Run("another CA", func(t *testing.T) {
		// A certificate that claims to be a manager of THIS cluster, made
		// by a CA the cluster does not trust: the server refuses it in the
		// TLS handshake, before any RPC runs.
		rogue, err := pki.NewRootCA("rogue", 0)
		require.NoError(t, err)
		key, keyPEM := secNewKey(t)
		certPEM := secForgeCert(t, rogue, key.Public(), pki.Subject{NodeID: m.ID(), Role: pki.OUManager, ClusterID: info.ID},
			time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		require.NoError(t, err)
		cfg := secAnonTLS(t, info.RootCACert) // trusts the real managers
		// Always present it (with Certificates, crypto/tls would withhold
		// a certificate the server's CA list does not name).
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }
		conn := secRawConn(t, c, "raw-rogue", m.Addr, cfg)
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		for _, call := range []func() error{
			func() error {
				_, err := api.NewControlClient(conn).ListServices(cctx, &api.ListServicesRequest{})
				return err
			},
			func() error {
				_, err := api.NewRaftClient(conn).Propose(cctx, &api.ProposeRequest{From: 1})
				return err
			},
			func() error {
				_, err := api.NewCAClient(conn).GetRootCA(cctx, &api.GetRootCARequest{})
				return err
			},
		} {
			err := call()
			require.Error(t, err, "a certificate of another CA was accepted")
			assert.Equal(t, codes.Unavailable, secCode(err), "want a failed handshake, got %v", err)
		}

		// The same with a real certificate of another cluster.
		other := shoaltest.Start(t, shoaltest.Options{Managers: 1})
		otherDir := other.Manager().StateDir
		ocfg := secNodeTLS(t, otherDir)
		ocfg.InsecureSkipVerify = true //nolint:gosec // only the server's verdict on our certificate matters here
		ocfg.VerifyConnection = nil
		oconn := secRawConn(t, c, "raw-other", m.Addr, ocfg)
		_, err = api.NewControlClient(oconn).ListServices(cctx, &api.ListServicesRequest{})
		require.Error(t, err, "another cluster's manager certificate was accepted")
		assert.Equal(t, codes.Unavailable, secCode(err), "want a failed handshake, got %v", err)
	})
}

// TestSecurityRemovedNodeRefused: from the moment a node is removed, its
// certificate no longer opens anything on the managers.
func TestSecurityRemovedNodeRefused(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Managers: 1, Workers: 2})
	ctx := ctxT(t)
	m, w := c.Manager(), c.Workers()[0]
	wid := w.ID()
	conn := secRawConn(t, c, "raw-removed", m.Addr, secNodeTLS(t, w.StateDir))
	_, csr, err := pki.NewKeyAndCSR("shoal-node")
	require.NoError(t, err)

	// Before: allowed.
	_, err = api.NewDispatcherClient(conn).Heartbeat(ctx, &api.HeartbeatRequest{NodeId: wid})
	require.NotEqual(t, codes.PermissionDenied, secCode(err), "%v", err)
	_, err = api.NewCAClient(conn).RenewCertificate(ctx, &api.RenewCertificateRequest{Csr: csr})
	require.NoError(t, err, "a member's renewal is refused")

	require.NoError(t, c.Client().RemoveNode(ctx, wid, true))

	// After: refused at once, on the connection opened before the removal.
	_, err = api.NewDispatcherClient(conn).Heartbeat(ctx, &api.HeartbeatRequest{NodeId: wid})
	secRequireDenied(t, err, "removed", "removed node's Heartbeat")
	_, err = api.NewCAClient(conn).RenewCertificate(ctx, &api.RenewCertificateRequest{Csr: csr})
	secRequireDenied(t, err, "removed", "removed node's RenewCertificate")
	_, err = api.NewDispatcherClient(conn).UpdateTaskStatus(ctx, &api.UpdateTaskStatusRequest{NodeId: wid})
	secRequireDenied(t, err, "removed", "removed node's UpdateTaskStatus")
	// And on a new connection too.
	fresh := secRawConn(t, c, "raw-removed-2", m.Addr, secNodeTLS(t, w.StateDir))
	_, err = api.NewCAClient(fresh).RenewCertificate(ctx, &api.RenewCertificateRequest{Csr: csr})
	secRequireDenied(t, err, "removed", "removed node's RenewCertificate on a new connection")
	// The node itself cannot renew either.
	if sn := w.Shoal(); sn != nil {
		err := sn.RenewCertificate(ctx)
		require.Error(t, err, "a removed node renewed its certificate")
		assert.Contains(t, err.Error(), "removed")
	}
	// The other worker is unaffected.
	other := secRawConn(t, c, "raw-other-worker", m.Addr, secNodeTLS(t, c.Workers()[1].StateDir))
	_, err = api.NewCAClient(other).RenewCertificate(ctx, &api.RenewCertificateRequest{Csr: csr})
	assert.NoError(t, err)
}

// TestSecurityRotationUnderLoad renews every node's certificate several
// times and promotes and demotes a worker while clients read and write
// continuously: no call fails, no task restarts, and every certificate
// changes.
func TestSecurityRotationUnderLoad(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Managers: 3, Workers: 3})
	ctx := ctxT(t)
	svc, err := c.Client().CreateService(ctx, webSpec("web", 6))
	require.NoError(t, err)
	c.WaitRunning(svc.ID, 6)
	running := func() map[string]bool {
		out := map[string]bool{}
		for _, tk := range c.Tasks(svc.ID) {
			if tk.Status.State == shoal.TaskRunning && tk.DesiredState == shoal.TaskRunning {
				out[tk.ID] = true
			}
		}
		return out
	}
	before := running()
	require.Len(t, before, 6)
	load, err := c.Client().CreateService(ctx, shoal.ServiceSpec{Name: "load", Replicas: 0,
		Task: shoal.TaskSpec{Command: []string{"server"}}})
	require.NoError(t, err)

	oldCerts := map[string][]byte{}
	for _, n := range c.Nodes() {
		_, kp := secLeaf(t, n.StateDir)
		oldCerts[n.Name] = kp.CertPEM
	}

	opCreds, err := c.Client().IssueClientCredentials(ctx, "rotation-reader", 0)
	require.NoError(t, err)
	var reader *shoal.Client
	for _, m := range c.Managers() {
		if m != c.Leader() {
			reader, err = shoal.Dial(ctx, m.Addr, shoal.WithCredentials(opCreds),
				shoal.WithGRPCDialOptions(grpc.WithContextDialer(c.Network().Dialer("operator"))))
			require.NoError(t, err)
			break
		}
	}
	require.NotNil(t, reader)
	defer reader.Close()
	writer := c.Client()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var writes, reads atomic.Int64
	var errMu sync.Mutex
	var loadErrs []error
	fail := func(err error) {
		errMu.Lock()
		loadErrs = append(loadErrs, err)
		errMu.Unlock()
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := 0; i < 100000; i++ {
			select {
			case <-stop:
				return
			default:
			}
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			s, err := writer.GetService(cctx, load.ID)
			if err == nil {
				spec := s.Spec
				spec.Labels = map[string]string{"i": secName("", i)}
				_, err = writer.UpdateService(cctx, load.ID, s.Version, spec)
			}
			if err == nil {
				_, err = writer.ListServices(cctx)
			}
			cancel()
			if err != nil {
				fail(err)
				continue
			}
			writes.Add(1)
		}
	}()
	go func() {
		defer wg.Done()
		for i := 0; i < 100000; i++ {
			select {
			case <-stop:
				return
			default:
			}
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err := reader.ListNodes(cctx)
			if err == nil {
				_, err = reader.ListServices(cctx)
			}
			cancel()
			if err != nil {
				fail(err)
				continue
			}
			reads.Add(1)
		}
	}()
	stopLoad := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopLoad()

	for round := 0; round < 3; round++ {
		for _, n := range c.Nodes() {
			require.NoErrorf(t, n.Shoal().RenewCertificate(ctx), "renew %s, round %d", n.Name, round)
		}
	}
	p := c.Workers()[0]
	setRole(t, c, p, shoal.Manager)
	c.WaitFor(p.Name+" has a manager certificate", func() bool {
		return p.Shoal().Role() == shoal.Manager && p.Shoal().Certificate().Role == pki.OUManager
	})
	c.WaitFor(p.Name+" stores a manager certificate", func() bool {
		leaf, _ := secLeaf(t, p.StateDir)
		return len(leaf.Subject.OrganizationalUnit) == 1 && leaf.Subject.OrganizationalUnit[0] == pki.OUManager
	})
	c.WaitFor(p.Name+" serves as a manager", func() bool { return voters(p) == 4 })
	_, managerKP := secLeaf(t, p.StateDir)
	setRole(t, c, p, shoal.Worker)
	c.WaitFor(p.Name+" has a worker certificate", func() bool {
		return p.Shoal().Role() == shoal.Worker && p.Shoal().Certificate().Role == pki.OUWorker
	})
	c.WaitFor(p.Name+" stores a worker certificate", func() bool {
		leaf, _ := secLeaf(t, p.StateDir)
		return len(leaf.Subject.OrganizationalUnit) == 1 && leaf.Subject.OrganizationalUnit[0] == pki.OUWorker
	})
	for _, n := range c.Nodes() {
		require.NoErrorf(t, n.Shoal().RenewCertificate(ctx), "renew %s after the role changes", n.Name)
	}
	// Let the load run over the last renewals for a few more calls.
	w0, r0 := writes.Load(), reads.Load()
	c.WaitFor("more load after the rotations", func() bool { return writes.Load() > w0+5 && reads.Load() > r0+5 })
	stopLoad()

	errMu.Lock()
	assert.Empty(t, loadErrs, "calls failed during certificate rotation")
	errMu.Unlock()
	assert.Positive(t, writes.Load())
	assert.Positive(t, reads.Load())
	t.Logf("%d write rounds, %d read rounds during rotation", writes.Load(), reads.Load())

	// On failure shoaltest prints every node and task with its states.
	assert.Equal(t, before, running(), "tasks were restarted by certificate rotation")
	for _, n := range c.Nodes() {
		leaf, kp := secLeaf(t, n.StateDir)
		assert.NotEqualf(t, oldCerts[n.Name], kp.CertPEM, "%s still has its first certificate", n.Name)
		assert.Equalf(t, n.ID(), leaf.Subject.CommonName, "%s's renewed certificate names another node", n.Name)
		ci := n.Shoal().Certificate()
		assert.Truef(t, ci.NotBefore.Equal(leaf.NotBefore), "%s: Node.Certificate is not the stored certificate", n.Name)
	}
	// The demoted node's client no longer serves the control API, and its
	// old manager certificate (still within its validity) no longer opens
	// the control API or Raft: the store says it is a worker.
	_, err = p.Shoal().Client().ListServices(ctx)
	assert.ErrorIs(t, err, shoal.ErrNotManager)
	oldMgr, err := pki.NewCredentials(managerKP)
	require.NoError(t, err)
	require.Equal(t, pki.OUManager, oldMgr.Subject().Role)
	conn := secRawConn(t, c, "raw-demoted", c.Leader().Addr, oldMgr.ClientTLS(pki.ManagerServerName))
	_, err = api.NewControlClient(conn).ListServices(ctx, &api.ListServicesRequest{})
	secRequireDenied(t, err, "no longer a manager", "demoted node's old manager certificate on Control")
	_, err = api.NewRaftClient(conn).Propose(ctx, &api.ProposeRequest{From: 1, Data: []byte("x")})
	secRequireDenied(t, err, "no longer a manager", "demoted node's old manager certificate on Raft")
}

// TestSecurityExpiredCertificateOnRestart: a node whose certificate expired
// while it was down does not start, says to join again, and can join again
// with the same Config as a new node.
func TestSecurityExpiredCertificateOnRestart(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Managers: 1, Workers: 1})
	ctx := ctxT(t)
	w := c.Workers()[0]
	oldID := w.ID()
	leaf, _ := secLeaf(t, w.StateDir)
	require.NoError(t, w.Stop())

	// The certificate such a node would hold: its own key and subject,
	// valid for 30 minutes that ended an hour ago. The cluster's CA key is
	// not available to a test, so a throwaway CA signs it, and is written
	// as the node's root: the set is consistent but for the expiry.
	throwaway, err := pki.NewRootCA("expired-test", 0)
	require.NoError(t, err)
	subj, err := pki.SubjectOf(leaf)
	require.NoError(t, err)
	certPEM := secForgeCert(t, throwaway, leaf.PublicKey, subj,
		time.Now().Add(-90*time.Minute), time.Now().Add(-time.Hour))
	dir := secCertDir(w.StateDir)
	require.NoError(t, os.WriteFile(filepath.Join(dir, pki.CertFile), certPEM, 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, pki.RootFile), throwaway.CertPEM, 0o600))

	err = w.Restart()
	require.Error(t, err, "a node with an expired certificate started")
	assert.ErrorIs(t, err, shoal.ErrCertificateExpired)
	assert.Contains(t, err.Error(), "call Join with a join token")
	assert.Contains(t, err.Error(), oldID)
	assert.Nil(t, w.Shoal())

	// Join again with the same StateDir.
	info := secClusterInfo(t, c.Client())
	lis, err := c.Network().Listen(w.Addr)
	require.NoError(t, err)
	cfg := shoal.Config{StateDir: w.StateDir, Listener: lis, AdvertiseAddr: w.Addr, Dial: c.Network().Dialer(w.Addr),
		Hostname: w.Name, Runtime: runtimetest.New(), HeartbeatPeriod: 100 * time.Millisecond,
		RestartDelay: 10 * time.Millisecond, Resources: shoal.Resources{NanoCPUs: 4e9, MemoryBytes: 8 << 30}}
	nn, err := shoal.Join(ctx, cfg, c.Manager().Addr, info.WorkerToken)
	if err != nil {
		_ = lis.Close()
	}
	require.NoError(t, err, "joining again over an expired node")
	secStop(t, nn)
	assert.NotEqual(t, oldID, nn.ID(), "the node kept its old identity")
	secWaitReady(t, c.Client(), nn.ID())
	ci := nn.Certificate()
	assert.Equal(t, nn.ID(), ci.NodeID)
	assert.Equal(t, pki.OUWorker, ci.Role)
	assert.Equal(t, info.RootCADigest, ci.RootDigest, "the rejoined node trusts another root")
	assert.True(t, ci.NotAfter.After(time.Now()))
	newLeaf, kp := secLeaf(t, w.StateDir)
	assert.Equal(t, nn.ID(), newLeaf.Subject.CommonName)
	assert.Equal(t, info.RootCADigest, pki.Digest(firstPEM(t, kp.RootPEM)), "ca.crt was not replaced")
	assert.Equal(t, os.FileMode(0o600), secMode(t, filepath.Join(dir, pki.CertFile)))

	// The rejoined node runs tasks.
	svc, err := c.Client().CreateService(ctx, webSpec("after-rejoin", 2))
	require.NoError(t, err)
	per := c.WaitRunning(svc.ID, 2)
	assert.Equal(t, 2, per[nn.ID()], "tasks did not go to the rejoined node")
}

// TestSecurityOperatorCredentials covers operator credentials: issue, save,
// load, dial, and who may not issue them.
func TestSecurityOperatorCredentials(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Managers: 1, Workers: 1})
	ctx := ctxT(t)
	m, w := c.Manager(), c.Workers()[0]
	info := secClusterInfo(t, c.Client())

	creds, err := c.Client().IssueClientCredentials(ctx, "ops.example", 0)
	require.NoError(t, err)
	pc, err := pki.NewCredentials(pki.KeyPair{CertPEM: creds.CertPEM, KeyPEM: creds.KeyPEM, RootPEM: creds.RootPEM})
	require.NoError(t, err)
	assert.Equal(t, pki.Subject{NodeID: "ops.example", Role: pki.OUClient, ClusterID: info.ID}, pc.Subject())
	assert.WithinDuration(t, pc.Leaf().NotBefore.Add(info.CertValidity), pc.Leaf().NotAfter, 10*time.Minute)

	dir := filepath.Join(t.TempDir(), "ops")
	require.NoError(t, creds.Save(dir))
	assert.Equal(t, os.FileMode(0o700), secMode(t, dir))
	for _, f := range []string{pki.CertFile, pki.KeyFile, pki.RootFile} {
		assert.Equalf(t, os.FileMode(0o600), secMode(t, filepath.Join(dir, f)), "%s mode", f)
	}
	loaded, err := shoal.LoadClientCredentials(dir)
	require.NoError(t, err)
	assert.Equal(t, creds, loaded)
	_, err = shoal.LoadClientCredentials(filepath.Join(t.TempDir(), "none"))
	assert.ErrorIs(t, err, os.ErrNotExist)

	cl, err := shoal.Dial(ctx, m.Addr, shoal.WithCredentials(loaded),
		shoal.WithGRPCDialOptions(grpc.WithContextDialer(c.Network().Dialer("ops"))))
	require.NoError(t, err)
	defer cl.Close()
	nodes, err := cl.ListNodes(ctx)
	require.NoError(t, err)
	assert.Len(t, nodes, 2)
	// An operator may issue further credentials, for at least 30 minutes.
	more, err := cl.IssueClientCredentials(ctx, "ops-2", time.Hour)
	require.NoError(t, err)
	mc, err := pki.NewCredentials(pki.KeyPair{CertPEM: more.CertPEM, KeyPEM: more.KeyPEM, RootPEM: more.RootPEM})
	require.NoError(t, err)
	assert.WithinDuration(t, mc.Leaf().NotBefore.Add(time.Hour), mc.Leaf().NotAfter, 10*time.Minute)

	// Validity under the minimum: refused by the client, and by the
	// server for a client that skips the check.
	_, err = c.Client().IssueClientCredentials(ctx, "short", 10*time.Minute)
	assert.ErrorIs(t, err, shoal.ErrInvalidSpec)
	assert.Contains(t, err.Error(), "validity")
	mgrConn := secRawConn(t, c, "raw-mgr-issue", m.Addr, secNodeTLS(t, m.StateDir))
	_, csr, err := pki.NewKeyAndCSR("short")
	require.NoError(t, err)
	_, err = api.NewCAClient(mgrConn).IssueClientCertificate(ctx, &api.IssueClientCertificateRequest{
		Csr: csr, Name: "short", Validity: int64(10 * time.Minute)})
	require.Error(t, err)
	assert.ErrorIs(t, errdefs.FromGRPC(err), shoal.ErrInvalidSpec)
	assert.Contains(t, err.Error(), "Validity")
	_, err = api.NewCAClient(mgrConn).IssueClientCertificate(ctx, &api.IssueClientCertificateRequest{
		Csr: csr, Name: "bad name with spaces"})
	assert.ErrorIs(t, errdefs.FromGRPC(err), shoal.ErrInvalidSpec)

	// A worker may not issue operator credentials, through its client or
	// directly with its certificate.
	_, err = w.Shoal().Client().IssueClientCredentials(ctx, "sneaky", 0)
	require.Error(t, err)
	assert.ErrorIs(t, err, shoal.ErrNotManager)
	wconn := secRawConn(t, c, "raw-worker-issue", m.Addr, secNodeTLS(t, w.StateDir))
	_, err = api.NewCAClient(wconn).IssueClientCertificate(ctx, &api.IssueClientCertificateRequest{Csr: csr, Name: "sneaky"})
	secRequireDenied(t, err, "only a manager or an operator", "worker IssueClientCertificate")

	// Dial without credentials, or with a node's certificate posing as an
	// operator's, is refused before any connection.
	_, err = shoal.Dial(ctx, m.Addr)
	assert.ErrorIs(t, err, shoal.ErrInvalidSpec)
	assert.Contains(t, err.Error(), "WithCredentials")
	kp, err := pki.LoadKeyPair(secCertDir(w.StateDir))
	require.NoError(t, err)
	_, err = shoal.Dial(ctx, m.Addr, shoal.WithCredentials(&shoal.ClientCredentials{CertPEM: kp.CertPEM, KeyPEM: kp.KeyPEM, RootPEM: kp.RootPEM}))
	assert.ErrorIs(t, err, shoal.ErrInvalidSpec)
	assert.Contains(t, err.Error(), pki.OUClient)
	// Tampered credentials (another key) are refused too.
	_, otherKey := secNewKey(t)
	_, err = shoal.Dial(ctx, m.Addr, shoal.WithCredentials(&shoal.ClientCredentials{CertPEM: creds.CertPEM, KeyPEM: otherKey, RootPEM: creds.RootPEM}))
	require.Error(t, err)
	assert.False(t, errors.Is(err, context.Canceled))
}

// TestSecurityOperatorNameInvalid: a bad operator name is bad input, so
// IssueClientCredentials must refuse it with ErrInvalidSpec naming the
// field (house rule 8), as the CA does for a raw request.
func TestSecurityOperatorNameInvalid(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Managers: 1})
	ctx := ctxT(t)
	for _, name := range []string{"", "bad name", "-leading-dash", strings.Repeat("x", 65)} {
		_, err := c.Client().IssueClientCredentials(ctx, name, 0)
		require.Errorf(t, err, "name %q accepted", name)
		assert.ErrorIsf(t, err, shoal.ErrInvalidSpec, "name %q: %v", name, err)
		assert.Containsf(t, err.Error(), "name", "name %q: the error does not name the field: %v", name, err)
	}
}

// TestSecurityOperatorNameWithAt: client and CA apply the same rule to
// operator names ('@' is not allowed: a name is a certificate CN of letters,
// digits, '.', '_' and '-').
func TestSecurityOperatorNameWithAt(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Managers: 1})
	ctx := ctxT(t)
	_, err := c.Client().IssueClientCredentials(ctx, "ops@example.com", 0)
	require.ErrorIs(t, err, shoal.ErrInvalidSpec)
	assert.Contains(t, err.Error(), "name")
	creds, err := c.Client().IssueClientCredentials(ctx, "ops.example.com", 0)
	require.NoError(t, err)
	pc, err := pki.NewCredentials(pki.KeyPair{CertPEM: creds.CertPEM, KeyPEM: creds.KeyPEM, RootPEM: creds.RootPEM})
	require.NoError(t, err)
	assert.Equal(t, "ops.example.com", pc.Subject().NodeID)
}
