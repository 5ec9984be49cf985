package shoal

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	cfsslog "github.com/cloudflare/cfssl/log"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/controlapi"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/state"
	"github.com/shoalhq/shoal/pki"
)

// Security model (see docs/architecture.md, "Security"):
//
//   - Init creates the cluster's root CA (in the replicated cluster object) and
//     the first manager's certificate. Join tokens carry the root's digest.
//   - A joining node fetches the root CA from the manager without trusting it,
//     checks its digest against the token, checks that the manager's own
//     certificate chains to it, then sends a CSR with the token and receives
//     its certificate. Its private key never leaves it.
//   - Every connection is TLS 1.3 with the node's certificate on both sides;
//     every RPC is authorized by the caller's certificate role (authorize).
//   - Certificates are renewed at a random point between 50% and 80% of their
//     validity, and when the node's role changes.

// quietCFSSL turns cfssl's package-wide logger (which logs every signature
// at info level to the standard logger) down to errors, once per process:
// Shoal reports what matters through the node's own logger.
var quietCFSSL = sync.OnceFunc(func() { cfsslog.Level = cfsslog.LevelError })

// certDir holds the node's key, certificate chain and trusted roots.
func certDir(stateDir string) string { return filepath.Join(stateDir, "certificates") }

// ErrCertificateExpired: the node's certificate expired while it was offline;
// it must join again with a join token.
var ErrCertificateExpired = errors.New("node certificate expired")

// CertificateInfo describes a node's current certificate.
type CertificateInfo struct {
	// NodeID, Role and ClusterID are what the certificate says (CN, OU, O).
	NodeID, Role, ClusterID string
	NotBefore, NotAfter     time.Time
	// RootDigest is the digest of the root CA the node trusts (the one join
	// tokens carry).
	RootDigest string
}

// Certificate returns the node's current certificate details; zero before
// the node started.
func (n *Node) Certificate() CertificateInfo {
	n.mu.Lock()
	creds := n.creds
	n.mu.Unlock()
	if creds == nil {
		return CertificateInfo{}
	}
	leaf, subj := creds.Leaf(), creds.Subject()
	info := CertificateInfo{NodeID: subj.NodeID, Role: subj.Role, ClusterID: subj.ClusterID,
		NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter}
	if root, err := pki.ParseRootCA(api.FirstRoot(creds.KeyPair().RootPEM), nil); err == nil {
		info.RootDigest = root.Digest()
	}
	return info
}

// credentials returns the node's live TLS credentials.
func (n *Node) credentials() *pki.Credentials {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.creds
}

func (n *Node) setCredentials(c *pki.Credentials) {
	n.mu.Lock()
	n.creds = c
	n.mu.Unlock()
}

// initCredentials creates the cluster's root CA and this first manager's
// key and certificate.
func (n *Node) initCredentials(ctx context.Context, ident *nodeIdentity) (*pki.RootCA, error) {
	var root *pki.RootCA
	var signer pki.Signer
	var err error
	if e := n.cfg.ExternalCA; e != nil {
		if root, err = pki.ParseRootCA(e.RootCert, nil); err != nil {
			return nil, fmt.Errorf("Config.ExternalCA.RootCert: %w", err)
		}
		if signer, err = pki.NewExternalSigner(pki.ExternalCAConfig{URL: e.URL, AuthKey: e.AuthKey, RootCA: root}); err != nil {
			return nil, fmt.Errorf("Config.ExternalCA: %w", err)
		}
	} else {
		if root, err = pki.NewRootCA(ident.ClusterID, 0); err != nil {
			return nil, fmt.Errorf("init: root CA: %w", err)
		}
		if signer, err = pki.NewLocalSigner(root, nil); err != nil {
			return nil, fmt.Errorf("init: %w", err)
		}
	}
	key, csr, err := pki.NewKeyAndCSR(ident.NodeID)
	if err != nil {
		return nil, fmt.Errorf("init: node key: %w", err)
	}
	validity := n.cfg.CertValidity
	if validity == 0 {
		validity = pki.DefaultCertValidity
	}
	cert, err := signer.Sign(ctx, pki.SignRequest{CSR: csr, Validity: validity,
		Subject: pki.Subject{NodeID: ident.NodeID, Role: pki.OUManager, ClusterID: ident.ClusterID}})
	if err != nil {
		return nil, fmt.Errorf("init: node certificate: %w", err)
	}
	if err := n.adoptKeyPair(pki.KeyPair{CertPEM: cert, KeyPEM: key, RootPEM: root.CertPEM}); err != nil {
		return nil, err
	}
	return root, nil
}

