package dispatch

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/clock/clocktest"
	"github.com/shoalhq/shoal/internal/state"
	"github.com/shoalhq/shoal/runtime"
	"github.com/shoalhq/shoal/runtime/runtimetest"
)

// Timings of the checks of the agent tests: only the test moves the clocks
// that measure them.
const (
	testHealthInterval = time.Hour
	testHealthTimeout  = 2 * time.Hour
)

// healthClock is the real clock (heartbeats, batching) except for the
// health check's interval and probe timeout, each on a fake clock of its
// own, so that a test knows which timer it waits for.
type healthClock struct {
	Clock
	loop, probe *clocktest.Fake
}

func newHealthClock() *healthClock {
	return &healthClock{Clock: RealClock(), loop: clocktest.NewFake(), probe: clocktest.NewFake()}
}

func (c *healthClock) NewTimer(d time.Duration) Timer {
	switch d {
	case testHealthInterval:
		return c.loop.NewTimer(d)
	case testHealthTimeout:
		return c.probe.NewTimer(d)
	}
	return c.Clock.NewTimer(d)
}

// execScript answers the health check commands of the fake runtime's
// tasks: pass or fail with an output, as the test sets it.
type execScript struct {
	mu   sync.Mutex
	ok   bool   // guarded by mu
	out  string // guarded by mu
	runs int    // guarded by mu
	ran  chan struct{}
}

func newExecScript() *execScript { return &execScript{ran: make(chan struct{}, 100)} }

func (s *execScript) set(ok bool, out string) {
	s.mu.Lock()
	s.ok, s.out = ok, out
	s.mu.Unlock()
}

// count returns how many probes ran since the last call, and resets it.
func (s *execScript) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.runs
	s.runs = 0
	return n
}

func (s *execScript) exec(_ context.Context, req runtime.ExecRequest) (int, error) {
	s.mu.Lock()
	ok, out := s.ok, s.out
	s.runs++
	s.mu.Unlock()
	_, _ = req.Stdout.Write([]byte(out))
	defer func() { s.ran <- struct{}{} }()
	if ok {
		return 0, nil
	}
	return 1, nil
}

// healthAgent is an agent on the fake runtime running one ingress task
// "web" with a command check (Retries 3), and the test's handles on it.
type healthAgent struct {
	t      *testing.T
	st     *state.Store
	rt     *runtimetest.Runtime
	a      *Agent
	clk    *healthClock
	script *execScript
	log    *eventLog
	cfg    AgentConfig
}

func startHealthAgent(t *testing.T, mut func(*api.Task), edit ...func(*AgentConfig)) *healthAgent {
	t.Helper()
	h := &healthAgent{t: t, st: newStore(t), rt: runtimetest.New(), clk: newHealthClock(), script: newExecScript(), log: &eventLog{}}
	createNode(t, h.st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	web := ingressTask("web", "n1", 30080)
	web.Spec.HealthCheck = &api.HealthCheck{Command: []string{"check"}, Interval: int64(testHealthInterval),
		Timeout: int64(testHealthTimeout), Retries: 3}
	if mut != nil {
		mut(web)
	}
	createTask(t, h.st, web)
	h.rt.SetBehavior(func(runtime.Task) runtimetest.Behavior { return runtimetest.Behavior{Exec: h.script.exec} })
	h.rt.OnEvent(h.log.onRuntime)
	s := startServer(t, h.st, agentServerConfig(), "")
	cfg := agentConfig("n1", newManagerList(s.addr).get, h.rt)
	cfg.OnEndpoints = h.log.onEndpoints
	cfg.Clock = h.clk
	for _, e := range edit {
		e(&cfg)
	}
	h.cfg = cfg
	h.a = startAgent(t, cfg)
	requireFakeState(t, h.rt, "web", runtimetest.StateRunning)
	return h
}

// probe runs the next probe with the given result and waits until it ran.
func (h *healthAgent) probe(ok bool, out string) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.True(h.t, h.clk.loop.WaitTimers(ctx, 1), "the check never waited for its next probe")
	h.script.set(ok, out)
	h.clk.loop.Advance(testHealthInterval)
	select {
	case <-h.script.ran:
	case <-ctx.Done():
		h.t.Fatal("the probe never ran")
	}
}

func (h *healthAgent) status() *api.TaskStatus { return getTask(h.st, "web").GetStatus() }

func (h *healthAgent) requireHealth(want api.HealthState) {
	h.t.Helper()
	require.Eventually(h.t, func() bool { return h.status().GetHealth() == want }, waitFor, tick,
		"the stored health never became %v (it is %v)", want, h.status().GetHealth())
}

