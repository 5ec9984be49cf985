package nft

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/ingress"
)

// Published ports of the benchmarks, all balanced to backend1 only, so the
// direct path (client to backend1, forwarded by the node without NAT) and
// the balanced path (client to the node's published port, DNATed and
// masqueraded to backend1) differ only by the balancer's work.
var (
	benchSink = ingress.Port{Service: "bench", Protocol: ingress.TCP, Published: 30082}
	benchHTTP = ingress.Port{Service: "bench", Protocol: ingress.TCP, Published: 30081}
)

func benchLab(b *testing.B) *lab {
	l := newLab(b)
	l.startBackends()
	bal, err := New(Config{TableName: "shoal-bench", NetNS: l.path("node")})
	require.NoError(b, err)
	b.Cleanup(func() { _ = bal.Stop(context.Background()) })
	require.NoError(b, bal.Apply(context.Background(), ingress.Table{
		benchSink: {ep("s", fmt.Sprintf("%s:%d", backend1Addr, sinkPort))},
		benchHTTP: {ep("h", fmt.Sprintf("%s:%d", backend1Addr, httpPort))},
	}))
	return l
}

// bulk sends size bytes over one TCP connection from the client to addr's
// sink and returns how long it took until the sink confirmed the count.
func (l *lab) bulk(addr string, buf []byte, size int64) (time.Duration, error) {
	start := time.Now()
	c, err := l.dial("client", "tcp4", addr, 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	for sent := int64(0); sent < size; sent += int64(len(buf)) {
		if _, err := c.Write(buf); err != nil {
			return 0, err
		}
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return 0, err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return 0, err
	}
	if n, _ := strconv.ParseInt(strings.TrimSpace(line), 10, 64); n != size {
		return 0, fmt.Errorf("sink got %s bytes, want %d", strings.TrimSpace(line), size)
	}
	return time.Since(start), nil
}

// BenchmarkNamespaceBulk compares bulk TCP throughput through the node's
// DNAT with the direct path, alternating the two in each iteration.
func BenchmarkNamespaceBulk(b *testing.B) {
	l := benchLab(b)
	const size = 64 << 20
	buf := make([]byte, 256<<10)
	direct := fmt.Sprintf("%s:%d", backend1Addr, sinkPort)
	balanced := fmt.Sprintf("%s:%d", nodeAddr, benchSink.Published)
	var (
		tDirect, tNFT time.Duration
		n             int
	)
	b.SetBytes(2 * size)
	// Warm up both paths (ARP, conntrack, caches) before measuring.
	for _, addr := range []string{direct, balanced} {
		_, err := l.bulk(addr, buf, size)
		require.NoError(b, err)
	}
	for ; b.Loop(); n++ {
		// Alternate which path goes first, so neither always runs warm.
		order := []string{direct, balanced}
		if n%2 == 1 {
			slices.Reverse(order)
		}
		for _, addr := range order {
			d, err := l.bulk(addr, buf, size)
			require.NoError(b, err)
			if addr == direct {
				tDirect += d
			} else {
				tNFT += d
			}
		}
	}
	mbps := func(d time.Duration) float64 { return float64(n) * size / d.Seconds() / 1e6 }
	b.ReportMetric(mbps(tDirect), "direct-MB/s")
	b.ReportMetric(mbps(tNFT), "nft-MB/s")
	b.ReportMetric(mbps(tNFT)/mbps(tDirect), "nft/direct")
}

// BenchmarkNamespaceConnRate compares small HTTP requests, each on a new
// connection, through the node's DNAT and directly: requests (so new
// connections) per second and p99 latency, from 4 concurrent clients. Each
// iteration is one round of 200 requests per path, the paths alternating.
func BenchmarkNamespaceConnRate(b *testing.B) {
	l := benchLab(b)
	direct := fmt.Sprintf("http://%s:%d/", backend1Addr, httpPort)
	balanced := fmt.Sprintf("http://%s:%d/", nodeAddr, benchHTTP.Published)
	const perRound, workers = 200, 4
	hc := l.httpClient("client", false)
	defer hc.CloseIdleConnections()

	round := func(url string) (time.Duration, []time.Duration) {
		lat := make([]time.Duration, perRound)
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		start := time.Now()
		for w := range workers {
			wg.Go(func() {
				for i := w; i < perRound; i += workers {
					t0 := time.Now()
					resp, err := hc.Get(url)
					if err != nil {
						errs <- err
						return
					}
					body, err := io.ReadAll(resp.Body)
					resp.Body.Close()
					if err != nil || string(body) != "backend1" {
						errs <- fmt.Errorf("answer %q: %v", body, err)
						return
					}
					lat[i] = time.Since(t0)
				}
			})
		}
		wg.Wait()
		elapsed := time.Since(start)
		close(errs)
		for err := range errs {
			require.NoError(b, err)
		}
		return elapsed, lat
	}

	var (
		tDirect, tNFT     time.Duration
		latDirect, latNFT []time.Duration
		n                 int
	)
	// Warm up both paths (ARP, conntrack, caches) before measuring.
	round(direct)
	round(balanced)
	for ; b.Loop(); n++ {
		if n%2 == 0 {
			d, lat := round(direct)
			tDirect, latDirect = tDirect+d, append(latDirect, lat...)
			d, lat = round(balanced)
			tNFT, latNFT = tNFT+d, append(latNFT, lat...)
		} else {
			d, lat := round(balanced)
			tNFT, latNFT = tNFT+d, append(latNFT, lat...)
			d, lat = round(direct)
			tDirect, latDirect = tDirect+d, append(latDirect, lat...)
		}
	}
	rate := func(d time.Duration) float64 { return float64(n*perRound) / d.Seconds() }
	b.ReportMetric(rate(tDirect), "direct-conn/s")
	b.ReportMetric(rate(tNFT), "nft-conn/s")
	b.ReportMetric(rate(tNFT)/rate(tDirect), "nft/direct-rate")
	pDirect, pNFT := p99(latDirect), p99(latNFT)
	b.ReportMetric(float64(pDirect.Microseconds()), "direct-p99-µs")
	b.ReportMetric(float64(pNFT.Microseconds()), "nft-p99-µs")
	b.ReportMetric(float64(pNFT)/float64(pDirect), "nft/direct-p99")
}

func p99(lat []time.Duration) time.Duration {
	s := slices.Clone(lat)
	slices.Sort(s)
	return s[(len(s)*99)/100]
}
