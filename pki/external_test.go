package pki

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudflare/cfssl/api/signhandler"
	"github.com/cloudflare/cfssl/auth"
	"github.com/cloudflare/cfssl/config"
	cfsigner "github.com/cloudflare/cfssl/signer"
	"github.com/cloudflare/cfssl/signer/local"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const testAuthKey = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// cfsslServer runs cfssl's real signing API (api/signhandler) for ca on 127.0.0.1.
// With authKey set, the default profile requires cfssl "standard" authentication and
// is served on /api/v1/cfssl/authsign; otherwise on /api/v1/cfssl/sign.
func cfsslServer(t *testing.T, ca *RootCA, authKey string) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	key, err := ca.signer()
	require.NoError(t, err)
	profile := &config.SigningProfile{
		Usage:        []string{"digital signature", "server auth", "client auth"},
		Expiry:       24 * time.Hour,
		ExpiryString: "24h",
	}
	if authKey != "" {
		p, err := auth.New(authKey, nil)
		require.NoError(t, err)
		profile.Provider = p
	}
	cf, err := local.NewSigner(key, ca.Cert, cfsigner.DefaultSigAlgo(key), &config.Signing{
		Profiles: map[string]*config.SigningProfile{},
		Default:  profile,
	})
	require.NoError(t, err)
	mux := http.NewServeMux()
	if authKey != "" {
		h, err := signhandler.NewAuthHandlerFromSigner(cf)
		require.NoError(t, err)
		mux.Handle("/api/v1/cfssl/authsign", h)
	} else {
		h, err := signhandler.NewHandlerFromSigner(cf)
		require.NoError(t, err)
		mux.Handle("/api/v1/cfssl/sign", h)
	}
	var calls atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, &calls
}

func trustOnly(t *testing.T, ca *RootCA) *RootCA {
	t.Helper()
	r, err := ParseRootCA(ca.CertPEM, nil)
	require.NoError(t, err)
	return r
}

func TestExternalSignerEndToEnd(t *testing.T) {
	for _, tc := range []struct {
		name    string
		authKey string
	}{
		{"unauthenticated", ""},
		{"authenticated", testAuthKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			extCA := newCA(t, "external-ca")
			srv, calls := cfsslServer(t, extCA, tc.authKey)
			s, err := NewExternalSigner(ExternalCAConfig{URL: srv.URL, AuthKey: tc.authKey, RootCA: trustOnly(t, extCA)})
			require.NoError(t, err)

			for _, subj := range []Subject{
				{NodeID: "m1", Role: OUManager, ClusterID: testCluster},
				{NodeID: "w1", Role: OUWorker, ClusterID: testCluster},
			} {
				keyPEM, csrPEM, err := NewKeyAndCSR(subj.NodeID)
				require.NoError(t, err)
				chain, err := s.Sign(context.Background(), SignRequest{CSR: csrPEM, Subject: subj, Validity: DefaultCertValidity})
				require.NoError(t, err)
				leaf, got, err := VerifyCert(chain, extCA.Pool(), time.Now())
				require.NoError(t, err)
				assert.Equal(t, subj, got)
				assert.ElementsMatch(t, subj.hosts(), leaf.DNSNames)
				assert.True(t, isP256(leaf.PublicKey))
				// The issued certificate works as TLS credentials.
				creds, err := NewCredentials(KeyPair{CertPEM: chain, KeyPEM: keyPEM, RootPEM: extCA.CertPEM})
				require.NoError(t, err)
				assert.Equal(t, subj, creds.Subject())
			}
			assert.Equal(t, int64(2), calls.Load())
		})
	}
}

