package dispatch

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/runtime"
	"github.com/shoalhq/shoal/runtime/runtimetest"
)

const (
	ingress = api.PublishMode_PUBLISH_MODE_INGRESS
	host    = api.PublishMode_PUBLISH_MODE_HOST
	udp     = api.PortProtocol_PORT_PROTOCOL_UDP
	tcp     = api.PortProtocol_PORT_PROTOCOL_TCP
)

func TestPublishedEndpoints(t *testing.T) {
	any4 := netip.IPv4Unspecified()
	own := netip.MustParseAddr("10.1.2.3")
	ep := func(target uint16, proto string, ip netip.Addr, port uint16) runtime.Endpoint {
		return runtime.Endpoint{Target: target, Protocol: proto, Addr: netip.AddrPortFrom(ip, port)}
	}
	pub := func(published uint16, proto string, ip netip.Addr, port uint16) PublishedEndpoint {
		return PublishedEndpoint{ServiceID: "svc", TaskID: "t1", PublishedPort: published, Protocol: proto, Addr: netip.AddrPortFrom(ip, port)}
	}
	tests := []struct {
		name  string
		ports []*api.PortConfig
		eps   []runtime.Endpoint
		want  []PublishedEndpoint
	}{
		{name: "no ports"},
		{
			name:  "ingress port published",
			ports: []*api.PortConfig{{TargetPort: 80, PublishedPort: 30080, Mode: ingress}},
			eps:   []runtime.Endpoint{ep(80, "tcp", any4, 40000)},
			want:  []PublishedEndpoint{pub(30080, "tcp", any4, 40000)},
		},
		{
			name:  "host-mode port not published",
			ports: []*api.PortConfig{{TargetPort: 80, PublishedPort: 8080, Mode: host}},
			eps:   []runtime.Endpoint{ep(80, "tcp", any4, 8080)},
		},
		{
			name:  "ingress port without a published port (not allocated) is not published",
			ports: []*api.PortConfig{{TargetPort: 80, Mode: ingress}},
			eps:   []runtime.Endpoint{ep(80, "tcp", any4, 40000)},
		},
		{
			name:  "no runtime endpoint: nothing to publish",
			ports: []*api.PortConfig{{TargetPort: 80, PublishedPort: 30080, Mode: ingress}},
		},
		{
			name:  "matched by protocol, not position",
			ports: []*api.PortConfig{{TargetPort: 53, PublishedPort: 30053, Protocol: udp, Mode: ingress}, {TargetPort: 53, PublishedPort: 30053, Protocol: tcp, Mode: ingress}},
			eps:   []runtime.Endpoint{ep(53, "tcp", own, 53), ep(53, "udp", own, 53)},
			want:  []PublishedEndpoint{pub(30053, "tcp", own, 53), pub(30053, "udp", own, 53)},
		},
		{
			name: "mixed modes, sorted by published port",
			ports: []*api.PortConfig{
				{TargetPort: 81, PublishedPort: 30081, Mode: ingress},
				{TargetPort: 22, PublishedPort: 2222, Mode: host},
				{TargetPort: 80, PublishedPort: 30080, Mode: ingress},
			},
			eps:  []runtime.Endpoint{ep(81, "tcp", any4, 40001), ep(22, "tcp", any4, 2222), ep(80, "tcp", any4, 40000)},
			want: []PublishedEndpoint{pub(30080, "tcp", any4, 40000), pub(30081, "tcp", any4, 40001)},
		},
		{
			name:  "an endpoint without a port is unusable",
			ports: []*api.PortConfig{{TargetPort: 80, PublishedPort: 30080, Mode: ingress}},
			eps:   []runtime.Endpoint{{Target: 80, Protocol: "tcp"}},
		},
		{
			name:  "empty runtime protocol means tcp",
			ports: []*api.PortConfig{{TargetPort: 80, PublishedPort: 30080, Mode: ingress}},
			eps:   []runtime.Endpoint{ep(80, "", any4, 40000)},
			want:  []PublishedEndpoint{pub(30080, "tcp", any4, 40000)},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			task := assignedTask("t1", "n1")
			task.Spec.Ports = tc.ports
			assert.Equal(t, tc.want, publishedEndpoints(task, tc.eps))
		})
	}
}