func TestAgentHealthGatesMesh(t *testing.T) {
	h := startHealthAgent(t, nil)
	// Running and starting: not in the mesh.
	require.Eventually(t, func() bool { return h.status().GetState() == api.TaskState_TASK_STATE_RUNNING }, waitFor, tick)
	assert.Equal(t, api.HealthState_HEALTH_STATE_STARTING, h.status().GetHealth())
	assert.Empty(t, h.a.Endpoints(), "a starting task is not in the mesh")
	assert.NotEmpty(t, h.status().GetEndpoints(), "its endpoints are reported all the same")

	h.probe(false, "not yet")
	assert.Empty(t, h.a.Endpoints())
	h.probe(true, "fine")
	h.requireHealth(api.HealthState_HEALTH_STATE_HEALTHY)
	require.Eventually(t, func() bool { return len(h.a.Endpoints()) == 1 }, waitFor, tick, "a healthy task enters the mesh")
	assert.Equal(t, "fine", h.status().GetHealthOutput())
	assert.Equal(t, api.TaskState_TASK_STATE_RUNNING, h.status().GetState(), "health is not a state change")
	require.Eventually(t, func() bool { return h.log.index("endpoints[web:30080]") >= 0 }, waitFor, tick)

	// Retries 3: three failures in a row make it unhealthy: withdrawn
	// from the mesh, then stopped and FAILED with the probe's output.
	h.probe(false, "bad 1")
	h.probe(false, "bad 2")
	assert.Len(t, h.a.Endpoints(), 1, "failures within Retries leave it in the mesh")
	mark := h.log.len()
	h.probe(false, "connection refused")
	require.Eventually(t, func() bool { return h.status().GetState() == api.TaskState_TASK_STATE_FAILED }, waitFor, tick)
	st := h.status()
	assert.Equal(t, api.HealthState_HEALTH_STATE_UNHEALTHY, st.GetHealth())
	assert.Equal(t, "connection refused (exit code 1)", st.GetErr())
	assert.Equal(t, "connection refused (exit code 1)", st.GetHealthOutput())
	assert.Contains(t, st.GetMessage(), "task unhealthy: 3 consecutive health checks failed")
	assert.Empty(t, h.a.Endpoints())
	withdrawn, shutdown := h.log.indexFrom(mark, "endpoints[]"), h.log.indexFrom(mark, "shutdown web")
	require.GreaterOrEqual(t, withdrawn, 0, "never withdrawn: %v", h.log.events())
	require.GreaterOrEqual(t, shutdown, 0, "never stopped: %v", h.log.events())
	assert.Less(t, withdrawn, shutdown, "withdrawn from the mesh before it is stopped: %v", h.log.events())
}

func TestAgentHealthFlappingWithinRetries(t *testing.T) {
	h := startHealthAgent(t, nil)
	h.probe(true, "ok")
	h.requireHealth(api.HealthState_HEALTH_STATE_HEALTHY)
	seq := h.status().GetHealthSeq()
	// Two failures, a success, two failures, a success: never three in a
	// row, so the task is left alone.
	for range 3 {
		h.probe(false, "slow")
		h.probe(false, "slow")
		h.probe(true, "ok")
	}
	assert.Zero(t, h.rt.CallCount("web", "Shutdown"), "flapping within Retries does not stop the task")
	state, _ := h.rt.State("web")
	assert.Equal(t, runtimetest.StateRunning, state)
	assert.Len(t, h.a.Endpoints(), 1, "and it stays in the mesh")
	st := h.status()
	assert.Equal(t, api.TaskState_TASK_STATE_RUNNING, st.GetState())
	assert.Equal(t, api.HealthState_HEALTH_STATE_HEALTHY, st.GetHealth())
	assert.Equal(t, seq, st.GetHealthSeq(), "no health change was reported")
}

func TestAgentHealthDesiredShutdown(t *testing.T) {
	// A healthy task asked to stop leaves the mesh and shuts down as any
	// task: the check ends with it and publishes nothing again.
	h := startHealthAgent(t, nil)
	h.probe(true, "ok")
	require.Eventually(t, func() bool { return len(h.a.Endpoints()) == 1 }, waitFor, tick)
	updateTask(t, h.st, "web", func(x *api.Task) { x.DesiredState = api.TaskState_TASK_STATE_SHUTDOWN })
	require.Eventually(t, func() bool { return h.status().GetState() == api.TaskState_TASK_STATE_SHUTDOWN }, waitFor, tick)
	assert.Empty(t, h.a.Endpoints())
	assert.Equal(t, api.HealthState_HEALTH_STATE_HEALTHY, h.status().GetHealth(), "a task that ended keeps its last health")
	assert.Zero(t, h.clk.loop.Timers(), "the check ended with the task")
}

func TestAgentHealthTCPCheck(t *testing.T) {
	// A TCP check connects to the task's endpoint of the checked port: here
	// a host-mode port whose fake endpoint is a loopback listener of the
	// test.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	port := netip.MustParseAddrPort(ln.Addr().String()).Port()
	h := startHealthAgent(t, func(x *api.Task) {
		x.Spec.Ports = append(x.Spec.Ports, &api.PortConfig{TargetPort: 81, PublishedPort: uint32(port), Mode: host})
		x.Spec.HealthCheck = &api.HealthCheck{Tcp: &api.TCPCheck{Port: 81}, Interval: int64(testHealthInterval),
			Timeout: int64(testHealthTimeout), Retries: 1}
	})
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.True(t, h.clk.loop.WaitTimers(ctx, 1))
	h.clk.loop.Advance(testHealthInterval)
	h.requireHealth(api.HealthState_HEALTH_STATE_HEALTHY)
	assert.Equal(t, "connected to 127.0.0.1:"+strconv.Itoa(int(port)), h.status().GetHealthOutput())
	require.Eventually(t, func() bool { return len(h.a.Endpoints()) == 1 }, waitFor, tick)

	require.NoError(t, ln.Close())
	require.True(t, h.clk.loop.WaitTimers(ctx, 1))
	h.clk.loop.Advance(testHealthInterval)
	require.Eventually(t, func() bool { return h.status().GetState() == api.TaskState_TASK_STATE_FAILED }, waitFor, tick)
	assert.Contains(t, h.status().GetErr(), "connection refused")
	assert.Empty(t, h.a.Endpoints())
}

