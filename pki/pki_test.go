package pki

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cflog "github.com/cloudflare/cfssl/log"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// cfssl logs every signature at Info level on the standard logger; keep test
	// output readable. (Tests only: the package itself never touches cfssl's globals.)
	cflog.Level = cflog.LevelFatal
	goleak.VerifyTestMain(m)
}

const testCluster = "c0123456789abcdefghijklmn"

func newCA(t testing.TB, cluster string) *RootCA {
	t.Helper()
	ca, err := NewRootCA(cluster, 0)
	require.NoError(t, err)
	return ca
}

func newSigner(t testing.TB, ca *RootCA, inter []byte) Signer {
	t.Helper()
	s, err := NewLocalSigner(ca, inter)
	require.NoError(t, err)
	return s
}

// issue makes a key and CSR and has s sign it.
func issue(t testing.TB, s Signer, subj Subject, validity time.Duration) (keyPEM, chainPEM []byte) {
	t.Helper()
	keyPEM, csrPEM, err := NewKeyAndCSR(subj.NodeID)
	require.NoError(t, err)
	chainPEM, err = s.Sign(context.Background(), SignRequest{CSR: csrPEM, Subject: subj, Validity: validity})
	require.NoError(t, err)
	return keyPEM, chainPEM
}

func keyPairFor(t testing.TB, ca *RootCA, s Signer, subj Subject) KeyPair {
	t.Helper()
	key, chain := issue(t, s, subj, DefaultCertValidity)
	return KeyPair{CertPEM: chain, KeyPEM: key, RootPEM: ca.CertPEM}
}

func mustCerts(t testing.TB, p []byte) []*x509.Certificate {
	t.Helper()
	c, err := parseCerts(p)
	require.NoError(t, err)
	return c
}

func TestNewRootCA(t *testing.T) {
	before := time.Now()
	ca := newCA(t, testCluster)
	c := ca.Cert
	assert.True(t, c.IsCA)
	assert.True(t, c.BasicConstraintsValid)
	assert.Equal(t, "shoal-root-ca "+testCluster, c.Subject.CommonName)
	assert.Equal(t, []string{testCluster}, c.Subject.Organization)
	assert.True(t, isP256(c.PublicKey), "root key is ECDSA P-256")
	assert.Equal(t, x509.ECDSAWithSHA256, c.SignatureAlgorithm)
	assert.NotZero(t, c.KeyUsage&x509.KeyUsageCertSign)
	assert.NoError(t, c.CheckSignatureFrom(c), "self-signed")
	assert.WithinDuration(t, before.Add(DefaultRootValidity), c.NotAfter, 10*time.Minute)
	assert.Equal(t, Digest(c.Raw), ca.Digest())
	assert.Len(t, ca.Digest(), DigestLength)
	require.NotEmpty(t, ca.KeyPEM)

	short, err := NewRootCA(testCluster, 48*time.Hour)
	require.NoError(t, err)
	assert.WithinDuration(t, before.Add(48*time.Hour), short.Cert.NotAfter, 10*time.Minute)

	// Round trip, with and without the key.
	back, err := ParseRootCA(ca.CertPEM, ca.KeyPEM)
	require.NoError(t, err)
	assert.Equal(t, ca.Cert.Raw, back.Cert.Raw)
	assert.Equal(t, ca.KeyPEM, back.KeyPEM)
	trustOnly, err := ParseRootCA(ca.CertPEM, nil)
	require.NoError(t, err)
	assert.Nil(t, trustOnly.KeyPEM)
	_, err = NewLocalSigner(trustOnly, nil)
	assert.ErrorContains(t, err, "no private key")

	// The pool trusts exactly this root.
	s := newSigner(t, ca, nil)
	_, chain := issue(t, s, Subject{NodeID: "n1", Role: OUWorker, ClusterID: testCluster}, time.Hour)
	_, _, err = VerifyCert(chain, ca.Pool(), time.Now())
	assert.NoError(t, err)
}