func TestEndpointSetNotifier(t *testing.T) {
	var (
		mu    sync.Mutex
		calls [][]PublishedEndpoint
		busy  bool
	)
	s := newEndpointSet(func(eps []PublishedEndpoint) {
		mu.Lock()
		defer mu.Unlock()
		assert.False(t, busy, "OnEndpoints called concurrently")
		busy = true
		calls = append(calls, eps)
		busy = false
	})
	done := make(chan struct{})
	go func() { defer close(done); s.run() }()

	a := PublishedEndpoint{ServiceID: "s", TaskID: "a", PublishedPort: 1, Protocol: "tcp"}
	b := PublishedEndpoint{ServiceID: "s", TaskID: "b", PublishedPort: 2, Protocol: "tcp"}
	v1 := s.set("b", []PublishedEndpoint{b})
	v2 := s.set("a", []PublishedEndpoint{a})
	assert.Greater(t, v2, v1)
	assert.Zero(t, s.set("a", []PublishedEndpoint{a}), "no change, no new version")
	assert.Equal(t, []PublishedEndpoint{a, b}, s.current())
	waitVersion(t, s, v2)
	mu.Lock()
	require.NotEmpty(t, calls)
	assert.Equal(t, []PublishedEndpoint{a, b}, calls[len(calls)-1], "the last call has the whole set, sorted")
	mu.Unlock()

	v3 := s.remove("b")
	require.NotZero(t, v3)
	assert.Zero(t, s.remove("b"), "removing twice changes nothing")
	assert.Zero(t, s.remove("never"))
	waitVersion(t, s, v3)
	mu.Lock()
	assert.Equal(t, []PublishedEndpoint{a}, calls[len(calls)-1])
	mu.Unlock()

	s.remove("a")
	close(s.quit)
	<-done
	mu.Lock()
	defer mu.Unlock()
	assert.Empty(t, calls[len(calls)-1], "the notifier delivers the last set before it ends")
	for i := 1; i < len(calls); i++ {
		assert.NotEqual(t, calls[i-1], calls[i], "a set is not delivered twice in a row")
	}
}

func waitVersion(t *testing.T, s *endpointSet, v uint64) {
	t.Helper()
	require.Eventually(t, func() bool { ok, _ := s.deliveredYet(v); return ok }, waitFor, tick)
}

// drainClock is the wall clock except for timers of exactly drain, which
// run on a fake clock the test advances: the agent's heartbeats, status
// batching and back-off keep working while the drain delay is in the
// test's hands.
type drainClock struct {
	Clock
	fake  *fakeClock
	drain time.Duration
	also  time.Duration // a second duration on the fake clock (DrainTimeout)
}

func newDrainClock(drain time.Duration) *drainClock {
	return &drainClock{Clock: RealClock(), fake: newFakeClock(), drain: drain}
}

func (c *drainClock) NewTimer(d time.Duration) Timer {
	if d == c.drain || (c.also != 0 && d == c.also) {
		return c.fake.NewTimer(d)
	}
	return c.Clock.NewTimer(d)
}

// armed reports how many drain timers are waiting.
func (c *drainClock) armed() int {
	c.fake.mu.Lock()
	defer c.fake.mu.Unlock()
	n := 0
	for _, t := range c.fake.timers {
		if t.active {
			n++
		}
	}
	return n
}

// eventLog records, in order, what the agent told the host and what the
// runtime did.
type eventLog struct {
	mu  sync.Mutex
	evs []string
}

