package dispatch

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/clock/clocktest"
	"github.com/shoalhq/shoal/runtime"
	"github.com/shoalhq/shoal/runtime/runtimetest"
)

const (
	hStarting  = api.HealthState_HEALTH_STATE_STARTING
	hHealthy   = api.HealthState_HEALTH_STATE_HEALTHY
	hUnhealthy = api.HealthState_HEALTH_STATE_UNHEALTHY
)

// scriptedProbe is a probe whose every answer the test gives: each call
// sends its context on calls and returns what the test sends on answers
// (or fails once its context ends).
type scriptedProbe struct {
	calls   chan context.Context
	answers chan bool
}

func newScriptedProbe() *scriptedProbe {
	return &scriptedProbe{calls: make(chan context.Context), answers: make(chan bool)}
}

func (p *scriptedProbe) probe(ctx context.Context) (bool, string) {
	select {
	case p.calls <- ctx:
	case <-ctx.Done():
		return false, "canceled before it ran"
	}
	select {
	case ok := <-p.answers:
		if ok {
			return true, "ok"
		}
		return false, "down"
	case <-ctx.Done():
		return false, "context ended"
	}
}

// checkerRun runs runHealthCheck on a fake clock, collecting its events.
type checkerRun struct {
	t      *testing.T
	clk    *clocktest.Fake
	probe  *scriptedProbe
	events chan healthEvent
	done   chan struct{}
	cancel context.CancelFunc
}

func startChecker(t *testing.T, hc healthCheck) *checkerRun {
	t.Helper()
	r := &checkerRun{t: t, clk: clocktest.NewFake(), probe: newScriptedProbe(),
		events: make(chan healthEvent, 100), done: make(chan struct{})}
	hc.probe = r.probe.probe
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() {
		defer close(r.done)
		runHealthCheck(ctx, r.clk, &hc, hStarting, func(ev healthEvent) { r.events <- ev })
	}()
	t.Cleanup(r.stop)
	ev := r.next()
	assert.Equal(t, healthEvent{health: hStarting, changed: true}, ev, "a check starts as starting")
	return r
}

func (r *checkerRun) stop() {
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(waitFor):
		r.t.Fatal("the checker did not end with its context")
	}
}

func (r *checkerRun) next() healthEvent {
	r.t.Helper()
	select {
	case ev := <-r.events:
		return ev
	case <-time.After(waitFor):
		r.t.Fatal("no health event")
		return healthEvent{}
	}
}

// step advances the clock by d, which must be the time to the next probe,
// answers it with ok and returns the event that follows.
func (r *checkerRun) step(d time.Duration, ok bool) healthEvent {
	r.t.Helper()
	r.clk.Advance(d)
	select {
	case <-r.probe.calls:
	case <-time.After(waitFor):
		r.t.Fatalf("no probe after %s", d)
	}
	r.probe.answers <- ok
	return r.next()
}

// quiet advances the clock by d and checks that the checker's timer did
// not fire (Advance fires due timers before it returns).
func (r *checkerRun) quiet(d time.Duration) {
	r.t.Helper()
	r.clk.Advance(d)
	assert.Equal(r.t, 1, r.clk.Timers(), "no probe is due within %s", d)
}

func TestHealthCheckerTransitions(t *testing.T) {
	hc := healthCheck{interval: 10 * time.Second, timeout: 5 * time.Second, retries: 3, startInterval: time.Second}
	r := startChecker(t, hc)
	// No start period: failures count from the first probe, at Interval.
	assert.Equal(t, healthEvent{health: hStarting, output: "down", failures: 1}, r.step(10*time.Second, false))
	assert.Equal(t, healthEvent{health: hHealthy, changed: true, output: "ok"}, r.step(10*time.Second, true))
	// Flapping within Retries leaves it healthy: failures reset on success.
	assert.Equal(t, healthEvent{health: hHealthy, output: "down", failures: 1}, r.step(10*time.Second, false))
	assert.Equal(t, healthEvent{health: hHealthy, output: "down", failures: 2}, r.step(10*time.Second, false))
	assert.Equal(t, healthEvent{health: hHealthy, output: "ok"}, r.step(10*time.Second, true))
	assert.Equal(t, healthEvent{health: hHealthy, output: "down", failures: 1}, r.step(10*time.Second, false))
	assert.Equal(t, healthEvent{health: hHealthy, output: "down", failures: 2}, r.step(10*time.Second, false))
	// The third consecutive failure makes it unhealthy, and the check ends.
	assert.Equal(t, healthEvent{health: hUnhealthy, changed: true, output: "down", failures: 3}, r.step(10*time.Second, false))
	select {
	case <-r.done:
	case <-time.After(waitFor):
		t.Fatal("the checker did not end once unhealthy")
	}
}

