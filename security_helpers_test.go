package shoal_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/shoalhq/shoal"
	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/pki"
	"github.com/shoalhq/shoal/runtime/runtimetest"
	"github.com/shoalhq/shoal/shoaltest"
)

// secCertDir is where a node keeps its key material.
func secCertDir(stateDir string) string { return filepath.Join(stateDir, "certificates") }

// secTCPConfig is the Config of a node on real 127.0.0.1 TCP with a fake
// runtime and fast timings, for tests that involve two clusters.
func secTCPConfig(dir, name string) shoal.Config {
	return shoal.Config{
		StateDir:        filepath.Join(dir, name),
		ListenAddr:      "127.0.0.1:0",
		Hostname:        name,
		Runtime:         runtimetest.New(),
		DisableAgent:    true,
		HeartbeatPeriod: 100 * time.Millisecond,
		RestartDelay:    10 * time.Millisecond,
		Resources:       shoal.Resources{NanoCPUs: 4e9, MemoryBytes: 8 << 30},
		Raft:            shoal.RaftConfig{TickInterval: 10 * time.Millisecond},
	}
}

// secStop stops n when the test ends.
func secStop(t *testing.T, n *shoal.Node) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = n.Stop(ctx)
	})
}

// secInitTCP starts a one-manager cluster on 127.0.0.1.
func secInitTCP(t *testing.T, dir, name string) *shoal.Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := shoal.Init(ctx, secTCPConfig(dir, name))
	require.NoError(t, err)
	secStop(t, m)
	return m
}

// secClusterInfo reads the cluster settings through cl.
func secClusterInfo(t *testing.T, cl *shoal.Client) *shoal.ClusterInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ci, err := cl.Cluster(ctx)
	require.NoError(t, err)
	return ci
}

// secNodeIDs returns the IDs of the nodes the cluster lists.
func secNodeIDs(t *testing.T, cl *shoal.Client) map[string]bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nodes, err := cl.ListNodes(ctx)
	require.NoError(t, err)
	out := map[string]bool{}
	for _, n := range nodes {
		out[n.ID] = true
	}
	return out
}

// secNothingWritten asserts a refused join left no identity and no key
// material in stateDir.
func secNothingWritten(t *testing.T, stateDir string) {
	t.Helper()
	for _, p := range []string{"node.json", "certificates", "raft"} {
		_, err := os.Stat(filepath.Join(stateDir, p))
		require.Truef(t, os.IsNotExist(err), "a refused join left %s in its StateDir (stat: %v)", p, err)
	}
}

// secNodeTLS returns a client TLS configuration presenting the key material
// a node keeps in its StateDir, verifying managers by its roots.
func secNodeTLS(t *testing.T, stateDir string) *tls.Config {
	t.Helper()
	kp, err := pki.LoadKeyPair(secCertDir(stateDir))
	require.NoError(t, err)
	creds, err := pki.NewCredentials(kp)
	require.NoError(t, err)
	return creds.ClientTLS(pki.ManagerServerName)
}

// secOperatorTLS returns the client TLS configuration of operator
// credentials.
func secOperatorTLS(t *testing.T, cc *shoal.ClientCredentials) *tls.Config {
	t.Helper()
	creds, err := pki.NewCredentials(pki.KeyPair{CertPEM: cc.CertPEM, KeyPEM: cc.KeyPEM, RootPEM: cc.RootPEM})
	require.NoError(t, err)
	require.Equal(t, pki.OUClient, creds.Subject().Role)
	return creds.ClientTLS(pki.ManagerServerName)
}

// secAnonTLS trusts the cluster's root but presents no certificate.
func secAnonTLS(t *testing.T, rootPEM []byte) *tls.Config {
	t.Helper()
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(rootPEM))
	return &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, ServerName: pki.ManagerServerName}
}

// secRawConn opens a raw gRPC connection to addr on the cluster's
// in-memory network with the given TLS configuration.
func secRawConn(t *testing.T, c *shoaltest.Cluster, from, addr string, cfg *tls.Config) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)),
		grpc.WithContextDialer(c.Network().Dialer(from)))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// secCode returns the gRPC status code of err.
