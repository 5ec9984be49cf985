package pki

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

type testCluster2 struct {
	ca     *RootCA
	signer Signer
}

func newTestCluster(t testing.TB) testCluster2 {
	ca := newCA(t, testCluster)
	return testCluster2{ca: ca, signer: newSigner(t, ca, nil)}
}

func (tc testCluster2) creds(t testing.TB, id, role string) *Credentials {
	t.Helper()
	c, err := NewCredentials(keyPairFor(t, tc.ca, tc.signer, Subject{NodeID: id, Role: role, ClusterID: testCluster}))
	require.NoError(t, err)
	return c
}

type hsResult struct {
	server, client       tls.ConnectionState
	serverErr, clientErr error
}

// handshake runs a TLS handshake over a 127.0.0.1 TCP connection (kernel buffers, so
// an alert written after the other side finished does not block) and closes both ends.
func handshake(t *testing.T, serverCfg, clientCfg *tls.Config) hsResult {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	cc, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	sc, err := ln.Accept()
	require.NoError(t, err)
	deadline := time.Now().Add(30 * time.Second)
	require.NoError(t, sc.SetDeadline(deadline))
	require.NoError(t, cc.SetDeadline(deadline))
	srv := tls.Server(sc, serverCfg)
	cli := tls.Client(cc, clientCfg)
	var r hsResult
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.serverErr = srv.Handshake()
		if r.serverErr != nil {
			_ = sc.Close()
		}
	}()
	r.clientErr = cli.Handshake()
	if r.clientErr != nil {
		_ = cc.Close()
	}
	<-done
	if r.clientErr == nil && r.serverErr != nil {
		// In TLS 1.3 the client is done before the server has checked its
		// certificate; the server's alert is what the client reads next.
		if _, err := cli.Read(make([]byte, 1)); err != nil {
			r.clientErr = err
		}
	}
	r.server = srv.ConnectionState()
	r.client = cli.ConnectionState()
	_ = sc.Close()
	_ = cc.Close()
	return r
}

