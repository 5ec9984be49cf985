package nodesec

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/ca"
	"github.com/shoalhq/shoal/internal/clock"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/lifecycle"
	"github.com/shoalhq/shoal/pki"
)

// ErrCertificateExpired: the node's certificate expired while it was
// offline; it must join again with a join token.
var ErrCertificateExpired = errors.New("node certificate expired")

// MaxResponseSize caps a response a node or client accepts: listing the
// tasks of a 100,000-replica service takes about 5 MiB, past gRPC's 4 MiB
// default.
const MaxResponseSize = 256 << 20

// Dir holds a node's key, certificate chain and trusted roots.
func Dir(stateDir string) string { return filepath.Join(stateDir, "certificates") }

// Config configures a node's Security.
type Config struct {
	// StateDir is the node's state directory; the key material lives in
	// Dir(StateDir). Required.
	StateDir string
	// Dial, if set, opens connections to other nodes instead of TCP.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// RenewTargets lists the managers to ask for a certificate, in order
	// (this node first when it is a manager). Called from the renewal loop
	// and RenewCertificate; must not block. Required.
	RenewTargets func() []string
	// WantRole returns the certificate role (pki.OUManager or pki.OUWorker)
	// of the node's current role. Called from the renewal loop; must not
	// block. Required.
	WantRole func() string
	// Clock is the renewal loop's source of time; nil means clock.Real().
	Clock clock.Clock
	// Logger receives renewal and trust changes; nil discards them.
	Logger *slog.Logger
}

// Security is a node's TLS identity and its renewal.
type Security struct {
	cfg   Config
	clock clock.Clock
	log   *slog.Logger

	// creds is the live identity: set once (Init, Load, Join) and updated in
	// place afterwards, so TLS configs handed out keep following it.
	creds atomic.Pointer[pki.Credentials]

	// renewMu serialises every change to the credentials after they exist:
	// renewals, role changes and trust bundle changes.
	renewMu   sync.Mutex
	renewKick chan struct{}
	// renewFromRoot is the digest of a root a rotation wants the node's
	// certificate from ("" when none).
	renewFromRoot atomic.Value
	// wantRoots is the latest trust bundle the cluster sent ([]byte).
	wantRoots atomic.Value

	// loop runs the renewal loop.
	loop lifecycle.Loop
}

