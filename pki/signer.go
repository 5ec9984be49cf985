package pki

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/cloudflare/cfssl/config"
	"github.com/cloudflare/cfssl/csr"
	cfsigner "github.com/cloudflare/cfssl/signer"
	"github.com/cloudflare/cfssl/signer/local"
)

// MinCertValidity is the shortest node certificate validity a signer issues: renewal
// starts at half the validity, so anything shorter leaves too little time to renew
// through a manager failover.
const MinCertValidity = 30 * time.Minute

// DefaultCertValidity is the node certificate validity a cluster uses unless told
// otherwise: 90 days, short enough that a stolen key expires, long enough that a node
// offline for weeks can still come back.
const DefaultCertValidity = 90 * 24 * time.Hour

// clockSkew is how far back NotBefore is set, so a node whose clock is a little behind
// the CA's accepts a certificate issued this instant.
const clockSkew = 5 * time.Minute

// SignRequest asks a Signer for a node certificate.
type SignRequest struct {
	CSR      []byte        // PEM "CERTIFICATE REQUEST"
	Subject  Subject       // what the certificate says, whatever the CSR asked for
	Validity time.Duration // how long the certificate is valid; it must be >= MinCertValidity
}

func (r SignRequest) validate() error {
	if err := r.Subject.Validate(); err != nil {
		return err
	}
	if r.Validity < MinCertValidity {
		return fmt.Errorf("pki: SignRequest.Validity: must be at least %v, got %v", MinCertValidity, r.Validity)
	}
	return nil
}

// hosts returns the SANs a certificate for s carries.
func (s Subject) hosts() []string {
	if s.Role == OUManager {
		return []string{s.NodeID, ManagerServerName}
	}
	return []string{s.NodeID}
}

// Signer issues node certificates. The certificate has CN=NodeID, OU=Role, O=ClusterID;
// DNS SANs: the node ID, and ManagerServerName for OUManager; key usages for both TLS
// client and server auth; NotBefore set a few minutes back for clock skew. Returned: PEM,
// leaf first, then any intermediates needed to chain to the root (e.g. during root
// rotation).
//
// Implementations are safe for concurrent use: a manager signs for many
// joining and renewing nodes at once.
type Signer interface {
	// Sign returns the chain for req, or an error that says why it was not
	// issued. It returns once ctx ends, with an error that wraps ctx.Err()
	// (a local signer only checks ctx before it signs). Safe for concurrent
	// use.
	Sign(ctx context.Context, req SignRequest) ([]byte, error)
}

type localSigner struct {
	ca            *RootCA
	cf            *local.Signer
	intermediates []*x509.Certificate
	now           func() time.Time
}

var _ Signer = (*localSigner)(nil)

// nodeProfile is the cfssl signing policy for node certificates. Only the public key is
// taken from the CSR: the subject, SANs and extensions come from the SignRequest.
func nodeProfile() *config.Signing {
	return &config.Signing{
		Profiles: map[string]*config.SigningProfile{},
		Default: &config.SigningProfile{
			Usage:        []string{"digital signature", "server auth", "client auth"},
			Expiry:       DefaultCertValidity,
			ExpiryString: DefaultCertValidity.String(),
			CSRWhitelist: &config.CSRWhitelist{
				PublicKey:          true,
				PublicKeyAlgorithm: true,
				SignatureAlgorithm: true,
			},
		},
	}
}

// NewLocalSigner signs with ca's key (cfssl signer/local). intermediatesPEM (may be nil)
// is appended to every issued chain (root rotation: the cross-signed cert).
func NewLocalSigner(ca *RootCA, intermediatesPEM []byte) (Signer, error) {
	quietCFSSL()
	if ca == nil {
		return nil, errors.New("pki: local signer: root CA is required")
	}
	key, err := ca.signer()
	if err != nil {
		return nil, fmt.Errorf("pki: local signer: %w", err)
	}
	var inter []*x509.Certificate
	if len(intermediatesPEM) > 0 {
		inter, err = parseCerts(intermediatesPEM)
		if err != nil {
			return nil, fmt.Errorf("pki: local signer: intermediates: %w", err)
		}
	}
	cf, err := local.NewSigner(key, ca.Cert, cfsigner.DefaultSigAlgo(key), nodeProfile())
	if err != nil {
		return nil, fmt.Errorf("pki: local signer: %w", err)
	}
	return &localSigner{ca: ca, cf: cf, intermediates: inter, now: time.Now}, nil
}

// Sign issues a certificate for req. It does not block beyond the signature itself; ctx
// is checked before signing.
func (s *localSigner) Sign(ctx context.Context, req SignRequest) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := req.validate(); err != nil {
		return nil, err
	}
	if _, err := ParseCSR(req.CSR); err != nil {
		return nil, err
	}
	now := s.now()
	leafPEM, err := s.cf.Sign(cfsigner.SignRequest{
		Request:   string(req.CSR),
		Hosts:     req.Subject.hosts(),
		Subject:   cfSubject(req.Subject),
		NotBefore: now.Add(-clockSkew),
		NotAfter:  now.Add(req.Validity),
	})
	if err != nil {
		return nil, fmt.Errorf("pki: sign %s: %w", req.Subject, err)
	}
	return append(leafPEM, encodeCerts(s.intermediates...)...), nil
}

func cfSubject(s Subject) *cfsigner.Subject {
	return &cfsigner.Subject{
		CN:    s.NodeID,
		Names: []csr.Name{{O: s.ClusterID, OU: s.Role}},
	}
}