// initRootCA is the cluster object's root CA at Init.
func (n *Node) initRootCA(root *pki.RootCA) *api.RootCA {
	rc := &api.RootCA{CertPem: root.CertPEM, KeyPem: root.KeyPEM}
	if e := n.cfg.ExternalCA; e != nil {
		rc.KeyPem, rc.ExternalUrl, rc.ExternalAuthKey = nil, e.URL, e.AuthKey
	}
	return rc
}

// adoptKeyPair saves kp under StateDir and makes it the node's credentials.
func (n *Node) adoptKeyPair(kp pki.KeyPair) error {
	if c := n.credentials(); c != nil {
		if err := c.Update(kp); err != nil {
			return fmt.Errorf("node certificate: %w", err)
		}
	} else {
		c, err := pki.NewCredentials(kp)
		if err != nil {
			return fmt.Errorf("node certificate: %w", err)
		}
		n.setCredentials(c)
	}
	if err := pki.SaveKeyPair(certDir(n.cfg.StateDir), kp); err != nil {
		return fmt.Errorf("saving the node certificate: %w", err)
	}
	return nil
}

// loadCredentials loads a restarting node's key material.
func (n *Node) loadCredentials(ident *nodeIdentity) error {
	dir := certDir(n.cfg.StateDir)
	kp, err := pki.LoadKeyPair(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("Config.StateDir: %s holds node %s but no certificate in %s; join the cluster again with a token", n.cfg.StateDir, ident.NodeID, dir)
	}
	if err != nil {
		return fmt.Errorf("node certificate in %s: %w", dir, err)
	}
	c, err := pki.NewCredentials(kp)
	if errors.Is(err, pki.ErrCertExpired) {
		return fmt.Errorf("node %s: %w (%w): the node was offline longer than its certificate's validity; "+
			"call Join with a join token and the same Config to join again (the old node can then be removed)",
			ident.NodeID, ErrCertificateExpired, err)
	}
	if err != nil {
		return fmt.Errorf("node certificate in %s: %w", dir, err)
	}
	n.setCredentials(c)
	return nil
}

// certificateExpired reports whether StateDir holds a node whose
// certificate has expired (Join may then replace it).
func certificateExpired(stateDir string) bool {
	kp, err := pki.LoadKeyPair(certDir(stateDir))
	if err != nil {
		return false
	}
	_, err = pki.NewCredentials(kp)
	return errors.Is(err, pki.ErrCertExpired)
}

// baseDialOptions are the options of every connection but its credentials.
func (n *Node) baseDialOptions() []grpc.DialOption {
	opts := []grpc.DialOption{grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxResponseSize))}
	if n.cfg.Dial != nil {
		opts = append(opts, grpc.WithContextDialer(n.cfg.Dial))
	}
	return opts
}

// clientCreds are the transport credentials of connections to managers.
func (n *Node) clientCreds() credentials.TransportCredentials {
	return credentials.NewTLS(n.credentials().ClientTLS(pki.ManagerServerName))
}

func (n *Node) dialOptions() []grpc.DialOption {
	return append(n.baseDialOptions(), grpc.WithTransportCredentials(n.clientCreds()))
}

