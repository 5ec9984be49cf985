package ca

import (
	"context"
	"crypto/sha256"
	"fmt"
	"regexp"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/state"
	"github.com/shoalhq/shoal/pki"
)

// Server implements api.CAServer over a manager's store.
type Server struct {
	api.UnimplementedCAServer
	store   *state.Store
	signers *Signers
}

var _ api.CAServer = (*Server)(nil)

// NewServer returns the CA service of a manager; signers may be shared with
// the join server. A nil signers gets a Signers of its own.
func NewServer(store *state.Store, signers *Signers) *Server {
	if signers == nil {
		signers = &Signers{}
	}
	return &Server{store: store, signers: signers}
}

// Signers builds and caches the signer of the cluster's current CA. The zero
// value is ready to use; it is safe for concurrent use.
type Signers struct {
	mu     sync.Mutex
	key    [32]byte   // digest of the CA material s was built from; guarded by mu
	s      pki.Signer // guarded by mu
	digest string     // of the root that signs; guarded by mu
}

// signer returns the signer of cluster's CA (local with the root key; the
// new root's, with the cross-signed certificate, during a rotation; or the
// external cfssl server) and the digest of the root that signs.
func (c *Signers) signer(cluster *api.Cluster) (pki.Signer, string, error) {
	rc := cluster.GetRootCa()
	if len(rc.GetCertPem()) == 0 {
		return nil, "", fmt.Errorf("cluster %s has no root CA: %w", cluster.GetId(), errdefs.ErrStopped)
	}
	rot := rc.GetRotation()
	h := sha256.New()
	for _, b := range [][]byte{rc.GetCertPem(), rc.GetKeyPem(), []byte(rc.GetExternalUrl()), []byte(rc.GetExternalAuthKey()),
		rot.GetNewCertPem(), rot.GetNewKeyPem(), rot.GetCrossSignedPem()} {
		fmt.Fprintf(h, "%d:", len(b))
		h.Write(b)
	}
	var key [32]byte
	copy(key[:], h.Sum(nil))
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.s != nil && c.key == key {
		return c.s, c.digest, nil
	}
	var s pki.Signer
	var digest string
	switch {
	case rc.GetExternalUrl() != "":
		root, err := pki.ParseRootCA(rc.GetCertPem(), nil)
		if err != nil {
			return nil, "", fmt.Errorf("cluster root CA: %w", err)
		}
		s, err = pki.NewExternalSigner(pki.ExternalCAConfig{URL: rc.GetExternalUrl(), AuthKey: rc.GetExternalAuthKey(), RootCA: root})
		if err != nil {
			return nil, "", fmt.Errorf("external CA: %w", err)
		}
		digest = root.Digest()
	case rot != nil:
		root, err := pki.ParseRootCA(rot.GetNewCertPem(), rot.GetNewKeyPem())
		if err != nil {
			return nil, "", fmt.Errorf("cluster root CA rotation: new root: %w", err)
		}
		if s, err = pki.NewLocalSigner(root, rot.GetCrossSignedPem()); err != nil {
			return nil, "", fmt.Errorf("cluster root CA rotation: %w", err)
		}
		digest = root.Digest()
	default:
		root, err := pki.ParseRootCA(rc.GetCertPem(), rc.GetKeyPem())
		if err != nil {
			return nil, "", fmt.Errorf("cluster root CA: %w", err)
		}
		if s, err = pki.NewLocalSigner(root, nil); err != nil {
			return nil, "", fmt.Errorf("cluster root CA: %w", err)
		}
		digest = root.Digest()
	}
	c.key, c.s, c.digest = key, s, digest
	return s, digest, nil
}

// Issue signs csr for subj with the cluster's CA (subj.ClusterID is set to
// the cluster's ID), valid for validity, and returns the certificate with
// the cluster's trust bundle and the digest of the root that signed it. A
// CSR that does not parse wraps errdefs.ErrInvalidSpec; a cluster without a
// root CA wraps errdefs.ErrStopped.
func (c *Signers) Issue(ctx context.Context, cluster *api.Cluster, csr []byte, subj pki.Subject, validity time.Duration) (resp *api.CertificateResponse, rootDigest string, err error) {
	if _, err := pki.ParseCSR(csr); err != nil {
		return nil, "", fmt.Errorf("csr: %v: %w", err, errdefs.ErrInvalidSpec)
	}
	s, rootDigest, err := c.signer(cluster)
	if err != nil {
		return nil, "", err
	}
	subj.ClusterID = cluster.GetId()
	cert, err := s.Sign(ctx, pki.SignRequest{CSR: csr, Subject: subj, Validity: validity})
	if err != nil {
		return nil, "", fmt.Errorf("signing a certificate for %s %s: %w", subj.Role, subj.NodeID, err)
	}
	return &api.CertificateResponse{CertificatePem: cert, RootCaPem: cluster.GetRootCa().TrustBundle()}, rootDigest, nil
}

