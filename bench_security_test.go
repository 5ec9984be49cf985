package shoal_test

import (
	"context"
	"fmt"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/shoalhq/shoal"
	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/ca"
	"github.com/shoalhq/shoal/internal/state"
	"github.com/shoalhq/shoal/internal/state/statetest"
	"github.com/shoalhq/shoal/pki"
	"github.com/shoalhq/shoal/runtime/runtimetest"
)

// startSecManager starts one manager with shoal.Init on 127.0.0.1 (real
// TCP, mutual TLS, default Raft timing) and stops it when tb ends.
func startSecManager(tb testing.TB, heartbeat time.Duration) *shoal.Node {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m, err := shoal.Init(ctx, shoal.Config{StateDir: tb.TempDir() + "/m1", ListenAddr: "127.0.0.1:0",
		DisableAgent: true, Hostname: "m1", HeartbeatPeriod: heartbeat})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), time.Minute)
		defer scancel()
		_ = m.Stop(sctx)
	})
	return m
}

// operatorTLS issues operator credentials through the manager's own client
// (Client.IssueClientCredentials) and returns gRPC transport credentials
// that present them and verify the manager by the cluster's root CA.
func operatorTLS(tb testing.TB, m *shoal.Node) credentials.TransportCredentials {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cc, err := m.Client().IssueClientCredentials(ctx, "bench-operator", 0)
	if err != nil {
		tb.Fatal(err)
	}
	pc, err := pki.NewCredentials(pki.KeyPair{CertPEM: cc.CertPEM, KeyPEM: cc.KeyPEM, RootPEM: cc.RootPEM})
	if err != nil {
		tb.Fatal(err)
	}
	if r := pc.Subject().Role; r != pki.OUClient {
		tb.Fatalf("operator credentials carry role %s, want %s", r, pki.OUClient)
	}
	return credentials.NewTLS(pc.ClientTLS(pki.ManagerServerName))
}

// csrBatch makes n fresh keys and CSRs (the key is thrown away: only the
// signing is measured).
func csrBatch(tb testing.TB, n int) [][]byte {
	tb.Helper()
	out := make([][]byte, n)
	for i := range out {
		_, csr, err := pki.NewKeyAndCSR(fmt.Sprintf("bench-%d", i))
		if err != nil {
			tb.Fatal(err)
		}
		out[i] = csr
	}
	return out
}

// runCallers runs n requests on callers goroutines, each request i calling
// do(i); it returns the wall time from the first to the last request.
func runCallers(tb testing.TB, n, callers int, do func(i int) error) time.Duration {
	var next atomic.Int64
	var wg sync.WaitGroup
	var errOnce sync.Once
	var firstErr error
	start := time.Now()
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := do(i); err != nil {
					errOnce.Do(func() { firstErr = err })
					next.Store(int64(n)) // stop the other callers
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if firstErr != nil {
		tb.Fatal(firstErr)
	}
	return elapsed
}

// BenchmarkCertIssuance measures operator certificates issued per second by
// one manager's CA service (CA.IssueClientCertificate over mutual TLS on
// 127.0.0.1, the caller presenting an operator certificate), with 1 and 16
// concurrent callers on one connection. Keys and CSRs are made before the
// timed region. In the same run, the same CSRs are signed by pki's local
// signer alone (a throwaway root CA, the same callers) as the baseline:
// local-certs/s, and rpc/local is the fraction of it the service achieves.
func BenchmarkCertIssuance(b *testing.B) {
	for _, callers := range []int{1, 16} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			m := startSecManager(b, 0)
			conn, err := grpc.NewClient(m.Addr(), grpc.WithTransportCredentials(operatorTLS(b, m)))
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			ca := api.NewCAClient(conn)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			// Warm the connection (handshake) and the manager's cached signer.
			if _, err := ca.IssueClientCertificate(ctx, &api.IssueClientCertificateRequest{
				Csr: csrBatch(b, 1)[0], Name: "warmup"}, grpc.WaitForReady(true)); err != nil {
				b.Fatal(err)
			}
			csrs := csrBatch(b, b.N)

			b.ResetTimer()
			rpc := runCallers(b, b.N, callers, func(i int) error {
				resp, err := ca.IssueClientCertificate(ctx, &api.IssueClientCertificateRequest{
					Csr: csrs[i], Name: fmt.Sprintf("op-%d", i)})
				if err != nil {
					return fmt.Errorf("IssueClientCertificate %d: %w", i, err)
				}
				if len(resp.GetCertificatePem()) == 0 {
					return fmt.Errorf("IssueClientCertificate %d: empty certificate", i)
				}
				return nil
			})
			b.StopTimer()

			// Baseline: pki's local signer alone, same CSRs, same callers.
			root, err := pki.NewRootCA("benchcluster0000000000000", 0)
			if err != nil {
				b.Fatal(err)
			}
			signer, err := pki.NewLocalSigner(root, nil)
			if err != nil {
				b.Fatal(err)
			}
			local := runCallers(b, b.N, callers, func(i int) error {
				_, err := signer.Sign(ctx, pki.SignRequest{CSR: csrs[i], Validity: pki.DefaultCertValidity,
					Subject: pki.Subject{NodeID: fmt.Sprintf("op-%d", i), Role: pki.OUClient, ClusterID: "benchcluster0000000000000"}})
				return err
			})

			rpcRate := float64(b.N) / rpc.Seconds()
			localRate := float64(b.N) / local.Seconds()
			b.ReportMetric(rpcRate, "certs/s")
			b.ReportMetric(localRate, "local-certs/s")
			b.ReportMetric(rpcRate/localRate, "rpc/local")
		})
	}
}

