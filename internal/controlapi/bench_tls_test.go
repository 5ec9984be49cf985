package controlapi_test

import (
	"context"
	"fmt"
	"net"
	"sort"
	"testing"
	"time"

	cfsslog "github.com/cloudflare/cfssl/log"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/controlapi"
	"github.com/shoalhq/shoal/internal/state"
	"github.com/shoalhq/shoal/internal/state/statetest"
	"github.com/shoalhq/shoal/pki"
)

const benchCluster = "benchcluster0000000000000"

// benchCreds signs a fresh key for subj with signer and returns its
// credentials.
func benchCreds(b *testing.B, root *pki.RootCA, signer pki.Signer, subj pki.Subject) *pki.Credentials {
	b.Helper()
	key, csr, err := pki.NewKeyAndCSR(subj.NodeID)
	if err != nil {
		b.Fatal(err)
	}
	cert, err := signer.Sign(context.Background(), pki.SignRequest{CSR: csr, Subject: subj, Validity: pki.DefaultCertValidity})
	if err != nil {
		b.Fatal(err)
	}
	c, err := pki.NewCredentials(pki.KeyPair{CertPEM: cert, KeyPEM: key, RootPEM: root.CertPEM})
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// benchServer is controlapi.New over its own in-memory store, served on
// 127.0.0.1 with the given server options, and a client connection to it.
type benchServer struct {
	store *state.Store
	srv   *grpc.Server
	done  chan struct{}
	conn  *grpc.ClientConn
	cl    api.ControlClient
}

func startBenchServer(b *testing.B, srvOpts []grpc.ServerOption, clientCreds credentials.TransportCredentials) *benchServer {
	b.Helper()
	st := statetest.NewStore(state.Config{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	s := &benchServer{store: st, srv: grpc.NewServer(srvOpts...), done: make(chan struct{})}
	api.RegisterControlServer(s.srv, controlapi.New(st))
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(lis)
	}()
	s.conn, err = grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(clientCreds))
	if err != nil {
		s.stop()
		b.Fatal(err)
	}
	s.cl = api.NewControlClient(s.conn)
	return s
}

func (s *benchServer) stop() {
	if s.conn != nil {
		s.conn.Close()
	}
	s.srv.Stop()
	<-s.done
	s.store.Close()
}

func benchSpec(name string) *api.ServiceSpec {
	return &api.ServiceSpec{
		Name: name,
		Mode: &api.ServiceSpec_Replicated{Replicated: &api.ReplicatedService{Replicas: 0}},
		Task: &api.TaskSpec{Command: []string{"sleep", "100"}},
	}
}

// quantile returns the q-quantile of sorted durations, in microseconds.
func quantile(sorted []time.Duration, q float64) float64 {
	i := int(float64(len(sorted)) * q)
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return float64(sorted[i].Nanoseconds()) / 1e3
}

// BenchmarkControlAPITLS measures the control API's latency with and
// without TLS in the same run: controlapi.New over an in-memory store is
// served on two gRPC servers on 127.0.0.1, one plaintext and one with the
// manager's mutual-TLS configuration (pki.Credentials.ServerTLS, a manager
// certificate from a throwaway root CA), each with one client connection
// (the TLS one presenting an operator certificate). Each iteration makes
// 2000 sequential GetService reads and 2000 sequential CreateService writes
// against each server, alternating between the servers call by call so both
// share the machine's noise. It reports p50 and p99 in microseconds for each
// and the TLS/plaintext ratio of the p50s. Run it with -benchtime=1x.
func BenchmarkControlAPITLS(b *testing.B) {
	const calls = 2000
	defer goleak.VerifyNone(b, goleak.IgnoreCurrent())
	// cfssl logs every signature to the standard logger at info level; the
	// manager turns it down the same way (pki turns it down at first use).
	cfsslog.Level = cfsslog.LevelError

	root, err := pki.NewRootCA(benchCluster, 0)
	if err != nil {
		b.Fatal(err)
	}
	signer, err := pki.NewLocalSigner(root, nil)
	if err != nil {
		b.Fatal(err)
	}
	mgr := benchCreds(b, root, signer, pki.Subject{NodeID: "benchmanager0000000000000", Role: pki.OUManager, ClusterID: benchCluster})
	op := benchCreds(b, root, signer, pki.Subject{NodeID: "bench-operator", Role: pki.OUClient, ClusterID: benchCluster})

	plain := startBenchServer(b, nil, insecure.NewCredentials())
	defer plain.stop()
	secure := startBenchServer(b, []grpc.ServerOption{grpc.Creds(credentials.NewTLS(mgr.ServerTLS()))},
		credentials.NewTLS(op.ClientTLS(pki.ManagerServerName)))
	defer secure.stop()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	servers := []*benchServer{plain, secure}
	// One service to read on each server; the first calls also establish
	// the connections (the handshake is not what this measures).
	ids := make([]string, len(servers))
	for k, s := range servers {
		resp, err := s.cl.CreateService(ctx, &api.CreateServiceRequest{Spec: benchSpec("read-target")}, grpc.WaitForReady(true))
		if err != nil {
			b.Fatal(err)
		}
		ids[k] = resp.GetService().GetId()
	}

	reads := [2][]time.Duration{}
	writes := [2][]time.Duration{}
	b.ResetTimer()
	for it := 0; it < b.N; it++ {
		for i := 0; i < calls; i++ {
			for k, s := range servers {
				t0 := time.Now()
				resp, err := s.cl.GetService(ctx, &api.GetRequest{Id: ids[k]})
				d := time.Since(t0)
				if err != nil {
					b.Fatal(err)
				}
				if resp.GetService().GetId() != ids[k] {
					b.Fatalf("GetService returned %q, want %q", resp.GetService().GetId(), ids[k])
				}
				reads[k] = append(reads[k], d)
			}
		}
		for i := 0; i < calls; i++ {
			for k, s := range servers {
				name := fmt.Sprintf("w%d-%d", it, i)
				t0 := time.Now()
				resp, err := s.cl.CreateService(ctx, &api.CreateServiceRequest{Spec: benchSpec(name)})
				d := time.Since(t0)
				if err != nil {
					b.Fatal(err)
				}
				if resp.GetService().GetSpec().GetName() != name {
					b.Fatalf("CreateService created %q, want %q", resp.GetService().GetSpec().GetName(), name)
				}
				writes[k] = append(writes[k], d)
			}
		}
	}
	b.StopTimer()

	for _, l := range [][]time.Duration{reads[0], reads[1], writes[0], writes[1]} {
		sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
	}
	report := func(kind string, ls [2][]time.Duration) {
		pp50, pp99 := quantile(ls[0], 0.50), quantile(ls[0], 0.99)
		tp50, tp99 := quantile(ls[1], 0.50), quantile(ls[1], 0.99)
		b.ReportMetric(pp50, kind+"-plain-p50-us")
		b.ReportMetric(pp99, kind+"-plain-p99-us")
		b.ReportMetric(tp50, kind+"-tls-p50-us")
		b.ReportMetric(tp99, kind+"-tls-p99-us")
		b.ReportMetric(tp50/pp50, kind+"-p50-tls/plain")
		b.ReportMetric(tp99/pp99, kind+"-p99-tls/plain")
	}
	report("read", reads)
	report("write", writes)
}