func TestExternalSignerAuthentication(t *testing.T) {
	extCA := newCA(t, "external-ca")
	srv, _ := cfsslServer(t, extCA, testAuthKey)
	_, csrPEM, err := NewKeyAndCSR("w1")
	require.NoError(t, err)
	req := SignRequest{CSR: csrPEM, Subject: Subject{NodeID: "w1", Role: OUWorker, ClusterID: testCluster}, Validity: time.Hour}

	wrongKey, err := NewExternalSigner(ExternalCAConfig{URL: srv.URL, AuthKey: strings.Repeat("ab", 32), RootCA: trustOnly(t, extCA)})
	require.NoError(t, err)
	_, err = wrongKey.Sign(context.Background(), req)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "invalid token")

	noKey, err := NewExternalSigner(ExternalCAConfig{URL: srv.URL, RootCA: trustOnly(t, extCA)})
	require.NoError(t, err)
	_, err = noKey.Sign(context.Background(), req)
	assert.Error(t, err, "the unauthenticated endpoint is not served")
}

// A server that signs with a CA other than the configured root is refused.
func TestExternalSignerRefusesOtherCA(t *testing.T) {
	expected := newCA(t, "external-ca")
	impostor := newCA(t, "external-ca")
	srv, calls := cfsslServer(t, impostor, "")
	s, err := NewExternalSigner(ExternalCAConfig{URL: srv.URL, RootCA: trustOnly(t, expected)})
	require.NoError(t, err)
	_, csrPEM, err := NewKeyAndCSR("w1")
	require.NoError(t, err)
	out, err := s.Sign(context.Background(), SignRequest{CSR: csrPEM, Subject: Subject{NodeID: "w1", Role: OUWorker, ClusterID: testCluster}, Validity: time.Hour})
	require.Error(t, err)
	assert.Nil(t, out)
	assert.ErrorIs(t, err, ErrUnknownAuthority)
	assert.Contains(t, err.Error(), "refusing the certificate")
	assert.Equal(t, int64(1), calls.Load(), "the server was asked")
}

// A server that returns a certificate for something other than what was asked is
// refused: here a cfssl profile whose whitelist keeps the CSR's subject.
func TestExternalSignerRefusesWrongSubject(t *testing.T) {
	extCA := newCA(t, "external-ca")
	key, err := extCA.signer()
	require.NoError(t, err)
	cf, err := local.NewSigner(key, extCA.Cert, cfsigner.DefaultSigAlgo(key), &config.Signing{
		Profiles: map[string]*config.SigningProfile{},
		Default:  &config.SigningProfile{Usage: []string{"server auth", "client auth"}, Expiry: time.Hour, ExpiryString: "1h"},
	})
	require.NoError(t, err)
	h, err := signhandler.NewHandlerFromSigner(cf)
	require.NoError(t, err)
	// Drop the subject the client sent, as a careless proxy might.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body strings.Builder
		buf := make([]byte, 4096)
		for {
			n, err := r.Body.Read(buf)
			body.Write(buf[:n])
			if err != nil {
				break
			}
		}
		stripped := strings.Replace(body.String(), `"subject":`, `"ignored":`, 1)
		r.Body = http.NoBody
		r2 := r.Clone(r.Context())
		r2.Body = readCloser{strings.NewReader(stripped)}
		r2.ContentLength = int64(len(stripped))
		h.ServeHTTP(w, r2)
	}))
	defer srv.Close()
	s, err := NewExternalSigner(ExternalCAConfig{URL: srv.URL, RootCA: trustOnly(t, extCA)})
	require.NoError(t, err)
	_, csrPEM, err := NewKeyAndCSR("w1")
	require.NoError(t, err)
	_, err = s.Sign(context.Background(), SignRequest{CSR: csrPEM, Subject: Subject{NodeID: "w1", Role: OUWorker, ClusterID: testCluster}, Validity: time.Hour})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "refusing the certificate")
}

type readCloser struct{ *strings.Reader }

func (readCloser) Close() error { return nil }

