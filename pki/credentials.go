package pki

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// Credentials are a node's live TLS identity: certificate, key and trusted roots,
// swappable at any time without touching established connections. All methods are safe
// for concurrent use.
type Credentials struct {
	cur atomic.Pointer[credState]
}

type credState struct {
	kp      KeyPair
	cert    *tls.Certificate
	leaf    *x509.Certificate
	subject Subject
	roots   *x509.CertPool
}

// NewCredentials checks the key matches the leaf and the chain verifies against RootPEM
// (at time.Now; an expired leaf is an ErrCertExpired error).
func NewCredentials(kp KeyPair) (*Credentials, error) {
	st, err := newCredState(kp, time.Now())
	if err != nil {
		return nil, err
	}
	c := &Credentials{}
	c.cur.Store(st)
	return c, nil
}

// Update makes the same checks as NewCredentials and, if they pass, atomically replaces
// what new handshakes use. Established connections keep the identity they were made with.
func (c *Credentials) Update(kp KeyPair) error {
	st, err := newCredState(kp, time.Now())
	if err != nil {
		return err
	}
	c.cur.Store(st)
	return nil
}

func newCredState(kp KeyPair, now time.Time) (*credState, error) {
	kp = KeyPair{
		CertPEM: append([]byte(nil), kp.CertPEM...),
		KeyPEM:  append([]byte(nil), kp.KeyPEM...),
		RootPEM: append([]byte(nil), kp.RootPEM...),
	}
	rootCerts, err := parseCerts(kp.RootPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: credentials: RootPEM: %w", err)
	}
	roots := x509.NewCertPool()
	for _, r := range rootCerts {
		roots.AddCert(r)
	}
	leaf, subj, err := VerifyCert(kp.CertPEM, roots, now)
	if err != nil {
		return nil, fmt.Errorf("pki: credentials: CertPEM: %w", err)
	}
	cert, err := tls.X509KeyPair(kp.CertPEM, kp.KeyPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: credentials: KeyPEM does not match CertPEM: %w", err)
	}
	cert.Leaf = leaf
	return &credState{kp: kp, cert: &cert, leaf: leaf, subject: subj, roots: roots}, nil
}

// KeyPair returns a copy of the current key material.
func (c *Credentials) KeyPair() KeyPair {
	kp := c.cur.Load().kp
	return KeyPair{
		CertPEM: append([]byte(nil), kp.CertPEM...),
		KeyPEM:  append([]byte(nil), kp.KeyPEM...),
		RootPEM: append([]byte(nil), kp.RootPEM...),
	}
}

// Subject returns the current certificate's subject.
func (c *Credentials) Subject() Subject { return c.cur.Load().subject }

// Leaf returns the current leaf certificate. Callers must not modify it.
func (c *Credentials) Leaf() *x509.Certificate { return c.cur.Load().leaf }

// Roots returns the current trusted roots. Callers must not modify the pool.
func (c *Credentials) Roots() *x509.CertPool { return c.cur.Load().roots }

// ServerTLS returns a server configuration: TLS 1.3 minimum; it presents the current
// certificate and asks for a client certificate, verifying it against the current roots
// if one is given (tls.VerifyClientCertIfGiven, roots re-read per handshake through
// GetConfigForClient). Clients without certificates get through the handshake (the CA
// and join RPCs need that); authorization happens per RPC with PeerSubject. Session
// tickets are off, so every connection's client certificate is checked against the roots
// of the moment.
func (c *Credentials) ServerTLS() *tls.Config {
	base := &tls.Config{
		MinVersion:             tls.VersionTLS13,
		ClientAuth:             tls.VerifyClientCertIfGiven,
		SessionTicketsDisabled: true,
	}
	base.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		return c.cur.Load().cert, nil
	}
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		st := c.cur.Load()
		cfg := base.Clone()
		cfg.GetConfigForClient = nil
		cfg.MinVersion = max(cfg.MinVersion, tls.VersionTLS13)
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
		cfg.ClientCAs = st.roots
		cfg.SessionTicketsDisabled = true
		cfg.Certificates = nil
		cfg.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return st.cert, nil }
		return cfg, nil
	}
	return base
}

// ClientTLS returns a client configuration: TLS 1.3; it presents the current certificate
// and verifies the server's chain against the current roots (read per handshake) and
// that the server certificate is valid for serverName (use ManagerServerName when
// dialing managers) and for TLS server authentication.
func (c *Credentials) ClientTLS(serverName string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ServerName: serverName,
		// The standard verification uses a fixed RootCAs pool; VerifyConnection below
		// does the same checks against the roots current at each handshake.
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return c.cur.Load().cert, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyServer(cs, c.cur.Load().roots, serverName, time.Now())
		},
	}
}

func verifyServer(cs tls.ConnectionState, roots *x509.CertPool, serverName string, now time.Time) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("pki: server presented no certificate")
	}
	leaf := cs.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		DNSName:       serverName,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err == nil {
		return nil
	}
	var unknown x509.UnknownAuthorityError
	if errors.As(err, &unknown) {
		return fmt.Errorf("pki: server certificate %q: %w", leaf.Subject.CommonName, ErrUnknownAuthority)
	}
	var invalid x509.CertificateInvalidError
	if errors.As(err, &invalid) && invalid.Reason == x509.Expired && invalid.Cert != nil && now.After(invalid.Cert.NotAfter) {
		return fmt.Errorf("pki: server certificate %q expired at %s: %w",
			invalid.Cert.Subject.CommonName, invalid.Cert.NotAfter.UTC().Format(time.RFC3339), ErrCertExpired)
	}
	return fmt.Errorf("pki: server certificate %q: %w", leaf.Subject.CommonName, err)
}

// PeerSubject returns the verified subject of the gRPC peer's client certificate in ctx
// (google.golang.org/grpc/credentials TLSInfo, verified chains only); ok is false when
// the peer presented none, or its certificate does not carry a Shoal subject.
func PeerSubject(ctx context.Context) (s Subject, cert *x509.Certificate, ok bool) {
	p, found := peer.FromContext(ctx)
	if !found || p.AuthInfo == nil {
		return Subject{}, nil, false
	}
	var state tls.ConnectionState
	switch info := p.AuthInfo.(type) {
	case credentials.TLSInfo:
		state = info.State
	case *credentials.TLSInfo:
		state = info.State
	default:
		return Subject{}, nil, false
	}
	if len(state.VerifiedChains) == 0 || len(state.VerifiedChains[0]) == 0 {
		return Subject{}, nil, false
	}
	leaf := state.VerifiedChains[0][0]
	subj, err := SubjectOf(leaf)
	if err != nil {
		return Subject{}, nil, false
	}
	return subj, leaf, true
}

// RenewAt returns a time chosen uniformly at random between 50% and 80% of the
// certificate's validity period (the renewal point, spreading renewals of many nodes).
func RenewAt(cert *x509.Certificate) time.Time {
	validity := cert.NotAfter.Sub(cert.NotBefore)
	if validity <= 0 {
		return cert.NotBefore
	}
	frac := 0.5 + 0.3*rand.Float64()
	return cert.NotBefore.Add(time.Duration(frac * float64(validity)))
}