func TestHealthCheckerStartPeriod(t *testing.T) {
	hc := healthCheck{interval: 30 * time.Second, timeout: time.Second, retries: 1,
		startPeriod: 10 * time.Second, startInterval: 2 * time.Second}
	r := startChecker(t, hc)
	// Within the start period probes are StartInterval apart and failures
	// do not count, even with Retries 1.
	for i := range 3 { // at 2s, 4s, 6s
		ev := r.step(2*time.Second, false)
		assert.Equal(t, healthEvent{health: hStarting, output: "down"}, ev, "probe %d", i)
	}
	// At 8s, still within the start period, a success makes it healthy and
	// ends the start period: the next probe is Interval later.
	assert.Equal(t, healthEvent{health: hHealthy, changed: true, output: "ok"}, r.step(2*time.Second, true))
	r.quiet(30*time.Second - time.Millisecond)
	assert.Equal(t, healthEvent{health: hUnhealthy, changed: true, output: "down", failures: 1}, r.step(time.Millisecond, false))
}

func TestHealthCheckerStartPeriodOver(t *testing.T) {
	// A task still starting once the start period is over counts failures
	// and is probed at Interval.
	hc := healthCheck{interval: 5 * time.Second, timeout: time.Second, retries: 2,
		startPeriod: 3 * time.Second, startInterval: 2 * time.Second}
	r := startChecker(t, hc)
	assert.Equal(t, healthEvent{health: hStarting, output: "down"}, r.step(2*time.Second, false)) // at 2s: within
	assert.Equal(t, healthEvent{health: hStarting, output: "down", failures: 1}, r.step(2*time.Second, false))
	r.quiet(5*time.Second - time.Millisecond)
	assert.Equal(t, healthEvent{health: hUnhealthy, changed: true, output: "down", failures: 2}, r.step(time.Millisecond, false))
}

func TestHealthCheckerTimeout(t *testing.T) {
	hc := healthCheck{interval: 10 * time.Second, timeout: 3 * time.Second, retries: 1}
	r := startChecker(t, hc)
	r.clk.Advance(10 * time.Second)
	var pctx context.Context
	select {
	case pctx = <-r.probe.calls:
	case <-time.After(waitFor):
		t.Fatal("no probe")
	}
	r.clk.Advance(3 * time.Second) // the probe never answers
	ev := r.next()
	assert.Equal(t, hUnhealthy, ev.health)
	assert.Equal(t, "context ended (health check timed out after 3s)", ev.output)
	assert.ErrorIs(t, context.Cause(pctx), errProbeTimeout, "the probe's context ends with the timeout")
}

func TestHealthCheckerStopsWithContext(t *testing.T) {
	hc := healthCheck{interval: 10 * time.Second, timeout: time.Minute, retries: 1}
	r := startChecker(t, hc)
	r.clk.Advance(10 * time.Second)
	select {
	case <-r.probe.calls:
	case <-time.After(waitFor):
		t.Fatal("no probe")
	}
	r.stop() // while the probe runs: it is canceled, and nothing is reported
	select {
	case ev := <-r.events:
		t.Fatalf("an event after the context ended: %+v", ev)
	default:
	}
}