func TestNewCredentials(t *testing.T) {
	tc := newTestCluster(t)
	subj := Subject{NodeID: "m1", Role: OUManager, ClusterID: testCluster}
	kp := keyPairFor(t, tc.ca, tc.signer, subj)
	c, err := NewCredentials(kp)
	require.NoError(t, err)
	assert.Equal(t, subj, c.Subject())
	assert.Equal(t, kp, c.KeyPair())
	assert.Equal(t, "m1", c.Leaf().Subject.CommonName)
	_, err = c.Leaf().Verify(x509.VerifyOptions{Roots: c.Roots(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	assert.NoError(t, err)

	other := newTestCluster(t)
	otherKP := keyPairFor(t, other.ca, other.signer, subj)
	tests := []struct {
		name string
		kp   KeyPair
		want string
	}{
		{"key of another certificate", KeyPair{CertPEM: kp.CertPEM, KeyPEM: otherKP.KeyPEM, RootPEM: kp.RootPEM}, "KeyPEM does not match"},
		{"untrusted chain", KeyPair{CertPEM: otherKP.CertPEM, KeyPEM: otherKP.KeyPEM, RootPEM: kp.RootPEM}, "unknown authority"},
		{"no roots", KeyPair{CertPEM: kp.CertPEM, KeyPEM: kp.KeyPEM}, "RootPEM"},
		{"no cert", KeyPair{KeyPEM: kp.KeyPEM, RootPEM: kp.RootPEM}, "CertPEM"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewCredentials(tt.kp)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
			// Update refuses it too and keeps what it had.
			assert.Error(t, c.Update(tt.kp))
			assert.Equal(t, kp, c.KeyPair())
		})
	}

	// An expired leaf: a certificate whose validity ended before now.
	_, csrPEM, err := NewKeyAndCSR("old")
	require.NoError(t, err)
	ls := tc.signer.(*localSigner)
	past := *ls
	past.now = func() time.Time { return time.Now().Add(-2 * time.Hour) }
	chain, err := past.Sign(context.Background(), SignRequest{CSR: csrPEM, Subject: Subject{NodeID: "old", Role: OUWorker, ClusterID: testCluster}, Validity: time.Hour})
	require.NoError(t, err)
	key, _, err := NewKeyAndCSR("x")
	require.NoError(t, err)
	_, err = NewCredentials(KeyPair{CertPEM: chain, KeyPEM: key, RootPEM: tc.ca.CertPEM})
	assert.ErrorIs(t, err, ErrCertExpired)
}

func TestTLSMutualAuth(t *testing.T) {
	tc := newTestCluster(t)
	mgr := tc.creds(t, "m1", OUManager)
	wrk := tc.creds(t, "w1", OUWorker)

	r := handshake(t, mgr.ServerTLS(), wrk.ClientTLS(ManagerServerName))
	require.NoError(t, r.serverErr)
	require.NoError(t, r.clientErr)
	assert.Equal(t, uint16(tls.VersionTLS13), r.server.Version)
	require.NotEmpty(t, r.server.VerifiedChains, "server verified the client certificate")
	s, err := SubjectOf(r.server.VerifiedChains[0][0])
	require.NoError(t, err)
	assert.Equal(t, wrk.Subject(), s)
	require.NotEmpty(t, r.client.PeerCertificates)
	assert.Equal(t, "m1", r.client.PeerCertificates[0].Subject.CommonName)

	t.Run("client without certificate is let through", func(t *testing.T) {
		cfg := wrk.ClientTLS(ManagerServerName)
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &tls.Certificate{}, nil }
		r := handshake(t, mgr.ServerTLS(), cfg)
		require.NoError(t, r.serverErr)
		require.NoError(t, r.clientErr)
		assert.Empty(t, r.server.PeerCertificates)
		assert.Empty(t, r.server.VerifiedChains)
	})

	t.Run("client certificate from another CA is refused", func(t *testing.T) {
		other := newTestCluster(t)
		okp := keyPairFor(t, other.ca, other.signer, Subject{NodeID: "intruder", Role: OUManager, ClusterID: testCluster})
		// It trusts our root, so it would accept our server; our server must not accept it.
		okp.RootPEM = append(append([]byte{}, other.ca.CertPEM...), tc.ca.CertPEM...)
		intruder, err := NewCredentials(okp)
		require.NoError(t, err)
		r := handshake(t, mgr.ServerTLS(), intruder.ClientTLS(ManagerServerName))
		require.Error(t, r.serverErr)
		assert.Contains(t, r.serverErr.Error(), "unknown authority")
	})

	t.Run("worker certificate cannot serve as a manager", func(t *testing.T) {
		r := handshake(t, wrk.ServerTLS(), mgr.ClientTLS(ManagerServerName))
		require.Error(t, r.clientErr)
		assert.Contains(t, r.clientErr.Error(), ManagerServerName)
	})

	t.Run("server from another CA is refused", func(t *testing.T) {
		other := newTestCluster(t)
		rogue := other.creds(t, "m9", OUManager)
		r := handshake(t, rogue.ServerTLS(), wrk.ClientTLS(ManagerServerName))
		require.Error(t, r.clientErr)
		assert.ErrorIs(t, r.clientErr, ErrUnknownAuthority)
	})

	t.Run("TLS 1.2 refused", func(t *testing.T) {
		cfg := wrk.ClientTLS(ManagerServerName)
		cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
		r := handshake(t, mgr.ServerTLS(), cfg)
		// Refused by the handshake at once, not left to time out.
		require.Error(t, r.serverErr)
		assert.Contains(t, r.serverErr.Error(), "unsupported versions")
		require.Error(t, r.clientErr)
		assert.Contains(t, r.clientErr.Error(), "protocol version not supported")
	})
}

// Update swaps what new handshakes use while an established connection keeps working;
// roots are re-read per handshake on both sides.
func TestCredentialsUpdate(t *testing.T) {
	tc := newTestCluster(t)
	srvCreds := tc.creds(t, "m1", OUManager)
	cliCreds := tc.creds(t, "w1", OUWorker)

	ln, err := tls.Listen("tcp", "127.0.0.1:0", srvCreds.ServerTLS())
	require.NoError(t, err)
	serverDone := make(chan struct{})
	go func() {
		defer close(serverDone)
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				sc := bufio.NewScanner(conn)
				for sc.Scan() {
					if _, err := conn.Write(append(sc.Bytes(), '\n')); err != nil {
						return
					}
				}
			}()
		}
	}()

	dial := func(c *Credentials) (*tls.Conn, error) {
		d := tls.Dialer{Config: c.ClientTLS(ManagerServerName)}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := d.DialContext(ctx, "tcp", ln.Addr().String())
		if err != nil {
			return nil, err
		}
		tconn := conn.(*tls.Conn)
		// Round trip so that the server's verdict on the client is known.
		if err := echo(tconn, "hello"); err != nil {
			_ = tconn.Close()
			return nil, err
		}
		return tconn, nil
	}

	conn1, err := dial(cliCreds)
	require.NoError(t, err)
	first := conn1.ConnectionState().PeerCertificates[0]
	assert.Equal(t, srvCreds.Leaf().Raw, first.Raw)

	// Renew the server certificate (new key) and swap it in.
	kp2 := keyPairFor(t, tc.ca, tc.signer, Subject{NodeID: "m1", Role: OUManager, ClusterID: testCluster})
	require.NoError(t, srvCreds.Update(kp2))
	conn2, err := dial(cliCreds)
	require.NoError(t, err)
	second := conn2.ConnectionState().PeerCertificates[0]
	assert.NotEqual(t, first.SerialNumber, second.SerialNumber)
	assert.Equal(t, srvCreds.Leaf().Raw, second.Raw)
	// The first connection is untouched.
	require.NoError(t, echo(conn1, "still here"))

	// Root rotation on the server side: a server that trusts only a new root refuses
	// the client's old-root certificate on the next handshake.
	newRoot := newTestCluster(t)
	nkp := keyPairFor(t, newRoot.ca, newRoot.signer, Subject{NodeID: "m1", Role: OUManager, ClusterID: testCluster})
	require.NoError(t, srvCreds.Update(nkp))
	// The client must trust the new root to get as far as presenting its certificate.
	ckp := cliCreds.KeyPair()
	ckp.RootPEM = append(ckp.RootPEM, newRoot.ca.CertPEM...)
	require.NoError(t, cliCreds.Update(ckp))
	_, err = dial(cliCreds)
	require.Error(t, err, "server no longer trusts the client's root")
	require.NoError(t, echo(conn2, "established connections survive"))

	require.NoError(t, conn1.Close())
	require.NoError(t, conn2.Close())
	require.NoError(t, ln.Close())
	<-serverDone
}