func secCode(err error) codes.Code { return status.Code(err) }

// secRequireDenied asserts err is a PermissionDenied status whose message
// contains want.
func secRequireDenied(t *testing.T, err error, want, what string) {
	t.Helper()
	require.Errorf(t, err, "%s: the call was allowed", what)
	require.Equalf(t, codes.PermissionDenied, secCode(err), "%s: %v", what, err)
	require.Containsf(t, status.Convert(err).Message(), want, "%s: %v", what, err)
}

// secRaftMessages opens a Raft.Messages stream, sends one empty batch and
// returns the server's verdict.
func secRaftMessages(ctx context.Context, conn *grpc.ClientConn) error {
	st, err := api.NewRaftClient(conn).Messages(ctx)
	if err != nil {
		return err
	}
	if err := st.Send(&api.RaftMessageBatch{}); err != nil {
		_, rerr := st.CloseAndRecv()
		return rerr
	}
	_, err = st.CloseAndRecv()
	return err
}

// secCASigner parses a CA's key PEM.
func secCASigner(t *testing.T, ca *pki.RootCA) crypto.Signer {
	t.Helper()
	pair, err := tls.X509KeyPair(ca.CertPEM, ca.KeyPEM)
	require.NoError(t, err)
	s, ok := pair.PrivateKey.(crypto.Signer)
	require.True(t, ok)
	return s
}

// secForgeCert makes, with crypto/x509 directly, a node certificate for pub
// naming subj, signed by ca, valid from notBefore to notAfter (the pki
// package only issues certificates valid from now, so an expired one has to
// be made by hand).
func secForgeCert(t *testing.T, ca *pki.RootCA, pub crypto.PublicKey, subj pki.Subject, notBefore, notAfter time.Time) []byte {
	t.Helper()
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{CommonName: subj.NodeID, OrganizationalUnit: []string{subj.Role},
			Organization: []string{subj.ClusterID}},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		DNSNames:              []string{pki.ManagerServerName, subj.NodeID},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, secCASigner(t, ca))
	require.NoError(t, err)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// secNewKey makes an ECDSA P-256 key and its PEM.
func secNewKey(t *testing.T) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	der, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	return key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
}

// secLeaf parses the leaf of a node's stored certificate chain.
func secLeaf(t *testing.T, stateDir string) (*x509.Certificate, pki.KeyPair) {
	t.Helper()
	kp, err := pki.LoadKeyPair(secCertDir(stateDir))
	require.NoError(t, err)
	block, _ := pem.Decode(kp.CertPEM)
	require.NotNil(t, block, "node.crt holds no PEM block")
	leaf, err := x509.ParseCertificate(block.Bytes)
	require.NoError(t, err)
	return leaf, kp
}

// secMode returns the permission bits of path.
func secMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	require.NoError(t, err)
	return fi.Mode().Perm()
}

// secTamper changes one character of s at i to another base-36 character.
func secTamper(s string, i int) string {
	b := []byte(s)
	if b[i] == 'a' {
		b[i] = 'b'
	} else {
		b[i] = 'a'
	}
	return string(b)
}

// secWaitReady waits until the cluster lists node id as READY.
func secWaitReady(t *testing.T, cl *shoal.Client, id string) {
	t.Helper()
	require.Eventuallyf(t, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		n, err := cl.GetNode(ctx, id)
		return err == nil && n.State == shoal.NodeReady
	}, 30*time.Second, 20*time.Millisecond, "node %s never became READY", id)
}

func secName(prefix string, i int) string { return fmt.Sprintf("%s%d", prefix, i) }

// firstPEM returns the DER of the first certificate in a PEM bundle.
func firstPEM(t *testing.T, data []byte) []byte {
	t.Helper()
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		require.NotNil(t, block, "no PEM certificate")
		if block.Type == "CERTIFICATE" {
			c, err := x509.ParseCertificate(block.Bytes)
			require.NoError(t, err)
			return c.Raw
		}
	}
}
