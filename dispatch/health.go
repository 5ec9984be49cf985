package dispatch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/runtime"
)

// Health check defaults, docker's: a zero field of a check means these.
const (
	DefaultHealthInterval      = 30 * time.Second
	DefaultHealthTimeout       = 30 * time.Second
	DefaultHealthRetries       = 3
	DefaultHealthStartInterval = 5 * time.Second
)

// HealthOutputLimit bounds the output of one probe kept in a task's status.
const HealthOutputLimit = 4096

// healthProbe runs one probe; ok reports success and output says what the
// probe saw. It must return promptly once ctx ends.
type healthProbe func(ctx context.Context) (ok bool, output string)

// healthCheck is a task's check resolved for its node: the probe and the
// timings with their defaults applied.
type healthCheck struct {
	probe         healthProbe
	interval      time.Duration
	timeout       time.Duration
	startPeriod   time.Duration
	startInterval time.Duration
	retries       int
}

// resolveHealthCheck returns the check of a started task: its spec's
// (spec), else its image's (ctl's runtime.ImageHealthchecker) unless spec
// disables it; nil when the task has none. eps are the task's endpoints as
// its runtime reported them.
func resolveHealthCheck(spec *api.HealthCheck, ctl runtime.Controller, eps []runtime.Endpoint) *healthCheck {
	if spec == nil {
		if ih, ok := ctl.(runtime.ImageHealthchecker); ok {
			return imageHealthCheck(ih.ImageHealthcheck(), ctl)
		}
		return nil
	}
	if spec.GetDisable() {
		return nil
	}
	hc := &healthCheck{
		interval:      durationOr(spec.GetInterval(), DefaultHealthInterval),
		timeout:       durationOr(spec.GetTimeout(), DefaultHealthTimeout),
		startPeriod:   max(time.Duration(spec.GetStartPeriod()), 0),
		startInterval: durationOr(spec.GetStartInterval(), DefaultHealthStartInterval),
		retries:       DefaultHealthRetries,
	}
	if n := spec.GetRetries(); n > 0 {
		hc.retries = int(n)
	}
	switch {
	case len(spec.GetCommand()) > 0:
		hc.probe = commandProbe(ctl, spec.GetCommand())
	case spec.GetHttp() != nil:
		h := spec.GetHttp()
		lo, hi := int(h.GetStatusMin()), int(h.GetStatusMax())
		if lo == 0 && hi == 0 {
			lo, hi = 200, 399
		}
		if addr := probeAddr(eps, h.GetPort()); addr.IsValid() {
			hc.probe = httpProbe(addr, h.GetPath(), lo, hi)
		} else {
			hc.probe = noEndpoint(h.GetPort())
		}
	case spec.GetTcp() != nil:
		if addr := probeAddr(eps, spec.GetTcp().GetPort()); addr.IsValid() {
			hc.probe = tcpProbe(addr)
		} else {
			hc.probe = noEndpoint(spec.GetTcp().GetPort())
		}
	default:
		return nil // the manager refuses a check without a test
	}
	return hc
}

// imageHealthCheck turns an image's HEALTHCHECK into a check: CMD runs its
// arguments, CMD-SHELL its command with /bin/sh -c; NONE, an empty or an
// unknown test means no check.
func imageHealthCheck(h *runtime.HealthConfig, ctl runtime.Controller) *healthCheck {
	if h == nil || len(h.Test) == 0 {
		return nil
	}
	var argv []string
	switch h.Test[0] {
	case "CMD":
		argv = h.Test[1:]
	case "CMD-SHELL":
		if len(h.Test) > 1 {
			argv = []string{"/bin/sh", "-c", strings.Join(h.Test[1:], " ")}
		}
	}
	if len(argv) == 0 {
		return nil
	}
	hc := &healthCheck{
		probe:         commandProbe(ctl, argv),
		interval:      durationOr(int64(h.Interval), DefaultHealthInterval),
		timeout:       durationOr(int64(h.Timeout), DefaultHealthTimeout),
		startPeriod:   max(h.StartPeriod, 0),
		startInterval: durationOr(int64(h.StartInterval), DefaultHealthStartInterval),
		retries:       DefaultHealthRetries,
	}
	if h.Retries > 0 {
		hc.retries = h.Retries
	}
	return hc
}