func echo(c *tls.Conn, msg string) error {
	if err := c.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		return err
	}
	if _, err := c.Write([]byte(msg + "\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != msg+"\n" {
		return net.ErrClosed
	}
	return nil
}

// peerRecorder is a health service whose Check records PeerSubject.
type peerRecorder struct {
	*health.Server
	got chan peerSeen
}

type peerSeen struct {
	subj Subject
	cert *x509.Certificate
	ok   bool
}

func (p *peerRecorder) Check(ctx context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	s, c, ok := PeerSubject(ctx)
	p.got <- peerSeen{s, c, ok}
	return p.Server.Check(ctx, req)
}

func TestPeerSubjectGRPC(t *testing.T) {
	tc := newTestCluster(t)
	mgr := tc.creds(t, "m1", OUManager)
	wrk := tc.creds(t, "w1", OUWorker)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(mgr.ServerTLS())))
	rec := &peerRecorder{Server: health.NewServer(), got: make(chan peerSeen, 1)}
	healthpb.RegisterHealthServer(srv, rec)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	defer func() {
		srv.Stop()
		<-served
	}()

	call := func(cfg *tls.Config) peerSeen {
		t.Helper()
		conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		require.NoError(t, err)
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		require.NoError(t, err)
		assert.Equal(t, healthpb.HealthCheckResponse_SERVING, resp.GetStatus())
		return <-rec.got
	}

	seen := call(wrk.ClientTLS(ManagerServerName))
	require.True(t, seen.ok)
	assert.Equal(t, wrk.Subject(), seen.subj)
	assert.Equal(t, wrk.Leaf().Raw, seen.cert.Raw)

	noCert := wrk.ClientTLS(ManagerServerName)
	noCert.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &tls.Certificate{}, nil }
	seen = call(noCert)
	assert.False(t, seen.ok)
	assert.Nil(t, seen.cert)

	_, _, ok := PeerSubject(context.Background())
	assert.False(t, ok)
}

