package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"time"

	"github.com/cloudflare/cfssl/csr"
	"github.com/cloudflare/cfssl/helpers"
	"github.com/cloudflare/cfssl/initca"
)

// Roles as written in a certificate's OU.
const (
	OUManager = "shoal-manager"
	OUWorker  = "shoal-worker"
	OUClient  = "shoal-client" // operator client certificates for the control API
)

// ManagerServerName is a DNS SAN every manager certificate carries; clients that dial a
// manager verify the server certificate against it, so only a manager certificate can serve.
const ManagerServerName = "shoal-manager"

// DefaultRootValidity is how long a root CA made by NewRootCA with validity 0 is valid:
// 20 years, long enough that a cluster rotates its root by choice, not by deadline.
const DefaultRootValidity = 20 * 365 * 24 * time.Hour

// maxNameLength is the longest node or cluster ID accepted: X.509's upper bound for a
// common name (RFC 5280 ub-common-name).
const maxNameLength = 64

// Subject is who a certificate names.
type Subject struct {
	NodeID    string // CN
	Role      string // OU: OUManager, OUWorker or OUClient
	ClusterID string // O
}

// String returns "role/nodeID@clusterID", for logs and error messages.
func (s Subject) String() string {
	return s.Role + "/" + s.NodeID + "@" + s.ClusterID
}

// Validate checks the subject can be written into a certificate: NodeID and ClusterID
// are 1 to 64 characters of letters, digits, '.', '_' or '-', and Role is one of the
// three roles. Errors name the field and the rule.
func (s Subject) Validate() error {
	if err := checkName("Subject.NodeID", s.NodeID); err != nil {
		return err
	}
	if err := checkName("Subject.ClusterID", s.ClusterID); err != nil {
		return err
	}
	if !validRole(s.Role) {
		return fmt.Errorf("pki: Subject.Role: must be %q, %q or %q, not %q", OUManager, OUWorker, OUClient, s.Role)
	}
	return nil
}

func validRole(r string) bool {
	return r == OUManager || r == OUWorker || r == OUClient
}

func checkName(field, v string) error {
	if v == "" {
		return fmt.Errorf("pki: %s: must not be empty", field)
	}
	if len(v) > maxNameLength {
		return fmt.Errorf("pki: %s: must be at most %d characters, got %d", field, maxNameLength, len(v))
	}
	for _, c := range v {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
		if !ok {
			return fmt.Errorf("pki: %s: may hold only letters, digits, '.', '_' and '-', found %q", field, c)
		}
	}
	return nil
}

// SubjectOf reads the Shoal subject of a certificate: CN, a single OU naming one of the
// three roles, and a single O.
func SubjectOf(cert *x509.Certificate) (Subject, error) {
	if cert == nil {
		return Subject{}, errors.New("pki: certificate subject: no certificate")
	}
	n := cert.Subject
	if n.CommonName == "" {
		return Subject{}, errors.New("pki: certificate subject: CN (node ID) is missing")
	}
	if len(n.OrganizationalUnit) != 1 {
		return Subject{}, fmt.Errorf("pki: certificate subject: must have exactly one OU (role), has %d", len(n.OrganizationalUnit))
	}
	if !validRole(n.OrganizationalUnit[0]) {
		return Subject{}, fmt.Errorf("pki: certificate subject: OU %q is not a Shoal role (%s, %s, %s)",
			n.OrganizationalUnit[0], OUManager, OUWorker, OUClient)
	}
	if len(n.Organization) != 1 || n.Organization[0] == "" {
		return Subject{}, fmt.Errorf("pki: certificate subject: must have exactly one non-empty O (cluster ID), has %d", len(n.Organization))
	}
	return Subject{NodeID: n.CommonName, Role: n.OrganizationalUnit[0], ClusterID: n.Organization[0]}, nil
}

// RootCA is a cluster's root of trust.
type RootCA struct {
	Cert    *x509.Certificate
	CertPEM []byte
	KeyPEM  []byte // nil when this process cannot sign with it (external CA mode, or a node that only trusts it)
}

// NewRootCA creates a self-signed root CA (cfssl initca, ECDSA P-256, CN
// "shoal-root-ca <clusterID>", O clusterID) valid for validity (0 = 20 years).
func NewRootCA(clusterID string, validity time.Duration) (*RootCA, error) {
	quietCFSSL()
	if err := checkName("clusterID", clusterID); err != nil {
		return nil, err
	}
	if validity == 0 {
		validity = DefaultRootValidity
	}
	if validity < MinCertValidity {
		return nil, fmt.Errorf("pki: root CA validity: must be at least %v, got %v", MinCertValidity, validity)
	}
	req := &csr.CertificateRequest{
		CN:         "shoal-root-ca " + clusterID,
		Names:      []csr.Name{{O: clusterID}},
		KeyRequest: &csr.KeyRequest{A: "ecdsa", S: 256},
		CA:         &csr.CAConfig{Expiry: validity.String()},
	}
	certPEM, _, keyPEM, err := initca.New(req)
	if err != nil {
		return nil, fmt.Errorf("pki: create root CA: %w", err)
	}
	return ParseRootCA(certPEM, keyPEM)
}