// BenchmarkJoin100Workers measures the time for 100 worker nodes (fake
// runtimes, 1s heartbeats, real TCP and mutual TLS on 127.0.0.1) to join
// one manager, 16 Join calls at a time: join-ms runs from the first Join
// call to the 100th Join returning, ready-ms until all 100 are READY in
// ListNodes. Run it with -benchtime=1x.
func BenchmarkJoin100Workers(b *testing.B) {
	const workers, parallel = 100, 16
	var joinTimes, readyTimes []time.Duration
	for it := 0; it < b.N; it++ {
		b.StopTimer()
		joinT, readyT := join100(b, workers, parallel)
		joinTimes = append(joinTimes, joinT)
		readyTimes = append(readyTimes, readyT)
	}
	sort.Slice(joinTimes, func(i, j int) bool { return joinTimes[i] < joinTimes[j] })
	sort.Slice(readyTimes, func(i, j int) bool { return readyTimes[i] < readyTimes[j] })
	b.ReportMetric(float64(joinTimes[len(joinTimes)/2].Microseconds())/1000, "join-ms")
	b.ReportMetric(float64(readyTimes[len(readyTimes)/2].Microseconds())/1000, "ready-ms")
}

// join100 runs one round of BenchmarkJoin100Workers on a fresh manager and
// stops every node before returning.
func join100(b *testing.B, workers, parallel int) (joined, ready time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := b.TempDir()
	m, err := shoal.Init(ctx, shoal.Config{StateDir: dir + "/m", ListenAddr: "127.0.0.1:0", DisableAgent: true,
		Hostname: "m", HeartbeatPeriod: time.Second})
	if err != nil {
		b.Fatal(err)
	}
	nodes := make([]*shoal.Node, workers)
	defer func() {
		// Stop the workers in parallel, then the manager.
		var wg sync.WaitGroup
		for _, n := range nodes {
			if n == nil {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				sctx, scancel := context.WithTimeout(context.Background(), time.Minute)
				defer scancel()
				_ = n.Stop(sctx)
			}()
		}
		wg.Wait()
		sctx, scancel := context.WithTimeout(context.Background(), time.Minute)
		defer scancel()
		_ = m.Stop(sctx)
	}()
	info, err := m.Client().Cluster(ctx)
	if err != nil {
		b.Fatal(err)
	}
	cfgs := make([]shoal.Config, workers)
	for i := range cfgs {
		cfgs[i] = shoal.Config{StateDir: fmt.Sprintf("%s/w%03d", dir, i), ListenAddr: "127.0.0.1:0",
			Hostname: fmt.Sprintf("w%03d", i), Runtime: runtimetest.New(), HeartbeatPeriod: time.Second}
	}

	b.StartTimer()
	start := time.Now()
	var mu sync.Mutex
	var firstErr error
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i := range workers {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			n, err := shoal.Join(ctx, cfgs[i], m.Addr(), info.WorkerToken)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = fmt.Errorf("worker %d: %w", i, err)
				}
				return
			}
			nodes[i] = n
		}()
	}
	wg.Wait()
	joined = time.Since(start)
	if firstErr != nil {
		b.Fatal(firstErr)
	}

	// Until every worker is READY as the manager sees it.
	for {
		ns, err := m.Client().ListNodes(ctx)
		if err != nil {
			b.Fatal(err)
		}
		readyWorkers := 0
		for _, n := range ns {
			if n.Role == shoal.Worker && n.State == shoal.NodeReady {
				readyWorkers++
			}
		}
		if readyWorkers == workers {
			break
		}
		if ctx.Err() != nil {
			b.Fatalf("only %d of %d workers READY", readyWorkers, workers)
		}
		time.Sleep(5 * time.Millisecond)
	}
	ready = time.Since(start)
	b.StopTimer()
	return joined, ready
}