// joinCluster runs the join handshake with the manager at addr: fetch the
// root CA untrusted, check it against the token, check the manager's
// certificate chains to it, then send the CSR with the token.
func (n *Node) joinCluster(ctx context.Context, addr string, tok pki.Token, token string) (*api.JoinResponse, pki.KeyPair, error) {
	var mu sync.Mutex
	var served []*x509.Certificate
	boot := &tls.Config{
		MinVersion: tls.VersionTLS13,
		// The manager is not trusted yet: its certificate is checked below,
		// once the root CA it serves has been checked against the token.
		InsecureSkipVerify: true, //nolint:gosec // verified against the token-pinned root below
		VerifyConnection: func(cs tls.ConnectionState) error {
			mu.Lock()
			served = cs.PeerCertificates
			mu.Unlock()
			return nil
		},
	}
	conn, err := grpc.NewClient(addr, append(n.baseDialOptions(), grpc.WithTransportCredentials(credentials.NewTLS(boot)))...)
	if err != nil {
		return nil, pki.KeyPair{}, fmt.Errorf("join %s: %w", addr, err)
	}
	defer conn.Close()
	rootResp, err := api.NewCAClient(conn).GetRootCA(ctx, &api.GetRootCARequest{}, grpc.WaitForReady(true))
	if err != nil {
		return nil, pki.KeyPair{}, fmt.Errorf("join %s: fetching the root CA: %w", addr, errdefs.FromGRPC(err))
	}
	root, err := pki.ParseRootCA(api.FirstRoot(rootResp.GetCertPem()), nil)
	if err != nil {
		return nil, pki.KeyPair{}, fmt.Errorf("join %s: the manager's root CA: %w", addr, err)
	}
	if root.Digest() != tok.Digest {
		return nil, pki.KeyPair{}, fmt.Errorf("join %s: the manager's root CA (digest %s) does not match the join token (digest %s): "+
			"refusing a manager of another cluster: %w", addr, root.Digest(), tok.Digest, pki.ErrDigestMismatch)
	}
	mu.Lock()
	chain := served
	mu.Unlock()
	if err := verifyManagerChain(chain, root); err != nil {
		return nil, pki.KeyPair{}, fmt.Errorf("join %s: %w: %w", addr, err, pki.ErrDigestMismatch)
	}
	key, csr, err := pki.NewKeyAndCSR("shoal-node")
	if err != nil {
		return nil, pki.KeyPair{}, fmt.Errorf("join: node key: %w", err)
	}
	resp, err := api.NewJoinClient(conn).Join(ctx, &api.JoinRequest{
		Token: token, Description: n.description(), Addr: n.addr, Labels: n.cfg.Labels, Csr: csr,
	}, grpc.WaitForReady(true))
	if err != nil {
		return nil, pki.KeyPair{}, fmt.Errorf("join %s: %w", addr, errdefs.FromGRPC(err))
	}
	_, subj, err := pki.VerifyCert(resp.GetCertificatePem(), root.Pool(), time.Now())
	if err != nil {
		return nil, pki.KeyPair{}, fmt.Errorf("join %s: the certificate issued: %w", addr, err)
	}
	if subj.NodeID != resp.GetNodeId() || subj.ClusterID != resp.GetClusterId() || subj.Role != controlapi.OU(resp.GetRole()) {
		return nil, pki.KeyPair{}, fmt.Errorf("join %s: the certificate issued is for %s %s of cluster %s, not %s %s of %s",
			addr, subj.Role, subj.NodeID, subj.ClusterID, controlapi.OU(resp.GetRole()), resp.GetNodeId(), resp.GetClusterId())
	}
	rootsPEM := resp.GetRootCaPem()
	if len(rootsPEM) == 0 {
		rootsPEM = root.CertPEM
	}
	return resp, pki.KeyPair{CertPEM: resp.GetCertificatePem(), KeyPEM: key, RootPEM: rootsPEM}, nil
}