// ParseRootCA parses a CA certificate PEM and optional key PEM; it checks the
// certificate is a CA, and that the key matches it.
func ParseRootCA(certPEM, keyPEM []byte) (*RootCA, error) {
	cert, err := parseOneCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: root CA certificate: %w", err)
	}
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return nil, errors.New("pki: root CA certificate: is not a CA certificate (basic constraints CA:TRUE missing)")
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, errors.New("pki: root CA certificate: key usage does not allow certificate signing")
	}
	ca := &RootCA{Cert: cert, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})}
	if len(keyPEM) > 0 {
		key, err := parseKey(keyPEM)
		if err != nil {
			return nil, fmt.Errorf("pki: root CA key: %w", err)
		}
		if err := keyMatches(cert, key); err != nil {
			return nil, fmt.Errorf("pki: root CA key: %w", err)
		}
		ca.KeyPEM = append([]byte(nil), keyPEM...)
	}
	return ca, nil
}

// Digest returns Digest(ca.Cert.Raw): the digest a join token carries to pin this root.
func (ca *RootCA) Digest() string { return Digest(ca.Cert.Raw) }

// Pool returns a new certificate pool holding only this root.
func (ca *RootCA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

func (ca *RootCA) signer() (crypto.Signer, error) {
	if len(ca.KeyPEM) == 0 {
		return nil, errors.New("pki: root CA has no private key in this process")
	}
	return parseKey(ca.KeyPEM)
}

// CrossSign returns a certificate (PEM) with newCA's subject and public key, signed by
// oldCA: nodes that trust only the old root accept chains ending in it, which is how a
// root rotation keeps the cluster serving. The certificate is valid for newCA's
// validity period, cut at oldCA's expiry.
func CrossSign(oldCA, newCA *RootCA) ([]byte, error) {
	if oldCA == nil || newCA == nil {
		return nil, errors.New("pki: cross-sign: both CAs are required")
	}
	key, err := oldCA.signer()
	if err != nil {
		return nil, fmt.Errorf("pki: cross-sign: old CA: %w", err)
	}
	n := newCA.Cert
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 159))
	if err != nil {
		return nil, fmt.Errorf("pki: cross-sign: serial: %w", err)
	}
	notAfter := n.NotAfter
	if oldCA.Cert.NotAfter.Before(notAfter) {
		notAfter = oldCA.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		RawSubject:            n.RawSubject, // byte-identical, so chains built by name match
		Subject:               n.Subject,
		NotBefore:             n.NotBefore,
		NotAfter:              notAfter,
		KeyUsage:              n.KeyUsage,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            n.MaxPathLen,
		MaxPathLenZero:        n.MaxPathLenZero,
		SubjectKeyId:          n.SubjectKeyId, // leaves of the new CA name it in their AKI
	}
	if tmpl.KeyUsage == 0 {
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, oldCA.Cert, n.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("pki: cross-sign: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// parseKey parses a PEM private key (SEC1, PKCS#1 or PKCS#8).
func parseKey(keyPEM []byte) (crypto.Signer, error) {
	key, err := helpers.ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("cannot parse private key PEM: %w", err)
	}
	return key, nil
}

// publicKeyEqualer is the method every public key of the standard library
// has (ECDSA, RSA, Ed25519). Equal only reads both keys: safe for
// concurrent use.
type publicKeyEqualer interface {
	Equal(crypto.PublicKey) bool
}

func keyMatches(cert *x509.Certificate, key crypto.Signer) error {
	pub, ok := key.Public().(publicKeyEqualer)
	if !ok || !pub.Equal(cert.PublicKey) {
		return errors.New("private key does not match the certificate's public key")
	}
	return nil
}

// parseCerts decodes every CERTIFICATE block in data; anything else is an error.
func parseCerts(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %d has type %q, want CERTIFICATE", len(certs)+1, block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block found")
	}
	return certs, nil
}

func parseOneCert(data []byte) (*x509.Certificate, error) {
	certs, err := parseCerts(data)
	if err != nil {
		return nil, err
	}
	if len(certs) != 1 {
		return nil, fmt.Errorf("want exactly one certificate, found %d", len(certs))
	}
	return certs[0], nil
}

func encodeCerts(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

func isP256(pub crypto.PublicKey) bool {
	k, ok := pub.(*ecdsa.PublicKey)
	return ok && k.Curve == elliptic.P256()
}
