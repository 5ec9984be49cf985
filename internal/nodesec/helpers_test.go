package nodesec

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/authz"
	"github.com/shoalhq/shoal/internal/ca"
	"github.com/shoalhq/shoal/internal/clock/clocktest"
	"github.com/shoalhq/shoal/internal/state"
	"github.com/shoalhq/shoal/internal/state/statetest"
	"github.com/shoalhq/shoal/pki"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const clusterID = "cluster0000000000000000aa"

// issueKeyPair returns a key pair for subj (ClusterID defaults to
// clusterID) issued by root, valid for validity.
func issueKeyPair(t *testing.T, root *pki.RootCA, subj pki.Subject, validity time.Duration) pki.KeyPair {
	t.Helper()
	if subj.ClusterID == "" {
		subj.ClusterID = clusterID
	}
	signer, err := pki.NewLocalSigner(root, nil)
	require.NoError(t, err)
	key, csr, err := pki.NewKeyAndCSR(subj.NodeID)
	require.NoError(t, err)
	cert, err := signer.Sign(context.Background(), pki.SignRequest{CSR: csr, Subject: subj, Validity: validity})
	require.NoError(t, err)
	return pki.KeyPair{CertPEM: cert, KeyPEM: key, RootPEM: root.CertPEM}
}

// expiredKeyPair returns a key pair for subj issued by root that expired an
// hour ago. pki's signers refuse a validity under pki.MinCertValidity, so
// it is made by hand.
func expiredKeyPair(t *testing.T, root *pki.RootCA, subj pki.Subject) pki.KeyPair {
	t.Helper()
	rootKey, err := tls.X509KeyPair(root.CertPEM, root.KeyPEM)
	require.NoError(t, err)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(now.UnixNano()),
		Subject:      pkix.Name{CommonName: subj.NodeID, OrganizationalUnit: []string{subj.Role}, Organization: []string{subj.ClusterID}},
		DNSNames:     []string{subj.NodeID, pki.ManagerServerName},
		NotBefore:    now.Add(-2 * time.Hour),
		NotAfter:     now.Add(-time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root.Cert, &key.PublicKey, rootKey.PrivateKey)
	require.NoError(t, err)
	keyDER, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	return pki.KeyPair{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
		RootPEM: root.CertPEM,
	}
}

// caServer is a manager's CA service over gRPC on a loopback listener,
// behind the authz interceptors, over a store holding the cluster with
// root.
type caServer struct {
	root  *pki.RootCA
	store *state.Store
	addr  string
}

// startCA serves the CA of a cluster with root, whose store holds nodes
// (ID to role). The server presents a manager certificate issued by
// serverRoot (nil: root).
func startCA(t *testing.T, root, serverRoot *pki.RootCA, nodes map[string]api.NodeRole) *caServer {
	t.Helper()
	if serverRoot == nil {
		serverRoot = root
	}
	st := statetest.NewStore(state.Config{})
	t.Cleanup(st.Close)
	c := &api.Cluster{Id: clusterID, Spec: &api.ClusterSpec{Name: "default"}, RootCa: &api.RootCA{CertPem: root.CertPEM, KeyPem: root.KeyPEM}}
	var err error
	c.JoinTokens, err = ca.RotateTokens(c, true, true)
	require.NoError(t, err)
	require.NoError(t, st.Update(context.Background(), func(tx state.WriteTx) error {
		if err := tx.CreateCluster(c); err != nil {
			return err
		}
		for id, role := range nodes {
			if err := tx.CreateNode(&api.Node{Id: id, Role: role}); err != nil {
				return err
			}
		}
		return nil
	}))

	creds, err := pki.NewCredentials(issueKeyPair(t, serverRoot, pki.Subject{NodeID: "mgr", Role: pki.OUManager}, time.Hour))
	require.NoError(t, err)
	az := authz.New(authz.Config{
		ClusterID: func() string { return clusterID },
		Lookup: func(id string) authz.NodeRecord {
			var n *api.Node
			st.ViewShared(func(tx state.ReadTx) { n = tx.GetNode(id) })
			return authz.NodeRecord{Checked: true, Exists: n != nil, Manager: n.GetRole() == api.NodeRole_NODE_ROLE_MANAGER}
		},
	})
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(creds.ServerTLS())),
		grpc.UnaryInterceptor(az.Unary), grpc.StreamInterceptor(az.Stream))
	api.RegisterCAServer(srv, ca.NewServer(st, nil))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	wg.Go(func() { _ = srv.Serve(lis) })
	t.Cleanup(func() {
		srv.Stop()
		wg.Wait()
	})
	return &caServer{root: root, store: st, addr: lis.Addr().String()}
}

// setRole records role for node id in the CA's store.
func (c *caServer) setRole(t *testing.T, id string, role api.NodeRole) {
	t.Helper()
	require.NoError(t, c.store.Update(context.Background(), func(tx state.WriteTx) error {
		n := tx.GetNode(id)
		n.Role = role
		return tx.UpdateNode(n)
	}))
}

// deadAddr is a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := lis.Addr().String()
	require.NoError(t, lis.Close())
	return addr
}

// harness is a Security on a fake clock whose renewal targets and wanted
// role the test sets, and which counts renewal attempts (calls of
// RenewTargets).
type harness struct {
	sec      *Security
	clock    *clocktest.Fake
	dir      string
	targets  atomic.Pointer[[]string]
	want     atomic.Value // string
	attempts atomic.Int32
}

// newHarness returns a harness whose fake clock reads the wall clock's time
// (the certificates are issued at wall-clock time).
func newHarness(t *testing.T, want string, targets ...string) *harness {
	t.Helper()
	h := &harness{clock: clocktest.NewFake(), dir: t.TempDir()}
	h.clock.Advance(time.Since(h.clock.Now()))
	h.setTargets(targets...)
	h.want.Store(want)
	var err error
	h.sec, err = New(Config{
		StateDir: h.dir,
		RenewTargets: func() []string {
			h.attempts.Add(1)
			return *h.targets.Load()
		},
		WantRole: func() string { return h.want.Load().(string) },
		Clock:    h.clock,
	})
	require.NoError(t, err)
	return h
}

func (h *harness) setTargets(addrs ...string) { h.targets.Store(&addrs) }

// start starts the renewal loop, stopped at cleanup.
func (h *harness) start(t *testing.T) {
	t.Helper()
	h.sec.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, h.sec.Stop(ctx))
	})
}

// waitTimer waits until the renewal loop waits on its timer.
func (h *harness) waitTimer(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.True(t, h.clock.WaitTimers(ctx, 1), "the renewal loop arms its timer")
}

// advanceTo moves the fake clock to at.
func (h *harness) advanceTo(at time.Time) { h.clock.Advance(at.Sub(h.clock.Now())) }

func (h *harness) serial() *big.Int { return h.sec.Credentials().Leaf().SerialNumber }
