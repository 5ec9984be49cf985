package transport

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	pb "go.etcd.io/raft/v3/raftpb"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitFor bounds every wait in these tests: generous, since a loaded 2-core machine is slow.
const waitFor = 30 * time.Second

const tick = 5 * time.Millisecond

// fakeLocal records what the transport hands to the local member.
type fakeLocal struct {
	mu          sync.Mutex
	stepped     []*pb.Message
	unreachable map[uint64]int
	snapReports map[uint64][]bool
	// stepGate, if set, is waited on by Step for MsgSnap messages (after signalling entered).
	stepGate chan struct{}
	entered  chan struct{}
	stepErr  error
	propose  func(ctx context.Context, data []byte) (any, error)
}

var _ Local = (*fakeLocal)(nil)

func newFakeLocal() *fakeLocal {
	return &fakeLocal{unreachable: map[uint64]int{}, snapReports: map[uint64][]bool{}}
}

func (f *fakeLocal) Step(ctx context.Context, m *pb.Message) error {
	f.mu.Lock()
	gate, entered, err := f.stepGate, f.entered, f.stepErr
	f.mu.Unlock()
	if err != nil {
		return err
	}
	if m.GetType() == pb.MsgSnap && gate != nil {
		if entered != nil {
			entered <- struct{}{}
		}
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stepped = append(f.stepped, m)
	return nil
}

func (f *fakeLocal) ReportUnreachable(id uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.unreachable[id]++
}

func (f *fakeLocal) ReportSnapshot(id uint64, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.snapReports[id] = append(f.snapReports[id], ok)
}

func (f *fakeLocal) Propose(ctx context.Context, data []byte) (any, error) {
	if f.propose == nil {
		return nil, nil
	}
	return f.propose(ctx, data)
}

func (f *fakeLocal) steps() []*pb.Message {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*pb.Message(nil), f.stepped...)
}

func (f *fakeLocal) unreachableCount(id uint64) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.unreachable[id]
}

func (f *fakeLocal) snapshotReports(id uint64) []bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]bool(nil), f.snapReports[id]...)
}

// testConfig is DefaultConfig with fast reconnects, in plain text.
func testConfig(id uint64) Config {
	cfg := DefaultConfig()
	cfg.ID = id
	cfg.Insecure = true
	cfg.MinBackoff = 10 * time.Millisecond
	cfg.MaxBackoff = 200 * time.Millisecond
	return cfg
}

// member is a transport with its own gRPC server on 127.0.0.1.
type member struct {
	tr   *Transport
	srv  *grpc.Server
	addr string
	done chan struct{}
}

// startMember creates a transport from cfg, serves it on a fresh loopback port and starts it.
// Cleanup stops the transport, then the server.
func startMember(t testing.TB, cfg Config) *member {
	t.Helper()
	return startMemberWith(t, cfg)
}

// startMemberWith is startMember with more options for the gRPC server (its credentials).
func startMemberWith(t testing.TB, cfg Config, opts ...grpc.ServerOption) *member {
	t.Helper()
	tr, err := New(cfg)
	require.NoError(t, err)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := grpc.NewServer(append([]grpc.ServerOption{grpc.MaxRecvMsgSize(MaxMessageBytes)}, opts...)...)
	m := &member{tr: tr, srv: srv, addr: lis.Addr().String(), done: make(chan struct{})}
	tr.Register(m.srv)
	go func() {
		defer close(m.done)
		_ = m.srv.Serve(lis)
	}()
	require.NoError(t, tr.Start(context.Background()))
	t.Cleanup(func() { m.stop(t) })
	return m
}

func (m *member) stop(t testing.TB) {
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, m.tr.Stop(ctx))
	m.srv.Stop()
	<-m.done
}

// blackhole is a listener that accepts connections and never answers, like a hung peer.
type blackhole struct {
	lis   net.Listener
	mu    sync.Mutex
	conns []net.Conn
	done  chan struct{}
}

func newBlackhole(t testing.TB) *blackhole {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	b := &blackhole{lis: lis, done: make(chan struct{})}
	go func() {
		defer close(b.done)
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.conns = append(b.conns, c)
			b.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = lis.Close()
		<-b.done
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, c := range b.conns {
			_ = c.Close()
		}
	})
	return b
}

func (b *blackhole) addr() string { return b.lis.Addr().String() }

// deadAddr returns a loopback address where nothing listens.
func deadAddr(t testing.TB) string {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := lis.Addr().String()
	require.NoError(t, lis.Close())
	return addr
}

func msg(typ pb.MessageType, from, to, index uint64) *pb.Message {
	return &pb.Message{Type: typ.Enum(), From: &from, To: &to, Index: &index, Term: new(uint64(1))}
}

// testTLS returns mutual TLS configurations for servers and clients on 127.0.0.1: one CA
// signs one certificate that both sides present and verify.
func testTLS(t testing.TB) (server, client *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "raft-transport-test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	leaf, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
	server = &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13}
	client = &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS13}
	return server, client
}
