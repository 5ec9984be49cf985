package ingress

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The benchmarks measure the balancer against the same backend dialed
// directly, in the same run, and report both figures and their ratio. The
// issue's targets: bulk throughput ≥ 80% of direct, new connections per
// second ≥ 50% of direct; latency is reported for comparison.

// sinkBackend reads each connection to EOF and answers with the byte count
// (8 bytes, big endian).
func startSinkBackend(b *testing.B) netip.AddrPort {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(b, err)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				buf := make([]byte, 256<<10)
				var n uint64
				for {
					m, err := c.Read(buf)
					n += uint64(m)
					if err != nil {
						break
					}
				}
				_, _ = c.Write(binary.BigEndian.AppendUint64(nil, n))
			}()
		}
	}()
	b.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// sendBulk writes size bytes to addr and waits for the backend's count.
func sendBulk(b *testing.B, addr netip.AddrPort, chunk []byte, size int) time.Duration {
	start := time.Now()
	c, err := net.Dial("tcp", addr.String())
	require.NoError(b, err)
	defer c.Close()
	for sent := 0; sent < size; sent += len(chunk) {
		_, err := c.Write(chunk)
		require.NoError(b, err)
	}
	require.NoError(b, c.(*net.TCPConn).CloseWrite())
	var got [8]byte
	_, err = io.ReadFull(c, got[:])
	require.NoError(b, err)
	require.Equal(b, uint64(size), binary.BigEndian.Uint64(got[:]))
	return time.Since(start)
}

func BenchmarkTCPThroughput(b *testing.B) {
	const size = 256 << 20
	backend := startSinkBackend(b)
	u := newBenchBalancer(b)
	port := freePort(b, "tcp")
	applyBench(b, u, Table{{Service: "bulk", Protocol: TCP, Published: port}: {{Task: "t", Addr: backend}}})
	through := netip.AddrPortFrom(loopback, port)
	chunk := make([]byte, 1<<20)

	var direct, balanced time.Duration
	for b.Loop() {
		direct += sendBulk(b, backend, chunk, size)
		balanced += sendBulk(b, through, chunk, size)
	}
	mbs := func(d time.Duration) float64 { return float64(b.N) * size / 1e6 / d.Seconds() }
	b.ReportMetric(mbs(direct), "direct-MB/s")
	b.ReportMetric(mbs(balanced), "balanced-MB/s")
	b.ReportMetric(mbs(balanced)/mbs(direct), "ratio")
}

// startGreeterBackend writes one byte to each connection and closes it
// first, so TIME_WAIT stays on the server side and the benchmark does not
// run out of ephemeral ports.
func startGreeterBackend(b *testing.B) netip.AddrPort {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(b, err)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte{'!'})
			_ = c.Close()
		}
	}()
	b.Cleanup(func() { _ = ln.Close(); <-done })
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// connectOnce dials addr and expects "!" then EOF. It may run on any
// goroutine, so it panics instead of calling b.FailNow.
func connectOnce(b *testing.B, addr string) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		panic(err)
	}
	defer c.Close()
	buf := make([]byte, 8)
	n, err := io.ReadAtLeast(c, buf, 1)
	if err != nil || string(buf[:n]) != "!" {
		panic(fmt.Sprintf("read %q, %v", buf[:n], err))
	}
	if _, err := c.Read(buf); !errors.Is(err, io.EOF) {
		panic(fmt.Sprintf("want EOF, got %v", err))
	}
}

// BenchmarkTCPConnect measures new connections per second: "serial" is one
// client at a time (latency-bound), "parallel" is 8 concurrent clients
// (capacity-bound).
func BenchmarkTCPConnect(b *testing.B) {
	for _, bc := range []struct {
		name    string
		clients int
	}{{"serial", 1}, {"parallel", 8}} {
		b.Run(bc.name, func(b *testing.B) { benchConnect(b, bc.clients) })
	}
}

func benchConnect(b *testing.B, clients int) {
	const perClient = 40
	backend := startGreeterBackend(b)
	u := newBenchBalancer(b)
	port := freePort(b, "tcp")
	applyBench(b, u, Table{{Service: "conn", Protocol: TCP, Published: port}: {{Task: "t", Addr: backend}}})
	direct, through := backend.String(), netip.AddrPortFrom(loopback, port).String()

	burst := func(addr string) time.Duration {
		start := time.Now()
		var wg sync.WaitGroup
		for range clients {
			wg.Go(func() {
				for range perClient {
					connectOnce(b, addr)
				}
			})
		}
		wg.Wait()
		return time.Since(start)
	}
	var dd, bd time.Duration
	for b.Loop() {
		dd += burst(direct)
		bd += burst(through)
	}
	rate := func(d time.Duration) float64 { return float64(b.N*clients*perClient) / d.Seconds() }
	b.ReportMetric(rate(dd), "direct-conn/s")
	b.ReportMetric(rate(bd), "balanced-conn/s")
	b.ReportMetric(rate(bd)/rate(dd), "ratio")
}

func BenchmarkHTTPLatency(b *testing.B) {
	const requests = 1000
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(b, err)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("hello"))
	})}
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(ln) }()
	b.Cleanup(func() { _ = srv.Close(); <-served })
	backend := ln.Addr().(*net.TCPAddr).AddrPort()

	u := newBenchBalancer(b)
	port := freePort(b, "tcp")
	applyBench(b, u, Table{{Service: "http", Protocol: TCP, Published: port}: {{Task: "t", Addr: backend}}})

	tr := &http.Transport{MaxIdleConnsPerHost: 4}
	b.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr}
	get := func(url string) time.Duration {
		start := time.Now()
		resp, err := client.Get(url)
		require.NoError(b, err)
		body, err := io.ReadAll(resp.Body)
		require.NoError(b, err)
		require.NoError(b, resp.Body.Close())
		require.Equal(b, "hello", string(body))
		return time.Since(start)
	}
	directURL := "http://" + backend.String() + "/"
	throughURL := "http://" + netip.AddrPortFrom(loopback, port).String() + "/"

	var direct, balanced []time.Duration
	for b.Loop() {
		for range requests {
			direct = append(direct, get(directURL))
			balanced = append(balanced, get(throughURL))
		}
	}
	pct := func(d []time.Duration, p float64) float64 {
		s := slices.Clone(d)
		slices.Sort(s)
		return float64(s[int(p*float64(len(s)-1))].Microseconds())
	}
	b.ReportMetric(pct(direct, 0.50), "direct-p50-µs")
	b.ReportMetric(pct(direct, 0.99), "direct-p99-µs")
	b.ReportMetric(pct(balanced, 0.50), "balanced-p50-µs")
	b.ReportMetric(pct(balanced, 0.99), "balanced-p99-µs")
	b.ReportMetric(pct(balanced, 0.50)/pct(direct, 0.50), "p50-ratio")
	b.ReportMetric(pct(balanced, 0.99)/pct(direct, 0.99), "p99-ratio")
}

func newBenchBalancer(b *testing.B) *Userspace {
	cfg := DefaultConfig()
	cfg.ListenAddr = loopback
	u, err := New(cfg)
	require.NoError(b, err)
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
		defer cancel()
		require.NoError(b, u.Stop(ctx))
	})
	return u
}

func applyBench(b *testing.B, u *Userspace, t Table) {
	require.NoError(b, u.Apply(b.Context(), t))
}