func TestResolveHealthCheck(t *testing.T) {
	rt := runtimetest.New()
	ctl, err := rt.Controller(runtime.Task{ID: "t1", Spec: runtime.Spec{Command: []string{"app"}}})
	require.NoError(t, err)
	eps := []runtime.Endpoint{{Target: 80, Protocol: "tcp", Addr: netip.MustParseAddrPort("0.0.0.0:40000")}}

	assert.Nil(t, resolveHealthCheck(nil, ctl, eps), "no spec and no image check")
	assert.Nil(t, resolveHealthCheck(&api.HealthCheck{Disable: true}, ctl, eps))

	hc := resolveHealthCheck(&api.HealthCheck{Command: []string{"check"}}, ctl, eps)
	require.NotNil(t, hc)
	assert.Equal(t, DefaultHealthInterval, hc.interval)
	assert.Equal(t, DefaultHealthTimeout, hc.timeout)
	assert.Equal(t, DefaultHealthRetries, hc.retries)
	assert.Equal(t, DefaultHealthStartInterval, hc.startInterval)
	assert.Zero(t, hc.startPeriod)

	hc = resolveHealthCheck(&api.HealthCheck{Tcp: &api.TCPCheck{Port: 80}, Interval: int64(time.Second), Timeout: int64(2 * time.Second),
		Retries: 7, StartPeriod: int64(3 * time.Second), StartInterval: int64(4 * time.Second)}, ctl, eps)
	require.NotNil(t, hc)
	assert.Equal(t, healthCheck{interval: time.Second, timeout: 2 * time.Second, retries: 7, startPeriod: 3 * time.Second,
		startInterval: 4 * time.Second}, healthCheck{interval: hc.interval, timeout: hc.timeout, retries: hc.retries,
		startPeriod: hc.startPeriod, startInterval: hc.startInterval})

	// A port without a runtime endpoint fails every probe, saying why.
	hc = resolveHealthCheck(&api.HealthCheck{Tcp: &api.TCPCheck{Port: 81}}, ctl, eps)
	ok, out := hc.probe(context.Background())
	assert.False(t, ok)
	assert.Equal(t, "the runtime reported no endpoint for target port 81/tcp", out)

	// The image's HEALTHCHECK: CMD, CMD-SHELL, NONE; the spec wins, and
	// Disable switches it off.
	img := func(test ...string) runtime.Controller {
		r := runtimetest.New()
		r.SetBehavior(func(runtime.Task) runtimetest.Behavior {
			return runtimetest.Behavior{ImageHealthcheck: &runtime.HealthConfig{Test: test, Interval: time.Second, Retries: 2}}
		})
		c, err := r.Controller(runtime.Task{ID: "t", Spec: runtime.Spec{Command: []string{"app"}}})
		require.NoError(t, err)
		require.NoError(t, c.Prepare(context.Background()))
		return c
	}
	hc = resolveHealthCheck(nil, img("CMD", "check", "-q"), nil)
	require.NotNil(t, hc)
	assert.Equal(t, time.Second, hc.interval)
	assert.Equal(t, 2, hc.retries)
	assert.Equal(t, DefaultHealthTimeout, hc.timeout)
	assert.NotNil(t, resolveHealthCheck(nil, img("CMD-SHELL", "check || exit 1"), nil))
	assert.Nil(t, resolveHealthCheck(nil, img("NONE"), nil))
	assert.Nil(t, resolveHealthCheck(nil, img(), nil))
	assert.Nil(t, resolveHealthCheck(&api.HealthCheck{Disable: true}, img("CMD", "check"), nil))
	hc = resolveHealthCheck(&api.HealthCheck{Command: []string{"mine"}, Retries: 9}, img("CMD", "check"), nil)
	assert.Equal(t, 9, hc.retries, "the spec's check wins over the image's")
}

func TestCommandProbe(t *testing.T) {
	rt := runtimetest.New()
	var got []string
	rt.SetBehavior(func(runtime.Task) runtimetest.Behavior {
		return runtimetest.Behavior{Exec: func(_ context.Context, req runtime.ExecRequest) (int, error) {
			got = req.Command
			if req.Command[0] == "big" {
				_, _ = req.Stdout.Write([]byte(strings.Repeat("x", 3*HealthOutputLimit)))
				return 1, nil
			}
			_, _ = req.Stdout.Write([]byte("out "))
			_, _ = req.Stderr.Write([]byte("err"))
			if req.Command[0] == "fail" {
				return 2, nil
			}
			return 0, nil
		}}
	})
	ctl, err := rt.Controller(runtime.Task{ID: "t1", Spec: runtime.Spec{Command: []string{"app"}}})
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, ctl.Prepare(ctx))
	require.NoError(t, ctl.Start(ctx))

	ok, out := commandProbe(ctl, []string{"pass", "-v"})(ctx)
	assert.True(t, ok)
	assert.Equal(t, "out err", out)
	assert.Equal(t, []string{"pass", "-v"}, got)
	ok, out = commandProbe(ctl, []string{"fail"})(ctx)
	assert.False(t, ok)
	assert.Equal(t, "out err (exit code 2)", out)
	ok, out = commandProbe(ctl, []string{"big"})(ctx)
	assert.False(t, ok)
	assert.Len(t, out, HealthOutputLimit, "the output is bounded")
	assert.True(t, strings.HasSuffix(out, " (exit code 1)"))

	require.NoError(t, rt.Exit("t1", 0))
	ok, out = commandProbe(ctl, []string{"pass"})(ctx)
	assert.False(t, ok)
	assert.Contains(t, out, "running the check failed")

	ok, out = commandProbe(noExec{}, []string{"pass"})(ctx)
	assert.False(t, ok)
	assert.Contains(t, out, "no runtime.Execer")
}