// Update races with handshakes that read the credentials (run with -race).
func TestCredentialsConcurrentUpdate(t *testing.T) {
	tc := newTestCluster(t)
	srv := tc.creds(t, "m1", OUManager)
	cli := tc.creds(t, "w1", OUWorker)
	kps := []KeyPair{
		keyPairFor(t, tc.ca, tc.signer, Subject{NodeID: "m1", Role: OUManager, ClusterID: testCluster}),
		keyPairFor(t, tc.ca, tc.signer, Subject{NodeID: "m1", Role: OUManager, ClusterID: testCluster}),
	}
	stop := make(chan struct{})
	updated := make(chan struct{})
	go func() {
		defer close(updated)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := srv.Update(kps[i%2]); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for range 10 {
		r := handshake(t, srv.ServerTLS(), cli.ClientTLS(ManagerServerName))
		require.NoError(t, r.serverErr)
		require.NoError(t, r.clientErr)
		assert.Equal(t, "m1", r.client.PeerCertificates[0].Subject.CommonName)
	}
	close(stop)
	<-updated
}

// A client certificate from the right CA whose validity has ended is refused
// by the server's handshake, as is a server certificate that has expired.
func TestTLSExpiredCertificateRefused(t *testing.T) {
	tc := newTestCluster(t)
	mgr := tc.creds(t, "m1", OUManager)
	wrk := tc.creds(t, "w1", OUWorker)
	expired := func(id, role string) tls.Certificate {
		keyPEM, csrPEM, err := NewKeyAndCSR(id)
		require.NoError(t, err)
		past := *tc.signer.(*localSigner)
		past.now = func() time.Time { return time.Now().Add(-2 * time.Hour) }
		chain, err := past.Sign(context.Background(), SignRequest{CSR: csrPEM,
			Subject: Subject{NodeID: id, Role: role, ClusterID: testCluster}, Validity: time.Hour})
		require.NoError(t, err)
		cert, err := tls.X509KeyPair(chain, keyPEM)
		require.NoError(t, err)
		return cert
	}

	oldWorker := expired("w-old", OUWorker)
	cli := wrk.ClientTLS(ManagerServerName)
	cli.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &oldWorker, nil }
	r := handshake(t, mgr.ServerTLS(), cli)
	require.Error(t, r.serverErr, "the server accepted an expired client certificate")
	assert.Contains(t, r.serverErr.Error(), "expired")

	oldMgr := expired("m-old", OUManager)
	srv := mgr.ServerTLS()
	srv.GetConfigForClient = nil
	srv.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &oldMgr, nil }
	srv.ClientAuth = tls.NoClientCert
	r = handshake(t, srv, wrk.ClientTLS(ManagerServerName))
	require.Error(t, r.clientErr, "the client accepted an expired server certificate")
	assert.Contains(t, r.clientErr.Error(), "expired")
}