// verifyManagerChain checks that the certificate a manager served chains to
// root and is a manager's.
func verifyManagerChain(chain []*x509.Certificate, root *pki.RootCA) error {
	if len(chain) == 0 {
		return errors.New("the manager presented no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: root.Pool(), Intermediates: inter,
		DNSName: pki.ManagerServerName, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return fmt.Errorf("the manager's certificate does not chain to the token's root CA: %v", err)
	}
	return nil
}

// Authorization. Every RPC is checked against the caller's certificate:
//
//	CA.GetRootCA, Join.Join       anyone (the join handshake; the token authorizes Join)
//	CA.*                          any certificate of this cluster
//	Dispatcher.*                  a node certificate, for the caller's own node ID only
//	Raft.*                        a manager certificate
//	Control.*                     a manager or operator (client) certificate
//
// On a manager whose state is loaded, a node certificate is also checked
// against the store: a node that was removed is refused from that moment,
// and Raft and Control need the node to be a manager there too (a demoted
// manager's old certificate stops working before it is reissued).

type authRule int

const (
	authAnyone authRule = iota
	authAnyCert
	authNode
	authManager
	authOperator
)

func ruleFor(method string) (authRule, bool) {
	switch {
	case method == "/shoal.api.CA/GetRootCA", method == "/shoal.api.Join/Join":
		return authAnyone, true
	case strings.HasPrefix(method, "/shoal.api.CA/"):
		return authAnyCert, true
	case strings.HasPrefix(method, "/shoal.api.Dispatcher/"):
		return authNode, true
	case strings.HasPrefix(method, "/shoal.api.Raft/"):
		return authManager, true
	case strings.HasPrefix(method, "/shoal.api.Control/"):
		return authOperator, true
	}
	return 0, false
}

// authorize checks the caller of method and returns its subject (zero for an
// anonymous caller of an open method).
func (n *Node) authorize(ctx context.Context, method string) (pki.Subject, error) {
	rule, ok := ruleFor(method)
	if !ok {
		return pki.Subject{}, status.Errorf(codes.PermissionDenied, "%s: not a Shoal method", method)
	}
	subj, _, has := pki.PeerSubject(ctx)
	if rule == authAnyone {
		return subj, nil
	}
	if !has {
		return subj, status.Errorf(codes.Unauthenticated, "%s needs a client certificate of this cluster", method)
	}
	n.mu.Lock()
	clusterID := ""
	if n.ident != nil {
		clusterID = n.ident.ClusterID
	}
	n.mu.Unlock()
	if clusterID != "" && subj.ClusterID != clusterID {
		return subj, status.Errorf(codes.PermissionDenied, "certificate is for cluster %s, not this one (%s)", subj.ClusterID, clusterID)
	}
	switch rule {
	case authNode:
		if subj.Role != pki.OUWorker && subj.Role != pki.OUManager {
			return subj, status.Errorf(codes.PermissionDenied, "%s is for nodes; the caller's certificate is a %s certificate", method, subj.Role)
		}
	case authManager:
		if subj.Role != pki.OUManager {
			return subj, status.Errorf(codes.PermissionDenied, "%s is for managers; the caller's certificate is a %s certificate", method, subj.Role)
		}
	case authOperator:
		if subj.Role != pki.OUManager && subj.Role != pki.OUClient {
			return subj, status.Errorf(codes.PermissionDenied, "%s needs a manager or operator certificate; the caller's certificate is a %s certificate", method, subj.Role)
		}
	}
	if subj.Role == pki.OUClient {
		return subj, nil
	}
	if mg := n.mgr.Load(); mg != nil && mg.armed.Load() {
		var node *api.Node
		mg.store.ViewShared(func(tx state.ReadTx) { node = tx.GetNode(subj.NodeID) })
		if node == nil {
			return subj, status.Errorf(codes.PermissionDenied, "node %s was removed from the cluster; its certificate is no longer accepted", subj.NodeID)
		}
		if (rule == authManager || rule == authOperator) && node.GetRole() != api.NodeRole_NODE_ROLE_MANAGER {
			return subj, status.Errorf(codes.PermissionDenied, "node %s is no longer a manager", subj.NodeID)
		}
	}
	return subj, nil
}

// nodeScoped is a request that names the node it is about.
type nodeScoped interface{ GetNodeId() string }

func checkOwnNode(method string, subj pki.Subject, req any) error {
	r, ok := req.(nodeScoped)
	if !ok || !strings.HasPrefix(method, "/shoal.api.Dispatcher/") {
		return nil
	}
	if id := r.GetNodeId(); id != subj.NodeID {
		return status.Errorf(codes.PermissionDenied, "node %s may only act for itself, not for node %s", subj.NodeID, id)
	}
	return nil
}

func (n *Node) authUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	subj, err := n.authorize(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	if err := checkOwnNode(info.FullMethod, subj, req); err != nil {
		return nil, err
	}
	return h(ctx, req)
}

func (n *Node) authStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	subj, err := n.authorize(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	return h(srv, &ownNodeStream{ServerStream: ss, method: info.FullMethod, subj: subj})
}

// ownNodeStream checks every request received on a stream (a session's or
// assignment stream's opening request) names the caller's own node.
type ownNodeStream struct {
	grpc.ServerStream
	method string
	subj   pki.Subject
}

func (s *ownNodeStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return checkOwnNode(s.method, s.subj, m)
}

// Renewal.

// RenewCertificate replaces the node's certificate with a new one, for a
// new key, from a manager's CA. Nodes renew by themselves (at a random point
// between 50% and 80% of the validity, and when their role changes); this
// forces it now. Established connections are not interrupted.
func (n *Node) RenewCertificate(ctx context.Context) error {
	n.renewMu.Lock()
	defer n.renewMu.Unlock()
	key, csr, err := pki.NewKeyAndCSR("shoal-node")
	if err != nil {
		return fmt.Errorf("renew: %w", err)
	}
	var lastErr error
	for _, addr := range n.renewTargets() {
		conn, err := grpc.NewClient(addr, n.dialOptions()...)
		if err != nil {
			lastErr = err
			continue
		}
		resp, err := api.NewCAClient(conn).RenewCertificate(ctx, &api.RenewCertificateRequest{Csr: csr})
		conn.Close()
		if err != nil {
			lastErr = fmt.Errorf("renew at %s: %w", addr, errdefs.FromGRPC(err))
			if ctx.Err() != nil {
				break
			}
			continue
		}
		kp := pki.KeyPair{CertPEM: resp.GetCertificatePem(), KeyPEM: key, RootPEM: resp.GetRootCaPem()}
		if err := n.adoptKeyPair(kp); err != nil {
			return fmt.Errorf("renew: %w", err)
		}
		subj := n.credentials().Subject()
		n.log.Info("node certificate renewed", "role", subj.Role, "not_after", n.credentials().Leaf().NotAfter)
		// The roots the cluster trusts may have changed while this renewal was
		// in flight (a root rotation completing): follow the latest ones.
		n.applyRootsLocked()
		n.kickRenewal()
		return nil
	}
	if lastErr == nil {
		lastErr = errors.New("no manager known")
	}
	return fmt.Errorf("renew the node certificate: %w", lastErr)
}

// renewTargets lists the managers to ask: this node first if it is one.
func (n *Node) renewTargets() []string {
	addrs := n.managerAddrs()
	if n.mgr.Load() != nil {
		addrs = append([]string{n.Addr()}, addrs...)
	}
	return addrs
}

func (n *Node) kickRenewal() {
	select {
	case n.renewKick <- struct{}{}:
	default:
	}
}

// renewLoop renews the certificate at a random point between 50% and 80% of
// its validity, retrying failures with backoff.
func (n *Node) renewLoop(ctx context.Context) {
	defer n.roleWG.Done()
	var retry time.Duration
	for {
		n.renewMu.Lock()
		n.applyRootsLocked()
		n.renewMu.Unlock()
		at := pki.RenewAt(n.credentials().Leaf())
		wait := time.Until(at)
		if n.credentials().Subject().Role != n.wantCertRole() {
			wait = 0 // the role changed and no certificate for it was had yet
		}
		if n.needsNewRoot() {
			wait = 0 // a root rotation: a certificate from the new root is needed
		}
		if retry > 0 {
			wait = retry
		}
		t := time.NewTimer(max(wait, 0))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-n.renewKick:
			t.Stop()
			retry = 0
			continue // the certificate changed: plan again
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, time.Minute)
		err := n.RenewCertificate(rctx)
		cancel()
		if err == nil {
			retry = 0
			continue
		}
		if ctx.Err() != nil {
			return
		}
		left := time.Until(n.credentials().Leaf().NotAfter)
		retry = min(max(left/20, time.Second), time.Minute)
		retry += time.Duration(rand.Int64N(int64(retry)/2 + 1))
		n.log.Warn("certificate renewal failed; retrying", "in", retry, "expires_in", left.Round(time.Second), "err", err)
	}
}