// New returns a node's security, with no credentials yet: Init, Load or
// Join provides them.
func New(cfg Config) (*Security, error) {
	switch {
	case cfg.StateDir == "":
		return nil, errors.New("nodesec: Config.StateDir is required")
	case cfg.RenewTargets == nil:
		return nil, errors.New("nodesec: Config.RenewTargets is required")
	case cfg.WantRole == nil:
		return nil, errors.New("nodesec: Config.WantRole is required")
	}
	s := &Security{cfg: cfg, clock: cfg.Clock, log: cfg.Logger, renewKick: make(chan struct{}, 1)}
	if s.clock == nil {
		s.clock = clock.Real()
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s, nil
}

// Credentials returns the node's live TLS credentials (nil before Init,
// Load or Join).
func (s *Security) Credentials() *pki.Credentials { return s.creds.Load() }

// ExternalCA is a cfssl signing server that issues the cluster's
// certificates instead of a root CA the cluster creates.
type ExternalCA struct {
	URL, AuthKey string
	RootCert     []byte
}

// Init creates the cluster's root CA (or takes the external CA's root) and
// the first manager's key and certificate, valid for validity (0: the
// default). It returns the root, for the cluster object.
func (s *Security) Init(ctx context.Context, nodeID, clusterID string, ext *ExternalCA, validity time.Duration) (*pki.RootCA, error) {
	var root *pki.RootCA
	var signer pki.Signer
	var err error
	if ext != nil {
		if root, err = pki.ParseRootCA(ext.RootCert, nil); err != nil {
			return nil, fmt.Errorf("Config.ExternalCA.RootCert: %w", err)
		}
		if signer, err = pki.NewExternalSigner(pki.ExternalCAConfig{URL: ext.URL, AuthKey: ext.AuthKey, RootCA: root}); err != nil {
			return nil, fmt.Errorf("Config.ExternalCA: %w", err)
		}
	} else {
		if root, err = pki.NewRootCA(clusterID, 0); err != nil {
			return nil, fmt.Errorf("init: root CA: %w", err)
		}
		if signer, err = pki.NewLocalSigner(root, nil); err != nil {
			return nil, fmt.Errorf("init: %w", err)
		}
	}
	key, csr, err := pki.NewKeyAndCSR(nodeID)
	if err != nil {
		return nil, fmt.Errorf("init: node key: %w", err)
	}
	if validity == 0 {
		validity = pki.DefaultCertValidity
	}
	cert, err := signer.Sign(ctx, pki.SignRequest{CSR: csr, Validity: validity,
		Subject: pki.Subject{NodeID: nodeID, Role: pki.OUManager, ClusterID: clusterID}})
	if err != nil {
		return nil, fmt.Errorf("init: node certificate: %w", err)
	}
	if err := s.Adopt(pki.KeyPair{CertPEM: cert, KeyPEM: key, RootPEM: root.CertPEM}); err != nil {
		return nil, err
	}
	return root, nil
}

// Adopt saves kp under StateDir and makes it the node's credentials.
func (s *Security) Adopt(kp pki.KeyPair) error {
	if c := s.creds.Load(); c != nil {
		if err := c.Update(kp); err != nil {
			return fmt.Errorf("node certificate: %w", err)
		}
	} else {
		c, err := pki.NewCredentials(kp)
		if err != nil {
			return fmt.Errorf("node certificate: %w", err)
		}
		s.creds.Store(c)
	}
	if err := pki.SaveKeyPair(Dir(s.cfg.StateDir), kp); err != nil {
		return fmt.Errorf("saving the node certificate: %w", err)
	}
	return nil
}

// Load loads a restarting node's key material.
func (s *Security) Load(nodeID string) error {
	dir := Dir(s.cfg.StateDir)
	kp, err := pki.LoadKeyPair(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("Config.StateDir: %s holds node %s but no certificate in %s; join the cluster again with a token", s.cfg.StateDir, nodeID, dir)
	}
	if err != nil {
		return fmt.Errorf("node certificate in %s: %w", dir, err)
	}
	c, err := pki.NewCredentials(kp)
	if errors.Is(err, pki.ErrCertExpired) {
		return fmt.Errorf("node %s: %w (%w): the node was offline longer than its certificate's validity; "+
			"call Join with a join token and the same Config to join again (the old node can then be removed)",
			nodeID, ErrCertificateExpired, err)
	}
	if err != nil {
		return fmt.Errorf("node certificate in %s: %w", dir, err)
	}
	s.creds.Store(c)
	return nil
}

// CertificateExpired reports whether stateDir holds a node whose
// certificate has expired (Join may then replace it).
func CertificateExpired(stateDir string) bool {
	kp, err := pki.LoadKeyPair(Dir(stateDir))
	if err != nil {
		return false
	}
	_, err = pki.NewCredentials(kp)
	return errors.Is(err, pki.ErrCertExpired)
}

// BaseDialOptions are the options of every connection but its credentials.
func (s *Security) BaseDialOptions() []grpc.DialOption {
	opts := []grpc.DialOption{grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxResponseSize))}
	if s.cfg.Dial != nil {
		opts = append(opts, grpc.WithContextDialer(s.cfg.Dial))
	}
	return opts
}

// ClientCreds are the transport credentials of connections to managers:
// mutual TLS with the node's live certificate.
func (s *Security) ClientCreds() credentials.TransportCredentials {
	return credentials.NewTLS(s.creds.Load().ClientTLS(pki.ManagerServerName))
}

// ServerTLS is the node's server configuration (mutual TLS 1.3).
func (s *Security) ServerTLS() *tls.Config { return s.creds.Load().ServerTLS() }

// DialOptions are the options of a connection to a manager.
func (s *Security) DialOptions() []grpc.DialOption {
	return append(s.BaseDialOptions(), grpc.WithTransportCredentials(s.ClientCreds()))
}

// JoinRequest is what a joining node tells the manager about itself.
type JoinRequest struct {
	Token       string
	Description *api.NodeDescription
	Addr        string
	Labels      map[string]string
}