func (l *eventLog) add(s string) {
	l.mu.Lock()
	l.evs = append(l.evs, s)
	l.mu.Unlock()
}

func (l *eventLog) events() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.evs)
}

func (l *eventLog) index(s string) int { return slices.Index(l.events(), s) }

func (l *eventLog) len() int { return len(l.events()) }

// indexFrom is index among the events from the from-th on.
func (l *eventLog) indexFrom(from int, s string) int {
	if i := slices.Index(l.events()[from:], s); i >= 0 {
		return from + i
	}
	return -1
}

func (l *eventLog) onEndpoints(eps []PublishedEndpoint) {
	ids := make([]string, len(eps))
	for i, e := range eps {
		ids[i] = fmt.Sprintf("%s:%d", e.TaskID, e.PublishedPort)
	}
	l.add("endpoints[" + strings.Join(ids, ",") + "]")
}

func (l *eventLog) onRuntime(e runtimetest.Event) {

	if e.Kind == runtimetest.EventShutdown {
		l.add("shutdown " + e.Task.ID)
	}
}

// ingressTask is an assigned task publishing target 80 as published port.
func ingressTask(id, node string, published uint32) *api.Task {
	t := assignedTask(id, node)
	t.Spec.Ports = []*api.PortConfig{{TargetPort: 80, PublishedPort: published, Mode: ingress}}
	return t
}

func TestAgentPublishesIngressEndpoints(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	web := assignedTask("web", "n1")
	web.Spec.Ports = []*api.PortConfig{
		{TargetPort: 80, PublishedPort: 30080, Mode: ingress},
		{TargetPort: 53, PublishedPort: 5353, Protocol: udp, Mode: host},
		{TargetPort: 81, Mode: ingress}, // not allocated: nothing to publish
	}
	createTask(t, st, web)
	hostOnly := assignedTask("hostonly", "n1")
	hostOnly.Spec.Ports = []*api.PortConfig{{TargetPort: 22, PublishedPort: 2222, Mode: host}}
	createTask(t, st, hostOnly)
	s := startServer(t, st, agentServerConfig(), "")
	rt := runtimetest.New()
	var log eventLog
	cfg := agentConfig("n1", newManagerList(s.addr).get, rt)
	cfg.OnEndpoints = log.onEndpoints
	a := startAgent(t, cfg)

	requireFakeState(t, rt, "web", runtimetest.StateRunning)
	requireFakeState(t, rt, "hostonly", runtimetest.StateRunning)
	want := []PublishedEndpoint{{ServiceID: "svc", TaskID: "web", PublishedPort: 30080, Protocol: "tcp",
		Addr: netip.AddrPortFrom(netip.IPv4Unspecified(), runtimetest.FirstFakePort)}}
	require.Eventually(t, func() bool { return slices.Equal(a.Endpoints(), want) }, waitFor, tick)
	require.Eventually(t, func() bool { return slices.Contains(log.events(), "endpoints[web:30080]") }, waitFor, tick)
	assert.NotContains(t, strings.Join(log.events(), " "), "hostonly", "host-mode ports are not published")
}

