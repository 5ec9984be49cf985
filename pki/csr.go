package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/cloudflare/cfssl/csr"
)

// MaxCSRSize is the largest CSR PEM ParseCSR accepts: a P-256 CSR is under 1 KiB and an
// RSA-4096 one under 4 KiB, so 16 KiB leaves room without letting a client make a manager
// parse megabytes.
const MaxCSRSize = 16 << 10

// ErrInvalidCSR is wrapped by every ParseCSR error.
var ErrInvalidCSR = errors.New("invalid certificate signing request")

// NewKeyAndCSR makes a new ECDSA P-256 private key and a CSR for it (cfssl csr). The key
// never leaves the node; only the CSR is sent.
func NewKeyAndCSR(commonName string) (keyPEM, csrPEM []byte, err error) {
	quietCFSSL()
	if err := checkName("commonName", commonName); err != nil {
		return nil, nil, err
	}
	req := &csr.CertificateRequest{
		CN:         commonName,
		KeyRequest: &csr.KeyRequest{A: "ecdsa", S: 256},
	}
	csrPEM, keyPEM, err = csr.ParseRequest(req)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: new key and CSR: %w", err)
	}
	return keyPEM, csrPEM, nil
}

// ParseCSR parses and checks a CSR: PEM type, at most 16 KiB, a valid self-signature, an
// ECDSA P-256/P-384 or RSA >= 2048 public key. Errors wrap ErrInvalidCSR and name the rule.
func ParseCSR(csrPEM []byte) (*x509.CertificateRequest, error) {
	bad := func(format string, args ...any) (*x509.CertificateRequest, error) {
		return nil, fmt.Errorf("pki: CSR: %s: %w", fmt.Sprintf(format, args...), ErrInvalidCSR)
	}
	if len(csrPEM) > MaxCSRSize {
		return bad("must be at most %d bytes, got %d", MaxCSRSize, len(csrPEM))
	}
	block, rest := pem.Decode(csrPEM)
	if block == nil {
		return bad("must be PEM encoded")
	}
	if block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST" {
		return bad("PEM type must be CERTIFICATE REQUEST, got %q", clipTo(block.Type, 32))
	}
	if next, _ := pem.Decode(rest); next != nil {
		return bad("must hold exactly one PEM block")
	}
	req, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return bad("cannot parse: %v", err)
	}
	if err := req.CheckSignature(); err != nil {
		return bad("self-signature does not verify: %v", err)
	}
	switch k := req.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return bad("ECDSA key must be on curve P-256 or P-384, got %s", k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return bad("RSA key must be at least 2048 bits, got %d", k.N.BitLen())
		}
	default:
		return bad("public key must be ECDSA P-256/P-384 or RSA >= 2048 bits, got %T", req.PublicKey)
	}
	return req, nil
}

func clipTo(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