func durationOr(ns int64, def time.Duration) time.Duration {
	if ns <= 0 {
		return def
	}
	return time.Duration(ns)
}

// probeAddr returns where a probe of target port reaches the task: the
// runtime's endpoint of that TCP target, an unspecified address replaced
// by the loopback address (the task listens on its node's addresses, and
// the agent runs on that node). The zero AddrPort means there is none.
func probeAddr(eps []runtime.Endpoint, port uint32) netip.AddrPort {
	for _, e := range eps {
		if uint32(e.Target) != port || (e.Protocol != "" && e.Protocol != runtime.ProtocolTCP) || e.Addr.Port() == 0 {
			continue
		}
		ip := e.Addr.Addr()
		switch {
		case !ip.IsValid() || ip == netip.IPv4Unspecified():
			ip = netip.AddrFrom4([4]byte{127, 0, 0, 1})
		case ip.IsUnspecified():
			ip = netip.IPv6Loopback()
		}
		return netip.AddrPortFrom(ip, e.Addr.Port())
	}
	return netip.AddrPort{}
}

func noEndpoint(port uint32) healthProbe {
	return func(context.Context) (bool, string) {
		return false, fmt.Sprintf("the runtime reported no endpoint for target port %d/tcp", port)
	}
}

// commandProbe runs argv in the task through its runtime's Execer; exit
// code 0 is healthy. The output is the command's stdout and stderr,
// bounded.
func commandProbe(ctl runtime.Controller, argv []string) healthProbe {
	ex, ok := ctl.(runtime.Execer)
	if !ok {
		return func(context.Context) (bool, string) {
			return false, "the task's runtime cannot run a command in a task (no runtime.Execer)"
		}
	}
	argv = append([]string(nil), argv...)
	return func(ctx context.Context) (bool, string) {
		var out limitedBuffer
		code, err := ex.Exec(ctx, runtime.ExecRequest{Command: argv, Stdout: &out, Stderr: &out})
		switch {
		case err != nil:
			return false, truncateWith(out.String(), fmt.Sprintf("(running the check failed: %v)", err))
		case code != 0:
			return false, truncateWith(out.String(), fmt.Sprintf("(exit code %d)", code))
		}
		return true, out.String()
	}
}

// httpProbe GETs path at addr; a status in [lo, hi] is healthy. Each probe
// has a connection of its own, closed when it ends.
func httpProbe(addr netip.AddrPort, path string, lo, hi int) healthProbe {
	if path == "" {
		path = "/"
	}
	url := "http://" + addr.String() + path
	return func(ctx context.Context) (bool, string) {
		tr := &http.Transport{DisableKeepAlives: true, Proxy: nil}
		defer tr.CloseIdleConnections()
		client := &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse // a redirect is an answer: its status is what counts
		}}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false, truncate(err.Error(), HealthOutputLimit)
		}
		req.Header.Set("User-Agent", "shoal-health-check")
		resp, err := client.Do(req)
		if err != nil {
			return false, truncate(err.Error(), HealthOutputLimit)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, HealthOutputLimit))
		ok := resp.StatusCode >= lo && resp.StatusCode <= hi
		head := "GET " + url + ": " + resp.Status
		if !ok {
			head += " (healthy: " + strconv.Itoa(lo) + "-" + strconv.Itoa(hi) + ")"
		}
		if len(body) > 0 {
			head += "\n"
		}
		return ok, truncate(head+string(body), HealthOutputLimit)
	}
}

// tcpProbe connects to addr; a connection accepted is healthy.
func tcpProbe(addr netip.AddrPort) healthProbe {
	return func(ctx context.Context) (bool, string) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr.String())
		if err != nil {
			return false, truncate(err.Error(), HealthOutputLimit)
		}
		_ = c.Close()
		return true, "connected to " + addr.String()
	}
}