// noExec is a controller without the Execer capability.
type noExec struct{ runtime.Controller }

func TestHTTPProbe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
			fmt.Fprint(w, "fine")
		case "/moved":
			http.Redirect(w, r, "/elsewhere", http.StatusFound)
		case "/big":
			w.WriteHeader(http.StatusInternalServerError)
			fmt.Fprint(w, strings.Repeat("y", 3*HealthOutputLimit))
		case "/slow":
			<-r.Context().Done()
		default:
			http.Error(w, "broken", http.StatusServiceUnavailable)
		}
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	addr := netip.MustParseAddrPort(ln.Addr().String())
	ctx := context.Background()

	ok, out := httpProbe(addr, "/ok", 200, 399)(ctx)
	assert.True(t, ok)
	assert.Equal(t, "GET http://"+addr.String()+"/ok: 200 OK\nfine", out)
	ok, out = httpProbe(addr, "/moved", 200, 399)(ctx)
	assert.True(t, ok, "a redirect is not followed: 302 is in range")
	assert.Contains(t, out, "302 Found")
	ok, _ = httpProbe(addr, "/moved", 200, 299)(ctx)
	assert.False(t, ok)
	ok, out = httpProbe(addr, "/down", 200, 399)(ctx)
	assert.False(t, ok)
	assert.Equal(t, "GET http://"+addr.String()+"/down: 503 Service Unavailable (healthy: 200-399)\nbroken\n", out)
	ok, _ = httpProbe(addr, "/down", 503, 503)(ctx)
	assert.True(t, ok, "the range says what is healthy")
	ok, out = httpProbe(addr, "/big", 200, 399)(ctx)
	assert.False(t, ok)
	assert.Len(t, out, HealthOutputLimit)
	ok, out = httpProbe(addr, "", 200, 399)(ctx)
	assert.False(t, ok)
	assert.Contains(t, out, "GET http://"+addr.String()+"/: 503", `"" is "/"`)

	sctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	ok, out = httpProbe(addr, "/slow", 200, 399)(sctx)
	assert.False(t, ok)
	assert.Contains(t, out, "context deadline exceeded")

	require.NoError(t, srv.Close())
	ok, out = httpProbe(addr, "/ok", 200, 399)(ctx)
	assert.False(t, ok)
	assert.Contains(t, out, "connection refused")
}

func TestTCPProbe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := netip.MustParseAddrPort(ln.Addr().String())
	ok, out := tcpProbe(addr)(context.Background())
	assert.True(t, ok)
	assert.Equal(t, "connected to "+addr.String(), out)
	require.NoError(t, ln.Close())
	ok, out = tcpProbe(addr)(context.Background())
	assert.False(t, ok)
	assert.Contains(t, out, "connection refused")
}

func TestProbeAddr(t *testing.T) {
	eps := []runtime.Endpoint{
		{Target: 53, Protocol: "udp", Addr: netip.MustParseAddrPort("0.0.0.0:40001")},
		{Target: 53, Protocol: "tcp", Addr: netip.MustParseAddrPort("0.0.0.0:40002")},
		{Target: 80, Protocol: "tcp", Addr: netip.MustParseAddrPort("10.0.0.7:80")},
		{Target: 81, Addr: netip.MustParseAddrPort("[::]:40003")},
	}
	assert.Equal(t, "127.0.0.1:40002", probeAddr(eps, 53).String(), "the TCP endpoint, on loopback")
	assert.Equal(t, "10.0.0.7:80", probeAddr(eps, 80).String(), "a task's own address as it is")
	assert.Equal(t, "[::1]:40003", probeAddr(eps, 81).String())
	assert.False(t, probeAddr(eps, 82).IsValid())
}