func TestStatusNewer(t *testing.T) {
	running := func(seq uint64) *api.TaskStatus {
		return &api.TaskStatus{State: api.TaskState_TASK_STATE_RUNNING, HealthSeq: seq}
	}
	failed := &api.TaskStatus{State: api.TaskState_TASK_STATE_FAILED}
	for _, tc := range []struct {
		name string
		a, b *api.TaskStatus
		want bool
	}{
		{"later state", failed, running(5), true},
		{"earlier state", running(5), failed, false},
		{"same state, later health", running(2), running(1), true},
		{"same state, same health (duplicate)", running(1), running(1), false},
		{"same state, earlier health (late)", running(1), running(2), false},
		{"nil is the oldest", running(0), nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) { assert.Equal(t, tc.want, statusNewer(tc.a, tc.b)) })
	}
}

func TestAgentHealthAcrossLiveRestore(t *testing.T) {
	// A task healthy when its agent stopped (LiveRestore: left running)
	// stays in the mesh when the next agent re-adopts it, without waiting
	// for a probe, and its checks go on.
	h := startHealthAgent(t, nil, func(c *AgentConfig) { c.LiveRestore = true })
	h.probe(true, "ok")
	h.requireHealth(api.HealthState_HEALTH_STATE_HEALTHY)
	seq := h.status().GetHealthSeq()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, h.a.Stop(ctx))
	state, _ := h.rt.State("web")
	require.Equal(t, runtimetest.StateRunning, state, "left running")
	h.script.count() // the first agent's probes

	h.clk = newHealthClock()
	cfg := h.cfg
	cfg.Clock = h.clk
	a2 := startAgent(t, cfg)
	require.Eventually(t, func() bool { return len(a2.Endpoints()) == 1 }, waitFor, tick,
		"a re-adopted healthy task is in the mesh before any probe")
	assert.Zero(t, h.script.count(), "no probe ran on the new agent yet")
	h.a = a2
	h.probe(true, "still ok")
	h.probe(false, "bad")
	assert.Len(t, a2.Endpoints(), 1)
	assert.Equal(t, api.HealthState_HEALTH_STATE_HEALTHY, h.status().GetHealth())
	assert.Equal(t, seq, h.status().GetHealthSeq(), "no health change")
	assert.Zero(t, h.rt.CallCount("web", "Shutdown"))
}

func TestAgentHealthHTTPCheck(t *testing.T) {
	// An HTTP check GETs its path on the task's endpoint of the checked
	// port (a host-mode port whose fake endpoint is the test's server) and
	// judges the status by the check's range.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var mu sync.Mutex
	status := http.StatusNoContent
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		code := status
		mu.Unlock()
		if r.URL.Path != "/healthz" {
			code = http.StatusNotFound
		}
		w.WriteHeader(code)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	port := netip.MustParseAddrPort(ln.Addr().String()).Port()
	h := startHealthAgent(t, func(x *api.Task) {
		x.Spec.Ports = append(x.Spec.Ports, &api.PortConfig{TargetPort: 81, PublishedPort: uint32(port), Mode: host})
		x.Spec.HealthCheck = &api.HealthCheck{Http: &api.HTTPCheck{Port: 81, Path: "/healthz", StatusMin: 200, StatusMax: 204},
			Interval: int64(testHealthInterval), Timeout: int64(testHealthTimeout), Retries: 1}
	})
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.True(t, h.clk.loop.WaitTimers(ctx, 1))
	h.clk.loop.Advance(testHealthInterval)
	h.requireHealth(api.HealthState_HEALTH_STATE_HEALTHY)
	url := "http://127.0.0.1:" + strconv.Itoa(int(port)) + "/healthz"
	assert.Equal(t, "GET "+url+": 204 No Content", h.status().GetHealthOutput())
	require.Eventually(t, func() bool { return len(h.a.Endpoints()) == 1 }, waitFor, tick)

	mu.Lock()
	status = http.StatusPartialContent // 206: outside 200-204
	mu.Unlock()
	require.True(t, h.clk.loop.WaitTimers(ctx, 1))
	h.clk.loop.Advance(testHealthInterval)
	require.Eventually(t, func() bool { return h.status().GetState() == api.TaskState_TASK_STATE_FAILED }, waitFor, tick)
	assert.Equal(t, "GET "+url+": 206 Partial Content (healthy: 200-204)", h.status().GetErr())
	assert.Empty(t, h.a.Endpoints())
}
