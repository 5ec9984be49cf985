package pki

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/cloudflare/cfssl/api/client"
	"github.com/cloudflare/cfssl/auth"
	cfsigner "github.com/cloudflare/cfssl/signer"
)

// ExternalCAConfig says where an external cfssl signing server is and how to trust it.
type ExternalCAConfig struct {
	URL     string  // base URL of a cfssl signing server, e.g. http://127.0.0.1:8888
	AuthKey string  // hex key for cfssl's "standard" authenticated signing; empty = unauthenticated /api/v1/cfssl/sign
	Profile string  // cfssl signing profile; empty = default
	RootCA  *RootCA // the external CA's root: every certificate returned must chain to it (checked)
}

// Validate checks the configuration; errors name the field and the rule.
func (c ExternalCAConfig) Validate() error {
	if c.URL == "" {
		return errors.New("pki: ExternalCAConfig.URL: must not be empty")
	}
	u, err := url.Parse(c.URL)
	if err != nil {
		return fmt.Errorf("pki: ExternalCAConfig.URL: cannot parse: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("pki: ExternalCAConfig.URL: scheme must be http or https, got %q", u.Scheme)
	}
	if u.Host == "" {
		return errors.New("pki: ExternalCAConfig.URL: must name a host")
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return errors.New("pki: ExternalCAConfig.URL: must be a base URL (scheme://host[:port]) without path, query or user info: cfssl's API paths are fixed")
	}
	if c.AuthKey != "" {
		k, err := hex.DecodeString(c.AuthKey)
		if err != nil {
			return errors.New("pki: ExternalCAConfig.AuthKey: must be hex encoded")
		}
		if len(k) < 16 {
			return fmt.Errorf("pki: ExternalCAConfig.AuthKey: must be at least 16 bytes (32 hex digits), got %d bytes", len(k))
		}
	}
	if c.RootCA == nil || c.RootCA.Cert == nil {
		return errors.New("pki: ExternalCAConfig.RootCA: must be set: returned certificates are checked against it")
	}
	return nil
}

type externalSigner struct {
	cfg      ExternalCAConfig
	base     string        // scheme://host[:port], as cfssl's client wants it
	provider auth.Provider // nil: unauthenticated
	roots    *x509.CertPool
	now      func() time.Time
}

var _ Signer = (*externalSigner)(nil)

// NewExternalSigner forwards CSRs to a cfssl signing server (cfssl api/client), sending
// the subject and SANs in the request, and checks that the certificate returned has the
// requested subject and SANs, is for the CSR's key, allows TLS client and server auth,
// is valid now, and chains to cfg.RootCA. The validity of issued certificates is the
// server profile's: SignRequest.Validity is only checked against MinCertValidity.
func NewExternalSigner(cfg ExternalCAConfig) (Signer, error) {
	quietCFSSL()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	u, _ := url.Parse(cfg.URL) // checked by Validate
	s := &externalSigner{cfg: cfg, base: u.Scheme + "://" + u.Host, roots: cfg.RootCA.Pool(), now: time.Now}
	if cfg.AuthKey != "" {
		p, err := auth.New(cfg.AuthKey, nil)
		if err != nil {
			return nil, fmt.Errorf("pki: ExternalCAConfig.AuthKey: %w", err)
		}
		s.provider = p
	}
	return s, nil
}

// externalRequest is the JSON body cfssl's sign and authsign endpoints take.
type externalRequest struct {
	Hosts   []string          `json:"hosts"`
	Request string            `json:"certificate_request"`
	Subject *cfsigner.Subject `json:"subject,omitempty"`
	Profile string            `json:"profile,omitempty"`
}

// Sign sends the CSR to the external CA and checks what comes back. It honours ctx's
// cancellation and deadline for the HTTP request.
func (s *externalSigner) Sign(ctx context.Context, req SignRequest) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := req.validate(); err != nil {
		return nil, err
	}
	csrParsed, err := ParseCSR(req.CSR)
	if err != nil {
		return nil, err
	}
	body, err := json.Marshal(externalRequest{
		Hosts:   req.Subject.hosts(),
		Request: string(req.CSR),
		Subject: cfSubject(req.Subject),
		Profile: s.cfg.Profile,
	})
	if err != nil {
		return nil, fmt.Errorf("pki: external CA: encode request: %w", err)
	}

	// A remote per call, so the request modifier can carry this call's context.
	var remote client.Remote
	if s.provider != nil {
		if ar := client.NewAuthServer(s.base, nil, s.provider); ar.Remote != nil {
			remote = ar
		}
	} else {
		remote = client.NewServer(s.base)
	}
	if remote == nil {
		return nil, fmt.Errorf("pki: external CA %s: bad URL", s.cfg.URL)
	}
	remote.SetReqModifier(func(r *http.Request, _ []byte) { *r = *r.WithContext(ctx) })
	if dl, ok := ctx.Deadline(); ok {
		remote.SetRequestTimeout(max(time.Until(dl), time.Millisecond))
	}
	certPEM, err := remote.Sign(body)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, fmt.Errorf("pki: external CA %s: %w", s.cfg.URL, ctxErr)
		}
		return nil, fmt.Errorf("pki: external CA %s: sign %s: %w", s.cfg.URL, req.Subject, err)
	}
	if err := s.check(certPEM, csrParsed, req.Subject); err != nil {
		return nil, fmt.Errorf("pki: external CA %s: refusing the certificate returned for %s: %w", s.cfg.URL, req.Subject, err)
	}
	return bytes.TrimLeft(certPEM, "\n"), nil
}

func (s *externalSigner) check(certPEM []byte, csr *x509.CertificateRequest, want Subject) error {
	certs, err := parseCerts(certPEM)
	if err != nil {
		return err
	}
	leaf := certs[0]
	if _, _, err := verifyChain(certs, s.roots, s.now()); err != nil {
		return err
	}
	got, err := SubjectOf(leaf)
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("subject is %s, want %s", got, want)
	}
	if pub, ok := csr.PublicKey.(publicKeyEqualer); !ok || !pub.Equal(leaf.PublicKey) {
		return errors.New("certificate is not for the CSR's public key")
	}
	for _, h := range want.hosts() {
		if !slices.Contains(leaf.DNSNames, h) {
			return fmt.Errorf("DNS SANs %v lack %q", leaf.DNSNames, h)
		}
	}
	if !hasEKU(leaf, x509.ExtKeyUsageServerAuth) || !hasEKU(leaf, x509.ExtKeyUsageClientAuth) {
		return errors.New("extended key usage must allow both TLS server and client auth")
	}
	if leaf.IsCA {
		return errors.New("certificate is a CA certificate")
	}
	return nil
}