// statusNewer reports whether status a is a later report than b: a more
// advanced state, or the same state with a later health change.
func statusNewer(a, b *api.TaskStatus) bool {
	if a.GetState() != b.GetState() {
		return a.GetState() > b.GetState()
	}
	return a.GetHealthSeq() > b.GetHealthSeq()
}

// healthEvent is the outcome of one step of a check: the health after it,
// whether that changed, the probe's output, and the consecutive failures
// that count.
type healthEvent struct {
	health   api.HealthState
	changed  bool
	output   string
	failures int
}

// runHealthCheck runs hc on clk until ctx ends or the task turns unhealthy
// (the last event). The task's health is initial at first: starting, or
// healthy for a task that was healthy when an earlier agent left it. A
// starting task turns healthy with the first success; its failures within
// the start period (from the call) do not count. A success resets the
// failures; retries consecutive failures make the task unhealthy. Probes
// are startInterval apart while the task starts within the start period,
// interval apart otherwise; each is bounded by timeout. on is called from
// this goroutine once at the start (initial) and after every probe, once
// the next probe is scheduled; it must not block long.
func runHealthCheck(ctx context.Context, clk Clock, hc *healthCheck, initial api.HealthState, on func(healthEvent)) {
	start := clk.Now()
	health := initial
	inStart := func() bool {
		return health == api.HealthState_HEALTH_STATE_STARTING && clk.Now().Sub(start) < hc.startPeriod
	}
	next := func() time.Duration {
		if inStart() {
			return hc.startInterval
		}
		return hc.interval
	}
	t := clk.NewTimer(next())
	defer t.Stop()
	on(healthEvent{health: health, changed: true})
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
		ok, out := runProbe(ctx, clk, hc)
		if ctx.Err() != nil {
			return
		}
		ev := healthEvent{health: health, output: out}
		switch {
		case ok:
			failures = 0
			if health != api.HealthState_HEALTH_STATE_HEALTHY {
				health, ev.changed = api.HealthState_HEALTH_STATE_HEALTHY, true
			}
		case inStart():
			// A failure within the start period does not count.
		default:
			failures++
			if failures >= hc.retries {
				ev.health, ev.changed, ev.failures = api.HealthState_HEALTH_STATE_UNHEALTHY, true, failures
				on(ev)
				return
			}
		}
		ev.health, ev.failures = health, failures
		t.Reset(next())
		on(ev)
	}
}

// errProbeTimeout ends a probe's context when its timeout passed.
var errProbeTimeout = errors.New("health check timed out")

// runProbe runs one probe, bounded by hc.timeout on clk. The probe runs in
// a goroutine of its own, which has ended when runProbe returns.
func runProbe(ctx context.Context, clk Clock, hc *healthCheck) (bool, string) {
	pctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	t := clk.NewTimer(hc.timeout) // armed before the probe runs
	defer t.Stop()
	type result struct {
		ok  bool
		out string
	}
	res := make(chan result, 1)
	go func() {
		ok, out := hc.probe(pctx)
		res <- result{ok, out}
	}()
	select {
	case r := <-res:
		return r.ok, r.out
	case <-t.C():
		cancel(errProbeTimeout)
		r := <-res
		return false, truncateWith(r.out, fmt.Sprintf("(%v after %s)", errProbeTimeout, hc.timeout))
	case <-ctx.Done():
		cancel(nil)
		<-res
		return false, ""
	}
}

// truncate cuts s to at most n bytes.
func truncate(s string, n int) string {
	if n < 0 {
		n = 0
	}
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// truncateWith appends suffix to s (after a space unless s is empty or
// ends in a newline), cutting s so the whole fits HealthOutputLimit.
func truncateWith(s, suffix string) string {
	if s != "" && !strings.HasSuffix(s, "\n") {
		suffix = " " + suffix
	}
	return truncate(truncate(s, HealthOutputLimit-len(suffix))+suffix, HealthOutputLimit)
}

// limitedBuffer keeps the first HealthOutputLimit bytes written to it and
// discards the rest; safe for concurrent use (stdout and stderr share it).
type limitedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer // guarded by mu
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := HealthOutputLimit - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (b *limitedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