// plainCAServer serves the CA service (ca.NewServer over an
// in-memory state store holding a cluster with a root CA) without TLS on
// 127.0.0.1: the baseline for the handshake benchmark.
func plainCAServer(tb testing.TB) string {
	tb.Helper()
	root, err := pki.NewRootCA("plaincluster0000000000000", 0)
	if err != nil {
		tb.Fatal(err)
	}
	st := statetest.NewStore(state.Config{})
	err = st.Update(context.Background(), func(tx state.WriteTx) error {
		return tx.CreateCluster(&api.Cluster{Id: "plaincluster0000000000000",
			RootCa: &api.RootCA{CertPem: root.CertPEM, KeyPem: root.KeyPEM}})
	})
	if err != nil {
		tb.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	srv := grpc.NewServer()
	api.RegisterCAServer(srv, ca.NewServer(st, &ca.Signers{}))
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	tb.Cleanup(func() {
		srv.Stop()
		<-done
		st.Close()
	})
	return lis.Addr().String()
}

// BenchmarkHandshake measures new connections per second: each iteration
// opens a connection (grpc.NewClient), makes one CA.GetRootCA call with
// WaitForReady and closes it, once to a manager over mutual TLS with an
// operator certificate, and once to a plaintext gRPC server serving the same
// RPC on 127.0.0.1, interleaved so both share the machine's noise. It
// reports mtls-conns/s, plain-conns/s and their ratio (plain/mtls: how many
// times more a plaintext connection is cheaper).
func BenchmarkHandshake(b *testing.B) {
	m := startSecManager(b, 0)
	tlsCreds := operatorTLS(b, m)
	plainAddr := plainCAServer(b)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	once := func(addr string, creds credentials.TransportCredentials) (time.Duration, error) {
		t0 := time.Now()
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			return 0, err
		}
		resp, err := api.NewCAClient(conn).GetRootCA(ctx, &api.GetRootCARequest{}, grpc.WaitForReady(true))
		conn.Close()
		if err != nil {
			return 0, fmt.Errorf("GetRootCA on %s: %w", addr, err)
		}
		if len(resp.GetCertPem()) == 0 {
			return 0, fmt.Errorf("GetRootCA on %s: no root", addr)
		}
		return time.Since(t0), nil
	}
	plainCreds := insecure.NewCredentials()
	// Warm up both paths once.
	if _, err := once(m.Addr(), tlsCreds); err != nil {
		b.Fatal(err)
	}
	if _, err := once(plainAddr, plainCreds); err != nil {
		b.Fatal(err)
	}
	var mtlsTotal, plainTotal time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d, err := once(m.Addr(), tlsCreds)
		if err != nil {
			b.Fatal(err)
		}
		mtlsTotal += d
		d, err = once(plainAddr, plainCreds)
		if err != nil {
			b.Fatal(err)
		}
		plainTotal += d
	}
	b.StopTimer()
	mtls := float64(b.N) / mtlsTotal.Seconds()
	plain := float64(b.N) / plainTotal.Seconds()
	b.ReportMetric(mtls, "mtls-conns/s")
	b.ReportMetric(plain, "plain-conns/s")
	b.ReportMetric(plain/mtls, "plain/mtls")
}