func TestAgentDrainsBeforeStop(t *testing.T) {
	const drain = time.Hour // only the test moves this clock
	for _, tc := range []struct {
		name string
		stop func(t *testing.T, st storeView)
	}{
		{"desired shutdown (scale-down, rolling update)", func(t *testing.T, st storeView) {
			updateTask(t, st.store, "web", func(x *api.Task) { x.DesiredState = api.TaskState_TASK_STATE_SHUTDOWN })
		}},
		{"removed from the assignments", func(t *testing.T, st storeView) {
			deleteTask(t, st.store, "web")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := newStore(t)
			createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
			createTask(t, st, ingressTask("web", "n1", 30080))
			createTask(t, st, ingressTask("other", "n1", 30081))
			s := startServer(t, st, agentServerConfig(), "")
			rt := runtimetest.New()
			var log eventLog
			rt.OnEvent(log.onRuntime)
			clk := newDrainClock(drain)
			cfg := agentConfig("n1", newManagerList(s.addr).get, rt)
			cfg.OnEndpoints = log.onEndpoints
			cfg.DrainDelay = drain
			cfg.Clock = clk
			a := startAgent(t, cfg)
			require.Eventually(t, func() bool { return len(a.Endpoints()) == 2 }, waitFor, tick)
			require.Eventually(t, func() bool {
				return log.index("endpoints[web:30080,other:30081]") >= 0 ||
					log.index("endpoints[other:30081,web:30080]") >= 0
			}, waitFor, tick)

			mark := log.len()
			tc.stop(t, storeView{st})
			// The endpoint is withdrawn first, then the drain delay starts;
			// the task keeps running through it.
			require.Eventually(t, func() bool { return log.indexFrom(mark, "endpoints[other:30081]") >= 0 }, waitFor, tick)
			require.Eventually(t, func() bool { return clk.armed() == 1 }, waitFor, tick, "drain timer never armed")
			eps := a.Endpoints()
			require.Len(t, eps, 1)
			assert.Equal(t, "other", eps[0].TaskID)
			state, _ := rt.State("web")
			assert.Equal(t, runtimetest.StateRunning, state, "stopped before the drain delay passed")
			assert.Zero(t, rt.CallCount("web", "Shutdown"))

			clk.fake.Advance(drain - time.Nanosecond)
			state, _ = rt.State("web")
			assert.Equal(t, runtimetest.StateRunning, state, "stopped before the drain delay passed")
			clk.fake.Advance(time.Nanosecond)
			require.Eventually(t, func() bool { return log.index("shutdown web") >= 0 }, waitFor, tick)
			requireFakeState(t, rt, "web", runtimetest.StateRemoved)
			assert.Less(t, log.indexFrom(mark, "endpoints[other:30081]"), log.index("shutdown web"),
				"the endpoint must be withdrawn before the task is stopped: %v", log.events())
			requireFakeState(t, rt, "other", runtimetest.StateRunning)
		})
	}
}

// Tasks without published endpoints stop at once, whatever DrainDelay.
func TestAgentNoDrainWithoutEndpoints(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	hostOnly := assignedTask("hostonly", "n1")
	hostOnly.Spec.Ports = []*api.PortConfig{{TargetPort: 22, PublishedPort: 2222, Mode: host}}
	createTask(t, st, hostOnly)
	s := startServer(t, st, agentServerConfig(), "")
	rt := runtimetest.New()
	clk := newDrainClock(time.Hour)
	cfg := agentConfig("n1", newManagerList(s.addr).get, rt)
	cfg.DrainDelay = time.Hour
	cfg.Clock = clk
	startAgent(t, cfg)
	requireFakeState(t, rt, "hostonly", runtimetest.StateRunning)
	updateTask(t, st, "hostonly", func(x *api.Task) { x.DesiredState = api.TaskState_TASK_STATE_SHUTDOWN })
	requireTaskState(t, storeView{st}, "hostonly", api.TaskState_TASK_STATE_SHUTDOWN)
	assert.Zero(t, clk.armed(), "no drain timer")
}

// A task that exits on its own leaves the set at once: no drain.
func TestAgentWithdrawsExitedTaskAtOnce(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	createTask(t, st, ingressTask("web", "n1", 30080))
	s := startServer(t, st, agentServerConfig(), "")
	rt := runtimetest.New()
	var log eventLog
	clk := newDrainClock(time.Hour)
	cfg := agentConfig("n1", newManagerList(s.addr).get, rt)
	cfg.OnEndpoints = log.onEndpoints
	cfg.DrainDelay = time.Hour
	cfg.Clock = clk
	a := startAgent(t, cfg)
	require.Eventually(t, func() bool { return log.index("endpoints[web:30080]") >= 0 }, waitFor, tick)

	require.NoError(t, rt.Exit("web", 2))
	require.Eventually(t, func() bool { return log.index("endpoints[]") >= 0 }, waitFor, tick)
	assert.Empty(t, a.Endpoints())
	requireTaskState(t, storeView{st}, "web", api.TaskState_TASK_STATE_FAILED)
	assert.Zero(t, clk.armed(), "no drain timer")
}