func TestNewRootCAErrors(t *testing.T) {
	_, err := NewRootCA("", 0)
	assert.ErrorContains(t, err, "clusterID: must not be empty")
	_, err = NewRootCA("bad cluster", 0)
	assert.ErrorContains(t, err, "clusterID: may hold only")
	_, err = NewRootCA(testCluster, time.Minute)
	assert.ErrorContains(t, err, "validity: must be at least")
}

func TestParseRootCAErrors(t *testing.T) {
	ca := newCA(t, testCluster)
	other := newCA(t, "other")
	s := newSigner(t, ca, nil)
	leafKey, chain := issue(t, s, Subject{NodeID: "n1", Role: OUManager, ClusterID: testCluster}, time.Hour)

	tests := []struct {
		name      string
		cert, key []byte
		want      string
	}{
		{"empty", nil, nil, "no PEM CERTIFICATE block"},
		{"garbage", []byte("not pem"), nil, "no PEM CERTIFICATE block"},
		{"key as cert", ca.KeyPEM, nil, `has type "EC PRIVATE KEY"`},
		{"two certs", append(append([]byte{}, ca.CertPEM...), other.CertPEM...), nil, "exactly one certificate"},
		{"leaf is not a CA", mustPEM(t, chain), leafKey, "not a CA certificate"},
		{"key of another CA", ca.CertPEM, other.KeyPEM, "does not match"},
		{"bad key", ca.CertPEM, []byte("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"), "cannot parse private key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRootCA(tc.cert, tc.key)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

// mustPEM returns the first certificate of a chain.
func mustPEM(t testing.TB, chain []byte) []byte {
	return encodeCerts(mustCerts(t, chain)[0])
}

func TestLocalSignerIssue(t *testing.T) {
	ca := newCA(t, testCluster)
	s := newSigner(t, ca, nil)
	tests := []struct {
		subj     Subject
		validity time.Duration
		dns      []string
	}{
		{Subject{NodeID: "m1abc", Role: OUManager, ClusterID: testCluster}, DefaultCertValidity, []string{"m1abc", ManagerServerName}},
		{Subject{NodeID: "w1abc", Role: OUWorker, ClusterID: testCluster}, MinCertValidity, []string{"w1abc"}},
		{Subject{NodeID: "admin", Role: OUClient, ClusterID: testCluster}, 24 * time.Hour, []string{"admin"}},
	}
	for _, tc := range tests {
		t.Run(tc.subj.Role, func(t *testing.T) {
			keyPEM, csrPEM, err := NewKeyAndCSR(tc.subj.NodeID)
			require.NoError(t, err)
			before := time.Now()
			chain, err := s.Sign(context.Background(), SignRequest{CSR: csrPEM, Subject: tc.subj, Validity: tc.validity})
			after := time.Now()
			require.NoError(t, err)
			certs := mustCerts(t, chain)
			require.Len(t, certs, 1, "no intermediates configured")
			c := certs[0]

			assert.Equal(t, tc.subj.NodeID, c.Subject.CommonName)
			assert.Equal(t, []string{tc.subj.Role}, c.Subject.OrganizationalUnit)
			assert.Equal(t, []string{tc.subj.ClusterID}, c.Subject.Organization)
			assert.Empty(t, c.Subject.Country)
			assert.ElementsMatch(t, tc.dns, c.DNSNames)
			assert.Empty(t, c.IPAddresses)
			assert.Empty(t, c.EmailAddresses)
			assert.Empty(t, c.URIs)
			assert.ElementsMatch(t, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, c.ExtKeyUsage)
			assert.Equal(t, x509.KeyUsageDigitalSignature, c.KeyUsage)
			assert.False(t, c.IsCA)
			assert.True(t, isP256(c.PublicKey))
			assert.Equal(t, x509.ECDSAWithSHA256, c.SignatureAlgorithm)
			assert.Equal(t, ca.Cert.SubjectKeyId, c.AuthorityKeyId)
			assert.NoError(t, c.CheckSignatureFrom(ca.Cert))

			// Times are whole seconds in a certificate.
			assert.False(t, c.NotBefore.Before(before.Add(-clockSkew).Truncate(time.Second)), "NotBefore %v", c.NotBefore)
			assert.False(t, c.NotBefore.After(after.Add(-clockSkew)), "NotBefore %v", c.NotBefore)
			assert.False(t, c.NotAfter.Before(before.Add(tc.validity).Truncate(time.Second)), "NotAfter %v", c.NotAfter)
			assert.False(t, c.NotAfter.After(after.Add(tc.validity)), "NotAfter %v", c.NotAfter)

			// The certificate is for the CSR's key.
			key, err := parseKey(keyPEM)
			require.NoError(t, err)
			assert.NoError(t, keyMatches(c, key))

			subj, err := SubjectOf(c)
			require.NoError(t, err)
			assert.Equal(t, tc.subj, subj)
			_, vs, err := VerifyCert(chain, ca.Pool(), time.Now())
			require.NoError(t, err)
			assert.Equal(t, tc.subj, vs)
		})
	}
}

// A CSR that asks for another subject, SANs and a CA certificate gets none of it.
func TestLocalSignerIgnoresCSRContents(t *testing.T) {
	ca := newCA(t, testCluster)
	s := newSigner(t, ca, nil)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	bc, err := asn1BasicConstraintsCA()
	require.NoError(t, err)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:         pkix.Name{CommonName: "evil", Organization: []string{"other-cluster"}, OrganizationalUnit: []string{OUManager}, Country: []string{"XX"}},
		DNSNames:        []string{"evil.example.com", ManagerServerName},
		EmailAddresses:  []string{"evil@example.com"},
		ExtraExtensions: []pkix.Extension{bc},
	}, key)
	require.NoError(t, err)
	csrPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	want := Subject{NodeID: "w1", Role: OUWorker, ClusterID: testCluster}
	chain, err := s.Sign(context.Background(), SignRequest{CSR: csrPEM, Subject: want, Validity: time.Hour})
	require.NoError(t, err)
	c := mustCerts(t, chain)[0]
	got, err := SubjectOf(c)
	require.NoError(t, err)
	assert.Equal(t, want, got)
	assert.Empty(t, c.Subject.Country)
	assert.Equal(t, []string{"w1"}, c.DNSNames)
	assert.Empty(t, c.EmailAddresses)
	assert.False(t, c.IsCA)
	assert.True(t, key.PublicKey.Equal(c.PublicKey))
}

func asn1BasicConstraintsCA() (pkix.Extension, error) {
	// SEQUENCE { BOOLEAN TRUE }
	return pkix.Extension{Id: []int{2, 5, 29, 19}, Critical: true, Value: []byte{0x30, 0x03, 0x01, 0x01, 0xff}}, nil
}

func TestLocalSignerRefuses(t *testing.T) {
	ca := newCA(t, testCluster)
	s := newSigner(t, ca, nil)
	_, csrPEM, err := NewKeyAndCSR("n1")
	require.NoError(t, err)
	good := Subject{NodeID: "n1", Role: OUWorker, ClusterID: testCluster}
	tests := []struct {
		name string
		req  SignRequest
		want string
	}{
		{"validity below minimum", SignRequest{CSR: csrPEM, Subject: good, Validity: MinCertValidity - time.Second}, "SignRequest.Validity: must be at least 30m0s"},
		{"zero validity", SignRequest{CSR: csrPEM, Subject: good}, "SignRequest.Validity"},
		{"unknown role", SignRequest{CSR: csrPEM, Subject: Subject{NodeID: "n1", Role: "root", ClusterID: testCluster}, Validity: time.Hour}, "Subject.Role"},
		{"empty node ID", SignRequest{CSR: csrPEM, Subject: Subject{Role: OUWorker, ClusterID: testCluster}, Validity: time.Hour}, "Subject.NodeID: must not be empty"},
		{"node ID with comma", SignRequest{CSR: csrPEM, Subject: Subject{NodeID: "a,b", Role: OUWorker, ClusterID: testCluster}, Validity: time.Hour}, "Subject.NodeID: may hold only"},
		{"long node ID", SignRequest{CSR: csrPEM, Subject: Subject{NodeID: strings.Repeat("a", 65), Role: OUWorker, ClusterID: testCluster}, Validity: time.Hour}, "at most 64"},
		{"empty cluster", SignRequest{CSR: csrPEM, Subject: Subject{NodeID: "n1", Role: OUWorker}, Validity: time.Hour}, "Subject.ClusterID"},
		{"bad CSR", SignRequest{CSR: []byte("nope"), Subject: good, Validity: time.Hour}, "must be PEM encoded"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := s.Sign(context.Background(), tc.req)
			require.Error(t, err)
			assert.Nil(t, out)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = s.Sign(ctx, SignRequest{CSR: csrPEM, Subject: good, Validity: time.Hour})
	assert.ErrorIs(t, err, context.Canceled)

	_, err = NewLocalSigner(nil, nil)
	assert.Error(t, err)
	_, err = NewLocalSigner(ca, []byte("garbage"))
	assert.ErrorContains(t, err, "intermediates")
}

func TestNewKeyAndCSR(t *testing.T) {
	keyPEM, csrPEM, err := NewKeyAndCSR("node-1")
	require.NoError(t, err)
	req, err := ParseCSR(csrPEM)
	require.NoError(t, err)
	assert.Equal(t, "node-1", req.Subject.CommonName)
	assert.True(t, isP256(req.PublicKey))
	key, err := parseKey(keyPEM)
	require.NoError(t, err)
	assert.True(t, key.Public().(*ecdsa.PublicKey).Equal(req.PublicKey))
	_, _, err = NewKeyAndCSR("")
	assert.Error(t, err)
}

func TestParseCSRRejects(t *testing.T) {
	_, good, err := NewKeyAndCSR("n1")
	require.NoError(t, err)
	block, _ := pem.Decode(good)

	// Flip a bit in the signature (the last bytes of the DER).
	badSig := append([]byte(nil), block.Bytes...)
	badSig[len(badSig)-3] ^= 0x01

	rsaKey, err := rsa.GenerateKey(rand.Reader, 1024) //nolint:gosec // deliberately weak, to be refused
	require.NoError(t, err)
	tinyRSA, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "n1"}}, rsaKey)
	require.NoError(t, err)

	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	require.NoError(t, err)
	p224CSR, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "n1"}}, p224)
	require.NoError(t, err)

	enc := func(typ string, der []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}) }
	tests := []struct {
		name string
		in   []byte
		want string
	}{
		{"empty", nil, "must be PEM encoded"},
		{"not PEM", []byte("hello"), "must be PEM encoded"},
		{"wrong type", enc("CERTIFICATE", block.Bytes), `PEM type must be CERTIFICATE REQUEST, got "CERTIFICATE"`},
		{"garbage DER", enc("CERTIFICATE REQUEST", []byte{1, 2, 3}), "cannot parse"},
		{"bad signature", enc("CERTIFICATE REQUEST", badSig), "self-signature does not verify"},
		{"tiny RSA key", enc("CERTIFICATE REQUEST", tinyRSA), "RSA key must be at least 2048 bits, got 1024"},
		{"P-224 key", enc("CERTIFICATE REQUEST", p224CSR), "curve P-256 or P-384"},
		{"two blocks", append(append([]byte{}, good...), good...), "exactly one PEM block"},
		{"oversized", append(append([]byte{}, good...), make([]byte, MaxCSRSize)...), "at most 16384 bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseCSR(tc.in)
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrInvalidCSR)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestVerifyCert(t *testing.T) {
	ca := newCA(t, testCluster)
	other := newCA(t, testCluster)
	s := newSigner(t, ca, nil)
	subj := Subject{NodeID: "w1", Role: OUWorker, ClusterID: testCluster}
	_, chain := issue(t, s, subj, MinCertValidity)
	leaf := mustCerts(t, chain)[0]

	got, gs, err := VerifyCert(chain, ca.Pool(), time.Now())
	require.NoError(t, err)
	assert.Equal(t, leaf.Raw, got.Raw)
	assert.Equal(t, subj, gs)

	t.Run("expired", func(t *testing.T) {
		_, _, err := VerifyCert(chain, ca.Pool(), leaf.NotAfter.Add(time.Minute))
		require.ErrorIs(t, err, ErrCertExpired)
		assert.Contains(t, err.Error(), leaf.NotAfter.UTC().Format(time.RFC3339))
		assert.NotErrorIs(t, err, ErrUnknownAuthority)
	})
	t.Run("not yet valid", func(t *testing.T) {
		_, _, err := VerifyCert(chain, ca.Pool(), leaf.NotBefore.Add(-time.Hour))
		assert.ErrorIs(t, err, ErrCertNotYetValid)
	})
	t.Run("unknown authority", func(t *testing.T) {
		_, _, err := VerifyCert(chain, other.Pool(), time.Now())
		assert.ErrorIs(t, err, ErrUnknownAuthority)
		_, _, err = VerifyCert(chain, nil, time.Now())
		assert.ErrorIs(t, err, ErrUnknownAuthority)
	})
	t.Run("not a certificate", func(t *testing.T) {
		_, _, err := VerifyCert([]byte("x"), ca.Pool(), time.Now())
		assert.Error(t, err)
	})
	t.Run("CA cert as leaf is not a node", func(t *testing.T) {
		_, _, err := VerifyCert(ca.CertPEM, ca.Pool(), time.Now())
		assert.Error(t, err)
	})
}

func TestSubjectOf(t *testing.T) {
	mk := func(n pkix.Name) *x509.Certificate { return &x509.Certificate{Subject: n} }
	ok := pkix.Name{CommonName: "n", OrganizationalUnit: []string{OUWorker}, Organization: []string{"c"}}
	s, err := SubjectOf(mk(ok))
	require.NoError(t, err)
	assert.Equal(t, Subject{NodeID: "n", Role: OUWorker, ClusterID: "c"}, s)
	tests := []struct {
		name string
		n    pkix.Name
		want string
	}{
		{"no CN", pkix.Name{OrganizationalUnit: []string{OUWorker}, Organization: []string{"c"}}, "CN"},
		{"no OU", pkix.Name{CommonName: "n", Organization: []string{"c"}}, "exactly one OU"},
		{"two OUs", pkix.Name{CommonName: "n", OrganizationalUnit: []string{OUWorker, OUManager}, Organization: []string{"c"}}, "exactly one OU"},
		{"bad role", pkix.Name{CommonName: "n", OrganizationalUnit: []string{"admin"}, Organization: []string{"c"}}, "not a Shoal role"},
		{"no O", pkix.Name{CommonName: "n", OrganizationalUnit: []string{OUClient}}, "exactly one non-empty O"},
	}
	for _, tc := range tests {
		_, err := SubjectOf(mk(tc.n))
		require.Error(t, err, tc.name)
		assert.Contains(t, err.Error(), tc.want, tc.name)
	}
	_, err = SubjectOf(nil)
	assert.Error(t, err)
}

func TestRenewAt(t *testing.T) {
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	validity := 90 * 24 * time.Hour
	c := &x509.Certificate{NotBefore: start, NotAfter: start.Add(validity)}
	lo, hi := start.Add(validity/2), start.Add(validity*8/10)
	minSeen, maxSeen := c.NotAfter, c.NotBefore
	for range 10000 {
		at := RenewAt(c)
		require.False(t, at.Before(lo), "%v before 50%%", at)
		require.False(t, at.After(hi), "%v after 80%%", at)
		if at.Before(minSeen) {
			minSeen = at
		}
		if at.After(maxSeen) {
			maxSeen = at
		}
	}
	// Spread over the window, not a constant: with 10000 uniform draws the extremes
	// land within 1% of the window's ends with overwhelming probability.
	window := hi.Sub(lo)
	assert.Less(t, minSeen.Sub(lo), window/100)
	assert.Less(t, hi.Sub(maxSeen), window/100)

	degenerate := &x509.Certificate{NotBefore: start, NotAfter: start}
	assert.Equal(t, start, RenewAt(degenerate))
}

func TestCrossSign(t *testing.T) {
	oldCA := newCA(t, testCluster)
	newCA := newCA(t, testCluster)
	cross, err := CrossSign(oldCA, newCA)
	require.NoError(t, err)
	xc := mustCerts(t, cross)
	require.Len(t, xc, 1)
	assert.Equal(t, newCA.Cert.RawSubject, xc[0].RawSubject)
	assert.True(t, newCA.Cert.PublicKey.(*ecdsa.PublicKey).Equal(xc[0].PublicKey))
	assert.True(t, xc[0].IsCA)
	assert.NoError(t, xc[0].CheckSignatureFrom(oldCA.Cert))
	assert.False(t, xc[0].NotAfter.After(oldCA.Cert.NotAfter))

	subj := Subject{NodeID: "m2", Role: OUManager, ClusterID: testCluster}
	// A signer of the new CA that appends the cross-signed certificate.
	rotating := newSigner(t, newCA, cross)
	_, chain := issue(t, rotating, subj, time.Hour)
	require.Len(t, mustCerts(t, chain), 2, "leaf + cross-signed intermediate")

	_, got, err := VerifyCert(chain, oldCA.Pool(), time.Now())
	require.NoError(t, err, "a node trusting only the OLD root accepts the chain")
	assert.Equal(t, subj, got)
	_, _, err = VerifyCert(chain, newCA.Pool(), time.Now())
	require.NoError(t, err, "a node trusting the NEW root accepts it too")
	_, _, err = VerifyCert(mustPEM(t, chain), newCA.Pool(), time.Now())
	require.NoError(t, err, "the NEW root alone, without the intermediate")
	_, _, err = VerifyCert(mustPEM(t, chain), oldCA.Pool(), time.Now())
	assert.ErrorIs(t, err, ErrUnknownAuthority, "the OLD root needs the intermediate")

	_, err = CrossSign(&RootCA{Cert: oldCA.Cert, CertPEM: oldCA.CertPEM}, newCA)
	assert.ErrorContains(t, err, "no private key")
	_, err = CrossSign(nil, newCA)
	assert.Error(t, err)
}

func TestSaveLoadKeyPair(t *testing.T) {
	ca := newCA(t, testCluster)
	s := newSigner(t, ca, nil)
	kp := keyPairFor(t, ca, s, Subject{NodeID: "w1", Role: OUWorker, ClusterID: testCluster})

	dir := filepath.Join(t.TempDir(), "certs")
	_, err := LoadKeyPair(dir)
	assert.ErrorIs(t, err, fs.ErrNotExist)

	require.NoError(t, SaveKeyPair(dir, kp))
	st, err := os.Stat(dir)
	require.NoError(t, err)
	assert.Equal(t, fs.FileMode(0o700), st.Mode().Perm())
	for _, name := range []string{CertFile, KeyFile, RootFile} {
		st, err := os.Stat(filepath.Join(dir, name))
		require.NoError(t, err)
		assert.Equal(t, fs.FileMode(0o600), st.Mode().Perm(), name)
	}
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Len(t, entries, 3, "no temp files left behind")

	back, err := LoadKeyPair(dir)
	require.NoError(t, err)
	assert.Equal(t, kp, back)

	// Overwrite with a new certificate; an existing loose directory is tightened.
	require.NoError(t, os.Chmod(dir, 0o755))
	kp2 := keyPairFor(t, ca, s, Subject{NodeID: "w1", Role: OUWorker, ClusterID: testCluster})
	require.NoError(t, SaveKeyPair(dir, kp2))
	back, err = LoadKeyPair(dir)
	require.NoError(t, err)
	assert.Equal(t, kp2, back)
	st, err = os.Stat(dir)
	require.NoError(t, err)
	assert.Equal(t, fs.FileMode(0o700), st.Mode().Perm())

	// A partial set is still "not exist".
	require.NoError(t, os.Remove(filepath.Join(dir, KeyFile)))
	_, err = LoadKeyPair(dir)
	assert.True(t, errors.Is(err, fs.ErrNotExist))

	assert.Error(t, SaveKeyPair(dir, KeyPair{CertPEM: kp.CertPEM}))
}