// CertValidity is how long certificates issued now are valid: the cluster's
// NodeCertValidity, or pki.DefaultCertValidity when it is 0.
func CertValidity(c *api.Cluster) time.Duration {
	if v := time.Duration(c.GetSpec().GetNodeCertValidity()); v > 0 {
		return v
	}
	return pki.DefaultCertValidity
}

// OU returns the certificate role of a node role.
func OU(role api.NodeRole) string {
	if role == api.NodeRole_NODE_ROLE_MANAGER {
		return pki.OUManager
	}
	return pki.OUWorker
}

// ClientNameRE is the rule for operator names (a certificate CN).
var ClientNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

func invalid(field, rule string, args ...any) error {
	return fmt.Errorf("%s: %s: %w", field, fmt.Sprintf(rule, args...), errdefs.ErrInvalidSpec)
}

func (s *Server) cluster() *api.Cluster {
	var c *api.Cluster
	s.store.ViewShared(func(tx state.ReadTx) {
		if cs, _ := tx.FindClusters(state.All()); len(cs) > 0 {
			c = cs[0]
		}
	})
	return c
}

// GetRootCA returns the roots to trust. It needs no certificate: a joining
// node checks what it gets against its token's digest.
func (s *Server) GetRootCA(ctx context.Context, _ *api.GetRootCARequest) (*api.GetRootCAResponse, error) {
	c := s.cluster()
	if c == nil || len(c.GetRootCa().GetCertPem()) == 0 {
		return nil, status.Error(codes.Unavailable, "this manager has no cluster yet")
	}
	return &api.GetRootCAResponse{CertPem: c.GetRootCa().TrustBundle()}, nil
}

// RenewCertificate issues the caller a certificate for a new key with the
// role the store records for it now, and records on the caller's node which
// root issued it.
func (s *Server) RenewCertificate(ctx context.Context, req *api.RenewCertificateRequest) (*api.CertificateResponse, error) {
	caller, _, ok := pki.PeerSubject(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "renewing a certificate needs the current one")
	}
	c := s.cluster()
	if c == nil {
		return nil, status.Error(codes.Unavailable, "this manager has no cluster yet")
	}
	subj := pki.Subject{NodeID: caller.NodeID, Role: caller.Role}
	if caller.Role != pki.OUClient {
		var node *api.Node
		s.store.ViewShared(func(tx state.ReadTx) { node = tx.GetNode(caller.NodeID) })
		if node == nil {
			return nil, status.Errorf(codes.PermissionDenied, "node %s was removed from the cluster; join it again with a token", caller.NodeID)
		}
		subj.Role = OU(node.GetRole())
	}
	resp, digest, err := s.signers.Issue(ctx, c, req.GetCsr(), subj, CertValidity(c))
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	if caller.Role != pki.OUClient {
		// Record which root issued it: a root rotation completes once every
		// node has a certificate from the new root.
		err := s.store.UpdateRetry(ctx, 5, func(tx state.WriteTx) error {
			n := tx.GetNode(caller.NodeID)
			if n == nil || n.CertRootDigest == digest {
				return nil
			}
			n.CertRootDigest = digest
			return tx.UpdateNode(n)
		})
		if err != nil {
			return nil, errdefs.ToGRPC(fmt.Errorf("recording the renewal of node %s: %w", caller.NodeID, err))
		}
	}
	return resp, nil
}

// IssueClientCertificate issues an operator client certificate for the
// control API. The caller must be a manager or an operator.
func (s *Server) IssueClientCertificate(ctx context.Context, req *api.IssueClientCertificateRequest) (*api.CertificateResponse, error) {
	caller, _, ok := pki.PeerSubject(ctx)
	if !ok || (caller.Role != pki.OUManager && caller.Role != pki.OUClient) {
		return nil, status.Error(codes.PermissionDenied, "only a manager or an operator may issue client certificates")
	}
	if !ClientNameRE.MatchString(req.GetName()) {
		return nil, errdefs.ToGRPC(invalid("IssueClientCertificateRequest.Name",
			"must be 1-64 characters of letters, digits, '.', '_' and '-', starting with a letter or digit"))
	}
	c := s.cluster()
	if c == nil {
		return nil, status.Error(codes.Unavailable, "this manager has no cluster yet")
	}
	validity := CertValidity(c)
	if req.GetValidity() != 0 {
		validity = time.Duration(req.GetValidity())
		if validity < pki.MinCertValidity {
			return nil, errdefs.ToGRPC(invalid("IssueClientCertificateRequest.Validity", "must be at least %v", pki.MinCertValidity))
		}
	}
	resp, _, err := s.signers.Issue(ctx, c, req.GetCsr(), pki.Subject{NodeID: req.GetName(), Role: pki.OUClient}, validity)
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return resp, nil
}
