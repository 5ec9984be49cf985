package controlapi

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

// Certificates. The cluster's root CA lives in the cluster object (its key
// too, unless an external cfssl server signs), replicated to every manager,
// so any manager can issue: a joining node's certificate (Join), a renewal
// (CA.RenewCertificate) and operator client certificates
// (CA.IssueClientCertificate). A certificate's role (OU) is always the role
// the store records for the node at the time of issue, whatever the CSR asks.

// CAServer implements api.CAServer over a manager's store.
type CAServer struct {
	api.UnimplementedCAServer
	store   *state.Store
	signers *Signers
}

var _ api.CAServer = (*CAServer)(nil)

// NewCAServer returns the CA service of a manager; signers may be shared
// with the join server.
func NewCAServer(store *state.Store, signers *Signers) *CAServer {
	return &CAServer{store: store, signers: signers}
}

// Signers builds and caches the signer of the cluster's current CA.
type Signers struct {
	mu  sync.Mutex
	key [32]byte
	s   pki.Signer
}

// For returns the signer of cluster's CA: local with the root key, or the
// external cfssl server.
func (c *Signers) For(cluster *api.Cluster) (pki.Signer, error) {
	rc := cluster.GetRootCa()
	if len(rc.GetCertPem()) == 0 {
		return nil, fmt.Errorf("cluster %s has no root CA: %w", cluster.GetId(), errdefs.ErrStopped)
	}
	h := sha256.New()
	for _, b := range [][]byte{rc.GetCertPem(), rc.GetKeyPem(), []byte(rc.GetExternalUrl()), []byte(rc.GetExternalAuthKey())} {
		fmt.Fprintf(h, "%d:", len(b))
		h.Write(b)
	}
	var key [32]byte
	copy(key[:], h.Sum(nil))
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.s != nil && c.key == key {
		return c.s, nil
	}
	var s pki.Signer
	if rc.GetExternalUrl() != "" {
		root, err := pki.ParseRootCA(rc.GetCertPem(), nil)
		if err != nil {
			return nil, fmt.Errorf("cluster root CA: %w", err)
		}
		s, err = pki.NewExternalSigner(pki.ExternalCAConfig{URL: rc.GetExternalUrl(), AuthKey: rc.GetExternalAuthKey(), RootCA: root})
		if err != nil {
			return nil, fmt.Errorf("external CA: %w", err)
		}
	} else {
		root, err := pki.ParseRootCA(rc.GetCertPem(), rc.GetKeyPem())
		if err != nil {
			return nil, fmt.Errorf("cluster root CA: %w", err)
		}
		if s, err = pki.NewLocalSigner(root, nil); err != nil {
			return nil, fmt.Errorf("cluster root CA: %w", err)
		}
	}
	c.key, c.s = key, s
	return s, nil
}

// CertValidity is how long certificates issued now are valid.
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

// issue signs csr for subj with the cluster's CA.
func (c *Signers) issue(ctx context.Context, cluster *api.Cluster, csr []byte, subj pki.Subject, validity time.Duration) (*api.CertificateResponse, error) {
	if _, err := pki.ParseCSR(csr); err != nil {
		return nil, fmt.Errorf("csr: %v: %w", err, errdefs.ErrInvalidSpec)
	}
	s, err := c.For(cluster)
	if err != nil {
		return nil, err
	}
	subj.ClusterID = cluster.GetId()
	cert, err := s.Sign(ctx, pki.SignRequest{CSR: csr, Subject: subj, Validity: validity})
	if err != nil {
		return nil, fmt.Errorf("signing a certificate for %s %s: %w", subj.Role, subj.NodeID, err)
	}
	return &api.CertificateResponse{CertificatePem: cert, RootCaPem: cluster.GetRootCa().GetCertPem()}, nil
}

func (s *CAServer) cluster() *api.Cluster {
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
func (s *CAServer) GetRootCA(ctx context.Context, _ *api.GetRootCARequest) (*api.GetRootCAResponse, error) {
	c := s.cluster()
	if c == nil || len(c.GetRootCa().GetCertPem()) == 0 {
		return nil, status.Error(codes.Unavailable, "this manager has no cluster yet")
	}
	return &api.GetRootCAResponse{CertPem: c.GetRootCa().GetCertPem()}, nil
}

// RenewCertificate issues the caller a certificate for a new key with the
// role the store records for it now.
func (s *CAServer) RenewCertificate(ctx context.Context, req *api.RenewCertificateRequest) (*api.CertificateResponse, error) {
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
	resp, err := s.signers.issue(ctx, c, req.GetCsr(), subj, CertValidity(c))
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return resp, nil
}

var clientNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$`)

// IssueClientCertificate issues an operator client certificate for the
// control API. The caller must be a manager or an operator.
func (s *CAServer) IssueClientCertificate(ctx context.Context, req *api.IssueClientCertificateRequest) (*api.CertificateResponse, error) {
	caller, _, ok := pki.PeerSubject(ctx)
	if !ok || (caller.Role != pki.OUManager && caller.Role != pki.OUClient) {
		return nil, status.Error(codes.PermissionDenied, "only a manager or an operator may issue client certificates")
	}
	if !clientNameRE.MatchString(req.GetName()) {
		return nil, errdefs.ToGRPC(invalid("IssueClientCertificateRequest.Name",
			"must be 1-64 characters of letters, digits, '.', '_', '@' and '-', starting with a letter or digit"))
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
	resp, err := s.signers.issue(ctx, c, req.GetCsr(), pki.Subject{NodeID: req.GetName(), Role: pki.OUClient}, validity)
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return resp, nil
}

// RotateTokens returns the cluster's join tokens with the worker and/or
// manager token replaced by a new one for the cluster's root CA.
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