// Join runs the join handshake with the manager at addr: fetch the root CA
// untrusted, check it against the token, check the manager's certificate
// chains to it, then send the CSR with the token. On success the issued key
// pair is returned, not yet adopted: the caller adopts it once it accepts
// the response. Every refusal of the token matches errdefs.ErrInvalidToken.
func (s *Security) Join(ctx context.Context, addr string, req JoinRequest) (*api.JoinResponse, pki.KeyPair, error) {
	tok, err := pki.ParseToken(req.Token)
	if err != nil {
		return nil, pki.KeyPair{}, err
	}
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
	conn, err := grpc.NewClient(addr, append(s.BaseDialOptions(), grpc.WithTransportCredentials(credentials.NewTLS(boot)))...)
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
			"refusing a manager of another cluster: %w (%w)", addr, root.Digest(), tok.Digest, pki.ErrDigestMismatch, errdefs.ErrInvalidToken)
	}
	mu.Lock()
	chain := served
	mu.Unlock()
	if err := verifyManagerChain(chain, root); err != nil {
		return nil, pki.KeyPair{}, fmt.Errorf("join %s: %w: %w (%w)", addr, err, pki.ErrDigestMismatch, errdefs.ErrInvalidToken)
	}
	key, csr, err := pki.NewKeyAndCSR("shoal-node")
	if err != nil {
		return nil, pki.KeyPair{}, fmt.Errorf("join: node key: %w", err)
	}
	resp, err := api.NewJoinClient(conn).Join(ctx, &api.JoinRequest{
		Token: req.Token, Description: req.Description, Addr: req.Addr, Labels: req.Labels, Csr: csr,
	}, grpc.WaitForReady(true))
	if err != nil {
		return nil, pki.KeyPair{}, fmt.Errorf("join %s: %w", addr, errdefs.FromGRPC(err))
	}
	_, subj, err := pki.VerifyCert(resp.GetCertificatePem(), root.Pool(), s.clock.Now())
	if err != nil {
		return nil, pki.KeyPair{}, fmt.Errorf("join %s: the certificate issued: %w", addr, err)
	}
	if subj.NodeID != resp.GetNodeId() || subj.ClusterID != resp.GetClusterId() || subj.Role != ca.OU(resp.GetRole()) {
		return nil, pki.KeyPair{}, fmt.Errorf("join %s: the certificate issued is for %s %s of cluster %s, not %s %s of %s",
			addr, subj.Role, subj.NodeID, subj.ClusterID, ca.OU(resp.GetRole()), resp.GetNodeId(), resp.GetClusterId())
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

// RenewCertificate replaces the node's certificate with a new one, for a
// new key, from a manager's CA. Established connections are not
// interrupted.
func (s *Security) RenewCertificate(ctx context.Context) error {
	s.renewMu.Lock()
	defer s.renewMu.Unlock()
	key, csr, err := pki.NewKeyAndCSR("shoal-node")
	if err != nil {
		return fmt.Errorf("renew: %w", err)
	}
	var lastErr error
	for _, addr := range s.cfg.RenewTargets() {
		conn, err := grpc.NewClient(addr, s.DialOptions()...)
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
		if err := s.Adopt(kp); err != nil {
			return fmt.Errorf("renew: %w", err)
		}
		c := s.creds.Load()
		s.log.Info("node certificate renewed", "role", c.Subject().Role, "not_after", c.Leaf().NotAfter)
		// The roots the cluster trusts may have changed while this renewal was
		// in flight (a root rotation completing): follow the latest ones.
		s.applyRootsLocked()
		s.Kick()
		return nil
	}
	if lastErr == nil {
		lastErr = errors.New("no manager known")
	}
	return fmt.Errorf("renew the node certificate: %w", lastErr)
}

// Kick wakes the renewal loop to plan again (the certificate, the role or
// the trusted roots changed). It does not block.
func (s *Security) Kick() {
	select {
	case s.renewKick <- struct{}{}:
	default:
	}
}

// Start starts the renewal loop; a second Start, or one after Stop, does
// nothing.
func (s *Security) Start() {
	_ = s.loop.Start(context.Background(), "nodesec", nil, s.renewLoop)
}

// Stop ends the renewal loop (a renewal in flight is cancelled) and waits
// for it, bounded by ctx. It is idempotent.
func (s *Security) Stop(ctx context.Context) error { return s.loop.Stop(ctx) }

// renewLoop renews the certificate at a random point between 50% and 80% of
// its validity, at once when the role or a root rotation asks for a new
// certificate, and retries failures with backoff (a twentieth of the
// validity left, between 1s and 1m, plus up to half as much), and renewals
// that did not bring the role or root wanted after a delay doubling from 1s
// up to that backoff.
func (s *Security) renewLoop(ctx context.Context) {
	var retry time.Duration
	// Armed only by the Reset below, once the wait is known: an armed timer
	// means the loop waits (tests rely on it).
	t := s.clock.NewTimer(time.Hour)
	t.Stop()
	defer t.Stop()
	for {
		s.renewMu.Lock()
		s.applyRootsLocked()
		s.renewMu.Unlock()
		c := s.creds.Load()
		wait := pki.RenewAt(c.Leaf()).Sub(s.clock.Now())
		if c.Subject().Role != s.cfg.WantRole() {
			wait = 0 // the role changed and no certificate for it was had yet
		}
		if s.needsNewRoot() {
			wait = 0 // a root rotation: a certificate from the new root is needed
		}
		if retry > 0 {
			wait = retry
		}
		t.Stop()
		t.Reset(max(wait, 0))
		select {
		case <-ctx.Done():
			return
		case <-s.renewKick:
			retry = 0
			continue // the certificate changed: plan again
		case <-t.C():
		}
		rctx, cancel := context.WithTimeout(ctx, time.Minute)
		err := s.RenewCertificate(rctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		left := s.creds.Load().Leaf().NotAfter.Sub(s.clock.Now())
		limit := min(max(left/20, time.Second), time.Minute)
		if err == nil {
			unmet := s.unmet()
			if unmet == nil {
				retry = 0
				continue
			}
			// The CA issued a certificate, but not the one wanted (its store
			// has not caught up with the role change or the root rotation
			// yet): ask again after a delay that doubles from a second up to
			// the failure backoff, rather than back to back. The renewal's
			// own kick would plan again at once; drop it.
			select {
			case <-s.renewKick:
			default:
			}
			next := min(max(2*retry, time.Second), limit)
			retry = next + time.Duration(rand.Int64N(int64(next)/2+1))
			s.log.Info("the certificate renewed is not the one wanted; renewing again", "in", retry, "reason", unmet)
			continue
		}
		retry = limit + time.Duration(rand.Int64N(int64(limit)/2+1))
		s.log.Warn("certificate renewal failed; retrying", "in", retry, "expires_in", left.Round(time.Second), "err", err)
	}
}

// unmet says why the current certificate still needs renewing at once (a
// role it does not carry, or a root rotation it is not from yet), or nil.
func (s *Security) unmet() error {
	if got, want := s.creds.Load().Subject().Role, s.cfg.WantRole(); got != want {
		return fmt.Errorf("the CA issued a %s certificate, not the %s certificate wanted", got, want)
	}
	if s.needsNewRoot() {
		return errors.New("the CA issued a certificate that is not from the new root")
	}
	return nil
}

// EnsureRole renews the certificate until it carries role (after a
// promotion or demotion), bounded by ctx.
func (s *Security) EnsureRole(ctx context.Context, role string) error {
	for {
		if s.creds.Load().Subject().Role == role {
			return nil
		}
		err := s.RenewCertificate(ctx)
		if err == nil && s.creds.Load().Subject().Role == role {
			return nil
		}
		t := s.clock.NewTimer(200 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			if err == nil {
				err = fmt.Errorf("the CA still issues a %s certificate", s.creds.Load().Subject().Role)
			}
			return fmt.Errorf("getting a %s certificate: %w", role, err)
		case <-t.C():
		}
	}
}

// FollowRoots records the roots the cluster trusts now (from the dispatcher
// session or the manager's store) and wakes the renewal loop, which applies
// them. It does not block.
func (s *Security) FollowRoots(bundle []byte) {
	if len(bundle) == 0 {
		return
	}
	if old, _ := s.wantRoots.Load().([]byte); bytes.Equal(old, bundle) {
		return
	}
	s.wantRoots.Store(bundle)
	s.Kick()
}

// applyRootsLocked makes the node trust exactly the wanted roots, when its
// certificate verifies against them, and asks for a renewal when the newest
// of them did not issue its certificate. renewMu must be held.
func (s *Security) applyRootsLocked() {
	c := s.creds.Load()
	bundle, _ := s.wantRoots.Load().([]byte)
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
			if err := pki.SaveKeyPair(Dir(s.cfg.StateDir), next); err != nil {
				s.log.Warn("saving the trusted roots", "err", err)
			}
			s.log.Info("trusted root CAs changed", "roots", strings.Count(string(bundle), "BEGIN CERTIFICATE"))
		}
	}
	root, err := pki.ParseRootCA(api.NewestRoot(bundle), nil)
	if err != nil {
		return
	}
	if _, _, err := pki.VerifyCert(c.KeyPair().CertPEM, root.Pool(), s.clock.Now()); err != nil {
		s.renewFromRoot.Store(root.Digest())
	}
}

// needsNewRoot reports whether a root rotation asks for a certificate from a
// root that did not issue the current one.
func (s *Security) needsNewRoot() bool {
	want, _ := s.renewFromRoot.Load().(string)
	if want == "" {
		return false
	}
	kp := s.creds.Load().KeyPair()
	root, err := pki.ParseRootCA(api.NewestRoot(kp.RootPEM), nil)
	if err != nil || root.Digest() != want {
		return true
	}
	if _, _, err := pki.VerifyCert(kp.CertPEM, root.Pool(), s.clock.Now()); err != nil {
		return true
	}
	s.renewFromRoot.Store("")
	return false
}

// RemoveStale clears stateDir of a node whose certificate expired, with the
// given identity file, so Join can join it again.
func RemoveStale(stateDir string, identityFile string) error {
	for _, p := range []string{identityFile, "certificates", "raft"} {
		if err := os.RemoveAll(filepath.Join(stateDir, p)); err != nil {
			return err
		}
	}
	return nil
}
