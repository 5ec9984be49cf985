package pki

import (
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"time"
)

var (
	// ErrCertExpired is wrapped when a certificate in a chain is past its NotAfter; the
	// message gives the expiry time.
	ErrCertExpired = errors.New("certificate has expired")
	// ErrCertNotYetValid is wrapped when a certificate in a chain is before its NotBefore
	// (usually a clock far behind the CA's).
	ErrCertNotYetValid = errors.New("certificate is not yet valid")
	// ErrUnknownAuthority is wrapped when a chain does not lead to a trusted root.
	ErrUnknownAuthority = errors.New("certificate signed by unknown authority")
)

// VerifyCert checks a certificate chain PEM (leaf first, optional intermediates) against
// roots at time now, and returns the leaf and its Subject. An expired leaf gives an error
// matching ErrCertExpired whose message gives the expiry time; a chain to an unknown CA
// gives ErrUnknownAuthority. The leaf must allow TLS client authentication, and a
// manager or worker leaf TLS server authentication too.
func VerifyCert(chainPEM []byte, roots *x509.CertPool, now time.Time) (*x509.Certificate, Subject, error) {
	certs, err := parseCerts(chainPEM)
	if err != nil {
		return nil, Subject{}, fmt.Errorf("pki: verify certificate: %w", err)
	}
	leaf, _, err := verifyChain(certs, roots, now)
	if err != nil {
		return nil, Subject{}, err
	}
	subj, err := SubjectOf(leaf)
	if err != nil {
		return nil, Subject{}, err
	}
	if subj.Role != OUClient && !hasEKU(leaf, x509.ExtKeyUsageServerAuth) {
		return nil, Subject{}, fmt.Errorf("pki: verify certificate %s: extended key usage lacks TLS server auth, which a %s certificate needs", subj, subj.Role)
	}
	return leaf, subj, nil
}

func hasEKU(c *x509.Certificate, want x509.ExtKeyUsage) bool {
	return len(c.ExtKeyUsage) == 0 && len(c.UnknownExtKeyUsage) == 0 ||
		slices.Contains(c.ExtKeyUsage, want) || slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageAny)
}

// verifyChain verifies certs[0] with certs[1:] as intermediates for TLS client auth and
// maps x509's errors onto the package sentinels.
func verifyChain(certs []*x509.Certificate, roots *x509.CertPool, now time.Time) (*x509.Certificate, [][]*x509.Certificate, error) {
	leaf := certs[0]
	name := leaf.Subject.CommonName
	// Expiry first, with a clear message: x509's own is terse, and an expired leaf
	// from an unknown CA should still read as expired.
	if now.After(leaf.NotAfter) {
		return nil, nil, fmt.Errorf("pki: certificate %q expired at %s (now %s): %w",
			name, leaf.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339), ErrCertExpired)
	}
	if now.Before(leaf.NotBefore) {
		return nil, nil, fmt.Errorf("pki: certificate %q is not valid before %s (now %s; is a clock wrong?): %w",
			name, leaf.NotBefore.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339), ErrCertNotYetValid)
	}
	if roots == nil {
		return nil, nil, fmt.Errorf("pki: certificate %q: no trusted roots: %w", name, ErrUnknownAuthority)
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	chains, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err == nil {
		return leaf, chains, nil
	}
	var unknown x509.UnknownAuthorityError
	if errors.As(err, &unknown) {
		return nil, nil, fmt.Errorf("pki: certificate %q (issuer %q): %w", name, leaf.Issuer.CommonName, ErrUnknownAuthority)
	}
	var invalid x509.CertificateInvalidError
	if errors.As(err, &invalid) && invalid.Reason == x509.Expired && invalid.Cert != nil {
		c := invalid.Cert
		if now.Before(c.NotBefore) {
			return nil, nil, fmt.Errorf("pki: certificate %q in the chain of %q is not valid before %s: %w",
				c.Subject.CommonName, name, c.NotBefore.UTC().Format(time.RFC3339), ErrCertNotYetValid)
		}
		return nil, nil, fmt.Errorf("pki: certificate %q in the chain of %q expired at %s: %w",
			c.Subject.CommonName, name, c.NotAfter.UTC().Format(time.RFC3339), ErrCertExpired)
	}
	if errors.As(err, &invalid) && invalid.Reason == x509.IncompatibleUsage {
		return nil, nil, fmt.Errorf("pki: certificate %q: extended key usage does not allow TLS client auth: %w", name, err)
	}
	return nil, nil, fmt.Errorf("pki: certificate %q: %w", name, err)
}
