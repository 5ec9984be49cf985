package shoal_test

import (
	"context"
	"crypto"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudflare/cfssl/api/signhandler"
	"github.com/cloudflare/cfssl/auth"
	"github.com/cloudflare/cfssl/config"
	"github.com/cloudflare/cfssl/helpers"
	cfsigner "github.com/cloudflare/cfssl/signer"
	"github.com/cloudflare/cfssl/signer/local"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal"
	"github.com/shoalhq/shoal/pki"
	"github.com/shoalhq/shoal/runtime/runtimetest"
)

// externalCFSSL serves cfssl's own signing API (api/signhandler, the
// handler `cfssl serve` uses) for a CA of its own on 127.0.0.1, with
// "standard" authentication, and counts the signatures it makes.
func externalCFSSL(t *testing.T, authKey string) (*pki.RootCA, string, *atomic.Int64) {
	t.Helper()
	ca, err := pki.NewRootCA("external", 0)
	require.NoError(t, err)
	key, err := helpers.ParsePrivateKeyPEM(ca.KeyPEM)
	require.NoError(t, err)
	prov, err := auth.New(authKey, nil)
	require.NoError(t, err)
	profile := &config.SigningProfile{
		Usage:        []string{"digital signature", "key encipherment", "server auth", "client auth"},
		Expiry:       24 * time.Hour,
		ExpiryString: "24h",
		Provider:     prov,
	}
	s, err := local.NewSigner(key.(crypto.Signer), ca.Cert, cfsigner.DefaultSigAlgo(key.(crypto.Signer)),
		&config.Signing{Profiles: map[string]*config.SigningProfile{}, Default: profile})
	require.NoError(t, err)
	h, err := signhandler.NewAuthHandlerFromSigner(s)
	require.NoError(t, err)
	var calls atomic.Int64
	mux := http.NewServeMux()
	mux.Handle("/api/v1/cfssl/authsign", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		h.ServeHTTP(w, r)
	}))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	trust, err := pki.ParseRootCA(ca.CertPEM, nil)
	require.NoError(t, err)
	return trust, srv.URL, &calls
}

// In external CA mode every certificate (the first manager's, each joining
// node's, renewals) comes from the external cfssl server, the cluster keeps
// no CA key, and the join tokens pin the external root.
func TestExternalCAEndToEnd(t *testing.T) {
	const authKey = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
	root, url, calls := externalCFSSL(t, authKey)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	m, err := shoal.Init(ctx, shoal.Config{StateDir: dir + "/m", ListenAddr: "127.0.0.1:0", DisableAgent: true,
		ExternalCA: &shoal.ExternalCA{URL: url, AuthKey: authKey, RootCert: root.CertPEM}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = m.Stop(context.Background()) })
	assert.Equal(t, int64(1), calls.Load(), "the first manager's certificate comes from the external CA")
	info, err := m.Client().Cluster(ctx)
	require.NoError(t, err)
	assert.Equal(t, root.Digest(), info.RootCADigest)
	assert.Equal(t, root.Digest(), m.Certificate().RootDigest)

	w, err := shoal.Join(ctx, shoal.Config{StateDir: dir + "/w", ListenAddr: "127.0.0.1:0", Runtime: runtimetest.New()},
		m.Addr(), info.WorkerToken)
	require.NoError(t, err)
	t.Cleanup(func() { _ = w.Stop(context.Background()) })
	assert.Equal(t, int64(2), calls.Load())
	wc := w.Certificate()
	assert.Equal(t, pki.OUWorker, wc.Role)
	assert.Equal(t, info.ID, wc.ClusterID)
	c := m.Client()
	require.Eventually(t, func() bool {
		n, err := c.GetNode(ctx, wc.NodeID)
		return err == nil && n.State == shoal.NodeReady
	}, 30*time.Second, 20*time.Millisecond, "the worker's session over mTLS with an externally issued certificate")

	require.NoError(t, w.RenewCertificate(ctx))
	assert.Equal(t, int64(3), calls.Load())
	op, err := c.IssueClientCredentials(ctx, "ops", 0)
	require.NoError(t, err)
	assert.Equal(t, int64(4), calls.Load())
	dc, err := shoal.Dial(ctx, m.Addr(), shoal.WithCredentials(op))
	require.NoError(t, err)
	defer dc.Close()
	nodes, err := dc.ListNodes(ctx)
	require.NoError(t, err)
	assert.Len(t, nodes, 2)
}

// A cfssl server that refuses the cluster's requests (wrong key) fails Init
// with the reason.
func TestExternalCAWrongAuthKeyFailsInit(t *testing.T) {
	root, url, _ := externalCFSSL(t, "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := shoal.Init(ctx, shoal.Config{StateDir: t.TempDir(), ListenAddr: "127.0.0.1:0", DisableAgent: true,
		ExternalCA: &shoal.ExternalCA{URL: url, AuthKey: "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100", RootCert: root.CertPEM}})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "init")
}