func TestLimitedBuffer(t *testing.T) {
	var b limitedBuffer
	n, err := b.Write([]byte(strings.Repeat("a", HealthOutputLimit-1)))
	require.NoError(t, err)
	assert.Equal(t, HealthOutputLimit-1, n)
	n, err = b.Write([]byte("bcd"))
	require.NoError(t, err)
	assert.Equal(t, 3, n, "writes past the limit are discarded, not refused")
	assert.Equal(t, strings.Repeat("a", HealthOutputLimit-1)+"b", b.String())
}

// BenchmarkHealthProbe is the agent's cost of one probe of a command check
// on the fake runtime (its goroutine, timeout timer and output buffer) and
// of one TCP connect probe to a loopback listener.
func BenchmarkHealthProbe(b *testing.B) {
	b.Run("command", func(b *testing.B) {
		rt := runtimetest.New()
		rt.SetBehavior(func(runtime.Task) runtimetest.Behavior {
			return runtimetest.Behavior{Exec: func(_ context.Context, req runtime.ExecRequest) (int, error) {
				_, _ = req.Stdout.Write([]byte("ok"))
				return 0, nil
			}}
		})
		ctl, err := rt.Controller(runtime.Task{ID: "t1", Spec: runtime.Spec{Command: []string{"app"}}})
		require.NoError(b, err)
		require.NoError(b, ctl.Prepare(context.Background()))
		require.NoError(b, ctl.Start(context.Background()))
		hc := &healthCheck{probe: commandProbe(ctl, []string{"check"}), timeout: time.Minute}
		b.ReportAllocs()
		for b.Loop() {
			if ok, _ := runProbe(context.Background(), RealClock(), hc); !ok {
				b.Fatal("probe failed")
			}
		}
	})
	b.Run("tcp", func(b *testing.B) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(b, err)
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				_ = c.Close()
			}
		}()
		hc := &healthCheck{probe: tcpProbe(netip.MustParseAddrPort(ln.Addr().String())), timeout: time.Minute}
		b.ReportAllocs()
		for b.Loop() {
			if ok, out := runProbe(context.Background(), RealClock(), hc); !ok {
				b.Fatal(out)
			}
		}
	})
}

// FuzzImageHealthCheck: any HEALTHCHECK an image declares (its config is
// the image author's input) gives no check or a check with every timing
// positive and a command that is a suffix of the test or a shell command.
func FuzzImageHealthCheck(f *testing.F) {
	f.Add("CMD", "check", "-q", int64(0), 0)
	f.Add("CMD-SHELL", "curl -f localhost || exit 1", "", int64(time.Second), 3)
	f.Add("NONE", "", "", int64(-1), -1)
	f.Add("", "x", "y", int64(5), 1)
	rt := runtimetest.New()
	ctl, err := rt.Controller(runtime.Task{ID: "t1", Spec: runtime.Spec{Command: []string{"app"}}})
	require.NoError(f, err)
	f.Fuzz(func(t *testing.T, kind, a, b string, d int64, retries int) {
		test := []string{kind}
		if a != "" {
			test = append(test, a)
		}
		if b != "" {
			test = append(test, b)
		}
		hc := imageHealthCheck(&runtime.HealthConfig{Test: test, Interval: time.Duration(d), Timeout: time.Duration(d),
			StartPeriod: time.Duration(d), StartInterval: time.Duration(d), Retries: retries}, ctl)
		if hc == nil {
			return
		}
		assert.Contains(t, []string{"CMD", "CMD-SHELL"}, kind)
		assert.Positive(t, hc.interval)
		assert.Positive(t, hc.timeout)
		assert.Positive(t, hc.startInterval)
		assert.GreaterOrEqual(t, hc.startPeriod, time.Duration(0))
		assert.Positive(t, hc.retries)
		assert.NotNil(t, hc.probe)
	})
}