// Stop during a drain wait does not wait for the delay.
func TestAgentStopDuringDrain(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	createTask(t, st, ingressTask("web", "n1", 30080))
	s := startServer(t, st, agentServerConfig(), "")
	rt := runtimetest.New()
	var log eventLog
	rt.OnEvent(log.onRuntime)
	clk := newDrainClock(time.Hour)
	cfg := agentConfig("n1", newManagerList(s.addr).get, rt)
	cfg.OnEndpoints = log.onEndpoints
	cfg.DrainDelay = time.Hour
	cfg.Clock = clk
	a, err := NewAgent(cfg)
	require.NoError(t, err)
	require.NoError(t, a.Start(context.Background()))
	require.Eventually(t, func() bool { return log.index("endpoints[web:30080]") >= 0 }, waitFor, tick)
	updateTask(t, st, "web", func(x *api.Task) { x.DesiredState = api.TaskState_TASK_STATE_SHUTDOWN })
	require.Eventually(t, func() bool { return clk.armed() == 1 }, waitFor, tick, "drain timer never armed")

	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, a.Stop(ctx), "Stop must not wait for the drain delay")
	requireFakeState(t, rt, "web", runtimetest.StateRemoved)
	assert.Less(t, log.index("endpoints[]"), log.index("shutdown web"), "%v", log.events())
	assert.Empty(t, a.Endpoints())
}

// The agent stopping withdraws every endpoint, and the host hears of it
// before Stop returns.
func TestAgentStopWithdrawsEndpoints(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	createTask(t, st, ingressTask("web", "n1", 30080))
	s := startServer(t, st, agentServerConfig(), "")
	rt := runtimetest.New()
	var log eventLog
	cfg := agentConfig("n1", newManagerList(s.addr).get, rt)
	cfg.OnEndpoints = log.onEndpoints
	a, err := NewAgent(cfg)
	require.NoError(t, err)
	require.NoError(t, a.Start(context.Background()))
	require.Eventually(t, func() bool { return log.index("endpoints[web:30080]") >= 0 }, waitFor, tick)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, a.Stop(ctx))
	evs := log.events()
	assert.Equal(t, "endpoints[]", evs[len(evs)-1])
}

// OnSession hears every session message, the ones the dispatcher pushes
// when the gossip keys rotate included.
func TestAgentOnSessionHearsGossipRotation(t *testing.T) {
	st := newStore(t)
	k1, k2 := []byte("key-one-key-one-key-one-key-one!"), []byte("key-two-key-two-key-two-key-two!")
	setGossipKeys(t, st, k1)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	createGossipNode(t, st, "n2", api.NodeState_NODE_STATE_READY, "10.0.0.2:7946")
	cfg := fastConfig() // no periodic resend within the test
	s := startServer(t, st, cfg, "")
	var (
		mu   sync.Mutex
		last *api.SessionMessage
	)
	acfg := agentConfig("n1", newManagerList(s.addr).get, runtimetest.New())
	acfg.Description.GossipAddr = "10.0.0.1:7946"
	acfg.OnSession = func(m *api.SessionMessage) { mu.Lock(); last = m; mu.Unlock() }
	a := startAgent(t, acfg)
	waitConnected(t, a)
	get := func() *api.SessionMessage { mu.Lock(); defer mu.Unlock(); return last }
	require.NotNil(t, get())
	assert.Equal(t, [][]byte{k1}, get().GetGossipKeys())
	assert.Equal(t, []string{"10.0.0.2:7946"}, get().GetGossipPeers())
	assert.Equal(t, "10.0.0.1:7946", getNode(st, "n1").GetDescription().GetGossipAddr())

	setGossipKeys(t, st, k2, k1)
	require.Eventually(t, func() bool { return slices.EqualFunc(get().GetGossipKeys(), [][]byte{k2, k1}, slices.Equal) },
		waitFor, tick)
}