// wantCertRole is the certificate role of the node's current role.
func (n *Node) wantCertRole() string {
	if n.Role() == Manager {
		return pki.OUManager
	}
	return pki.OUWorker
}

// ensureRole renews the certificate until it carries role (after a
// promotion or demotion), bounded by ctx.
func (n *Node) ensureRole(ctx context.Context, role string) error {
	for {
		if n.credentials().Subject().Role == role {
			return nil
		}
		err := n.RenewCertificate(ctx)
		if err == nil && n.credentials().Subject().Role == role {
			return nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = fmt.Errorf("the CA still issues a %s certificate", n.credentials().Subject().Role)
			}
			return fmt.Errorf("getting a %s certificate: %w", role, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// removeStaleNode clears StateDir of a node whose certificate expired, so
// Join can join it again.
func removeStaleNode(stateDir string) error {
	for _, p := range []string{identityFile, "certificates", "raft"} {
		if err := os.RemoveAll(filepath.Join(stateDir, p)); err != nil {
			return err
		}
	}
	return nil
}

// Root CA rotation. The leader starts it on request (ClusterUpdate.RotateRootCA):
// the cluster object holds a new root and its certificate cross-signed by the
// old root, nodes trust both, and the CA issues from the new root, sending the
// cross-signed certificate along so nodes trusting only the old root accept
// it. Every node follows the trust bundle (workers through their dispatcher
// session, managers from their store) and renews when the newest root did not
// issue its certificate. Once every node that is not DOWN has such a
// certificate, the leader makes the new root the only one and replaces the
// join tokens; nodes then drop the old root.

// rootRotationLoop runs on the leader and completes a root rotation when
// every node has a certificate from the new root.
func (mg *managerPart) rootRotationLoop(ctx context.Context, wg *sync.WaitGroup) {
	defer wg.Done()
	w := mg.store.Watch(state.KindIs(state.KindNode, state.KindCluster))
	defer func() { w.Cancel() }()
	t := time.NewTicker(time.Second) // nodes going DOWN also count
	defer t.Stop()
	for {
		done, err := controlapi.FinishRootRotation(ctx, mg.store)
		if err != nil && ctx.Err() == nil {
			mg.n.log.Warn("completing the root CA rotation", "err", err)
		}
		if done {
			mg.n.log.Info("root CA rotation complete: the new root is the only one; join tokens replaced")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case _, ok := <-w.C:
			if !ok {
				if ctx.Err() != nil {
					return
				}
				w = mg.store.Watch(state.KindIs(state.KindNode, state.KindCluster))
			}
		}
	}
}

// followRoots makes a manager follow its store's trust bundle.
func (mg *managerPart) followRoots() {
	var bundle []byte
	mg.store.ViewShared(func(tx state.ReadTx) {
		if c := tx.GetCluster(mg.clusterID); c != nil {
			bundle = c.GetRootCa().TrustBundle()
		}
	})
	mg.n.followRoots(bundle)
}

// followRoots records the roots the cluster trusts now (from the dispatcher
// session or the manager's store) and wakes the renewal loop, which applies
// them: every change to the node's credentials happens under renewMu.
func (n *Node) followRoots(bundle []byte) {
	if len(bundle) == 0 {
		return
	}
	if old, _ := n.wantRoots.Load().([]byte); bytes.Equal(old, bundle) {
		return
	}
	n.wantRoots.Store(bundle)
	n.kickRenewal()
}

// applyRootsLocked makes the node trust exactly the wanted roots, when its
// certificate verifies against them, and asks for a renewal when the newest
// of them did not issue its certificate. renewMu must be held.
func (n *Node) applyRootsLocked() {
	c := n.credentials()
	bundle, _ := n.wantRoots.Load().([]byte)
	if c == nil || len(bundle) == 0 {
		return
	}
	kp := c.KeyPair()
	if !bytes.Equal(bytes.TrimSpace(kp.RootPEM), bytes.TrimSpace(bundle)) {
		next := kp
		next.RootPEM = bundle
		// Update checks the certificate verifies against the new roots; one
		// from a retired root keeps what it has until it is renewed.
		if err := c.Update(next); err == nil {
			if err := pki.SaveKeyPair(certDir(n.cfg.StateDir), next); err != nil {
				n.log.Warn("saving the trusted roots", "err", err)
			}
			n.log.Info("trusted root CAs changed", "roots", strings.Count(string(bundle), "BEGIN CERTIFICATE"))
		}
	}
	root, err := pki.ParseRootCA(api.NewestRoot(bundle), nil)
	if err != nil {
		return
	}
	if _, _, err := pki.VerifyCert(c.KeyPair().CertPEM, root.Pool(), time.Now()); err != nil {
		n.renewFromRoot.Store(root.Digest())
	}
}

// needsNewRoot reports whether a root rotation asks for a certificate from a
// root that did not issue the current one.
func (n *Node) needsNewRoot() bool {
	want, _ := n.renewFromRoot.Load().(string)
	if want == "" {
		return false
	}
	kp := n.credentials().KeyPair()
	root, err := pki.ParseRootCA(api.NewestRoot(kp.RootPEM), nil)
	if err != nil || root.Digest() != want {
		return true
	}
	if _, _, err := pki.VerifyCert(kp.CertPEM, root.Pool(), time.Now()); err != nil {
		return true
	}
	n.renewFromRoot.Store("")
	return false
}