func TestExternalSignerContext(t *testing.T) {
	extCA := newCA(t, "external-ca")
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	s, err := NewExternalSigner(ExternalCAConfig{URL: srv.URL, RootCA: trustOnly(t, extCA)})
	require.NoError(t, err)
	_, csrPEM, err := NewKeyAndCSR("w1")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := s.Sign(ctx, SignRequest{CSR: csrPEM, Subject: Subject{NodeID: "w1", Role: OUWorker, ClusterID: testCluster}, Validity: time.Hour})
		errc <- err
	}()
	cancel()
	select {
	case err := <-errc:
		assert.ErrorIs(t, err, context.Canceled)
	case <-time.After(30 * time.Second):
		t.Fatal("Sign did not return after its context was cancelled")
	}
}

func TestExternalCAConfigValidate(t *testing.T) {
	root := trustOnly(t, newCA(t, "external-ca"))
	tests := []struct {
		name string
		cfg  ExternalCAConfig
		want string
	}{
		{"no URL", ExternalCAConfig{RootCA: root}, "ExternalCAConfig.URL: must not be empty"},
		{"bad scheme", ExternalCAConfig{URL: "ftp://x:1", RootCA: root}, "scheme must be http or https"},
		{"no host", ExternalCAConfig{URL: "http://", RootCA: root}, "must name a host"},
		{"path", ExternalCAConfig{URL: "http://h:1/api", RootCA: root}, "must be a base URL"},
		{"bad key", ExternalCAConfig{URL: "http://h:1", AuthKey: "env:SECRET", RootCA: root}, "AuthKey: must be hex"},
		{"short key", ExternalCAConfig{URL: "http://h:1", AuthKey: "abcd", RootCA: root}, "AuthKey: must be at least 16 bytes"},
		{"no root", ExternalCAConfig{URL: "http://h:1"}, "ExternalCAConfig.RootCA: must be set"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewExternalSigner(tc.cfg)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
	_, err := NewExternalSigner(ExternalCAConfig{URL: "https://ca.example.com:8888/", RootCA: root})
	assert.NoError(t, err)
}

// The Profile is forwarded: the server's default profile here lacks client auth (and
// is refused by the checks), its "node" profile has it.
func TestExternalSignerProfile(t *testing.T) {
	extCA := newCA(t, "external-ca")
	key, err := extCA.signer()
	require.NoError(t, err)
	cf, err := local.NewSigner(key, extCA.Cert, cfsigner.DefaultSigAlgo(key), &config.Signing{
		Profiles: map[string]*config.SigningProfile{
			"node": {Usage: []string{"digital signature", "server auth", "client auth"}, Expiry: 2 * time.Hour, ExpiryString: "2h"},
		},
		Default: &config.SigningProfile{Usage: []string{"digital signature", "server auth"}, Expiry: time.Hour, ExpiryString: "1h"},
	})
	require.NoError(t, err)
	h, err := signhandler.NewHandlerFromSigner(cf)
	require.NoError(t, err)
	mux := http.NewServeMux()
	mux.Handle("/api/v1/cfssl/sign", h)
	srv := httptest.NewServer(mux)
	defer srv.Close()

	req := func() SignRequest {
		_, csrPEM, err := NewKeyAndCSR("w1")
		require.NoError(t, err)
		return SignRequest{CSR: csrPEM, Subject: Subject{NodeID: "w1", Role: OUWorker, ClusterID: testCluster}, Validity: time.Hour}
	}
	def, err := NewExternalSigner(ExternalCAConfig{URL: srv.URL, RootCA: trustOnly(t, extCA)})
	require.NoError(t, err)
	_, err = def.Sign(context.Background(), req())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "client auth")

	node, err := NewExternalSigner(ExternalCAConfig{URL: srv.URL, Profile: "node", RootCA: trustOnly(t, extCA)})
	require.NoError(t, err)
	chain, err := node.Sign(context.Background(), req())
	require.NoError(t, err)
	leaf := mustCerts(t, chain)[0]
	assert.InDelta(t, (2 * time.Hour).Seconds(), leaf.NotAfter.Sub(leaf.NotBefore).Seconds(), 60)
}