// With ConfirmWithdrawal the drain lasts at least DrainDelay and until the
// withdrawal is confirmed, at most DrainTimeout.
func TestAgentDrainWaitsForConfirmation(t *testing.T) {
	const drain, timeout = time.Hour, 3 * time.Hour // only the test moves these timers
	for _, tc := range []struct {
		name string
		// run gets the confirmation's release and the fake clock, and
		// returns once the task must have been stopped.
		run func(t *testing.T, confirm chan<- error, clk *drainClock, running func() bool)
	}{
		{"confirmed after the delay", func(t *testing.T, confirm chan<- error, clk *drainClock, running func() bool) {
			clk.fake.Advance(drain)
			assert.Never(t, func() bool { return !running() }, 100*time.Millisecond, tick, "stopped before the withdrawal was confirmed")
			confirm <- nil
		}},
		{"confirmed before the delay", func(t *testing.T, confirm chan<- error, clk *drainClock, running func() bool) {
			confirm <- nil
			assert.Never(t, func() bool { return !running() }, 100*time.Millisecond, tick, "stopped before the delay")
			clk.fake.Advance(drain)
		}},
		{"never confirmed", func(t *testing.T, _ chan<- error, clk *drainClock, running func() bool) {
			clk.fake.Advance(drain)
			assert.Never(t, func() bool { return !running() }, 100*time.Millisecond, tick, "stopped before the withdrawal was confirmed")
			clk.fake.Advance(timeout - drain - time.Nanosecond)
			assert.Never(t, func() bool { return !running() }, 100*time.Millisecond, tick, "stopped before DrainTimeout")
			clk.fake.Advance(time.Nanosecond)
		}},
		{"confirmation failed", func(t *testing.T, confirm chan<- error, clk *drainClock, running func() bool) {
			confirm <- errors.New("gossip stopped")
			clk.fake.Advance(drain)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := newStore(t)
			createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
			createTask(t, st, ingressTask("web", "n1", 30080))
			s := startServer(t, st, agentServerConfig(), "")
			rt := runtimetest.New()
			clk := newDrainClock(drain)
			clk.also = timeout
			confirm := make(chan error, 1)
			var asked atomic.Int32
			ended := make(chan struct{})
			cfg := agentConfig("n1", newManagerList(s.addr).get, rt)
			cfg.OnEndpoints = func([]PublishedEndpoint) {}
			cfg.DrainDelay = drain
			cfg.DrainTimeout = timeout
			cfg.Clock = clk
			cfg.ConfirmWithdrawal = func(ctx context.Context) error {
				asked.Add(1)
				defer close(ended)
				select {
				case err := <-confirm:
					return err
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			a := startAgent(t, cfg)
			require.Eventually(t, func() bool { return len(a.Endpoints()) == 1 }, waitFor, tick)

			updateTask(t, st, "web", func(x *api.Task) { x.DesiredState = api.TaskState_TASK_STATE_SHUTDOWN })
			require.Eventually(t, func() bool { return clk.armed() == 2 }, waitFor, tick, "drain timers never armed")
			require.Equal(t, int32(1), asked.Load())
			running := func() bool { st, _ := rt.State("web"); return st == runtimetest.StateRunning }
			require.True(t, running())

			tc.run(t, confirm, clk, running)
			requireFakeState(t, rt, "web", runtimetest.StateRemoved)
			select {
			case <-ended:
			case <-time.After(waitFor):
				t.Fatal("the confirmation's context was not canceled when the drain ended")
			}
		})
	}
}
