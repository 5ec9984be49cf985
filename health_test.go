package shoal_test

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal"
	"github.com/shoalhq/shoal/runtime"
	"github.com/shoalhq/shoal/runtime/process"
	"github.com/shoalhq/shoal/shoaltest"
)

// healthVerdicts says what the health check commands of a cluster's echo
// tasks answer: nothing passes until ready, and a task marked sick fails
// with its output.
type healthVerdicts struct {
	mu    sync.Mutex
	ready bool              // guarded by mu
	sick  map[string]string // task ID → output; guarded by mu
}

func (v *healthVerdicts) setReady() {
	v.mu.Lock()
	v.ready = true
	v.mu.Unlock()
}

func (v *healthVerdicts) makeSick(taskID, output string) {
	v.mu.Lock()
	v.sick[taskID] = output
	v.mu.Unlock()
}

func (v *healthVerdicts) verdict(taskID string) (bool, string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if out, ok := v.sick[taskID]; ok {
		return false, out
	}
	if !v.ready {
		return false, "not ready"
	}
	return true, "ready"
}

// checkedEchoRuntime is echoRuntime whose tasks run health check commands
// as healthVerdicts says.
type checkedEchoRuntime struct {
	*echoRuntime
	v *healthVerdicts
}

func (r checkedEchoRuntime) Controller(t runtime.Task) (runtime.Controller, error) {
	ctl, err := r.echoRuntime.Controller(t)
	if err != nil {
		return nil, err
	}
	return checkedEcho{echoTask: ctl.(*echoTask), v: r.v}, nil
}

type checkedEcho struct {
	*echoTask
	v *healthVerdicts
}

var _ runtime.Execer = checkedEcho{}

func (c checkedEcho) Exec(_ context.Context, req runtime.ExecRequest) (int, error) {
	ok, out := c.v.verdict(c.t.ID)
	_, _ = fmt.Fprint(req.Stdout, out)
	if ok {
		return 0, nil
	}
	return 1, nil
}

// A service with a health check enters the routing mesh only once healthy;
// a task that turns unhealthy is withdrawn, FAILED with the probe's output,
// and replaced by one that serves once healthy.
func TestHealthCheckGatesMeshAndReplaces(t *testing.T) {
	v := &healthVerdicts{sick: map[string]string{}}
	var mu sync.Mutex
	rts := map[string]*echoRuntime{}
	c := shoaltest.Start(t, shoaltest.Options{Managers: 1, Workers: 2, Mesh: true,
		Runtime: func(name string) runtime.Runtime {
			mu.Lock()
			defer mu.Unlock()
			r := newEchoRuntime()
			rts[name] = r
			return checkedEchoRuntime{echoRuntime: r, v: v}
		}})
	for _, n := range c.Nodes() {
		rts[n.Name].setIP(n.IP)
	}
	ctx := ctxT(t)
	spec := webSpec("web", 2)
	spec.Ports = []shoal.PortConfig{{Target: 80}}
	spec.Task.HealthCheck = &shoal.HealthCheck{Command: []string{"check"}, Interval: 20 * time.Millisecond,
		Timeout: 5 * time.Second, Retries: 2}
	svc, err := c.Client().CreateService(ctx, spec)
	require.NoError(t, err)
	c.WaitRunning(svc.ID, 2)
	port := publishedPort(t, c, "web", 80, shoal.TCP)

	// Running but starting: the mesh sends them nothing.
	for _, tk := range c.Tasks(svc.ID) {
		assert.Equal(t, shoal.HealthStarting, tk.Status.Health, "task %s", tk.ID)
	}
	for _, n := range c.Nodes() {
		got, _ := repliesFrom(askTCP, netip.AddrPortFrom(n.IP, port), 4)
		assert.Empty(t, got, "node %s routed to a task that is not healthy", n.Name)
	}

	v.setReady()
	waitMeshServes(t, c, svc.ID, port, 2, askTCP)
	for _, tk := range c.Tasks(svc.ID) {
		assert.Equal(t, shoal.HealthHealthy, tk.Status.Health, "task %s", tk.ID)
		assert.Equal(t, "ready", tk.Status.HealthOutput)
		assert.Equal(t, shoal.TaskRunning, tk.Status.State)
	}

	sick := runningTaskIDs(c, svc.ID)[0]
	v.makeSick(sick, "database unreachable")
	c.WaitFor("the sick task FAILED", func() bool {
		tk, err := c.Client().GetTask(ctx, sick)
		return err == nil && tk.Status.State == shoal.TaskFailed
	})
	tk, err := c.Client().GetTask(ctx, sick)
	require.NoError(t, err)
	assert.Equal(t, shoal.HealthUnhealthy, tk.Status.Health)
	assert.Equal(t, "database unreachable (exit code 1)", tk.Status.Err)
	assert.Equal(t, "database unreachable (exit code 1)", tk.Status.HealthOutput)
	assert.Contains(t, tk.Status.Message, "task unhealthy: 2 consecutive health checks failed")

	// Replaced under the restart policy; the mesh serves the two healthy
	// tasks, never the sick one.
	c.WaitRunning(svc.ID, 2)
	waitMeshServes(t, c, svc.ID, port, 2, askTCP)
	assert.NotContains(t, runningTaskIDs(c, svc.ID), sick)
	replacement := slices.IndexFunc(c.Tasks(svc.ID), func(x *shoal.Task) bool {
		return x.Slot == tk.Slot && x.ID != sick && x.Status.State == shoal.TaskRunning
	})
	assert.GreaterOrEqual(t, replacement, 0, "slot %d was replaced", tk.Slot)
}

// A command check of the process runtime runs as a program of the node in
// the task's environment and working directory.
func TestHealthCheckProcessRuntime(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Managers: 1, Workers: 1,
		Runtime: func(name string) runtime.Runtime {
			cfg := process.DefaultConfig()
			cfg.Dir = t.TempDir()
			rt, err := process.New(cfg)
			require.NoError(t, err)
			return rt
		}})
	ctx := ctxT(t)
	spec := shoal.ServiceSpec{Name: "proc", Replicas: 1, Task: shoal.TaskSpec{
		// The task says it is ready in its working directory; the check
		// reads it there and prints a variable of the task's environment.
		Command: []string{"/bin/sh", "-c", "echo up > ready; exec sleep 600"},
		Env:     []string{"GREETING=hello"},
		HealthCheck: &shoal.HealthCheck{Command: []string{"/bin/sh", "-c", `test -f ready && echo "$GREETING $(cat ready)"`},
			Interval: 50 * time.Millisecond, Timeout: 10 * time.Second, Retries: 3},
	}}
	svc, err := c.Client().CreateService(ctx, spec)
	require.NoError(t, err)
	c.WaitFor("a healthy task", func() bool {
		for _, tk := range c.Tasks(svc.ID) {
			if tk.Status.State == shoal.TaskRunning && tk.Status.Health == shoal.HealthHealthy {
				return true
			}
		}
		return false
	})
	tasks := c.Tasks(svc.ID)
	require.Len(t, tasks, 1)
	assert.Equal(t, "hello up\n", tasks[0].Status.HealthOutput)
}

// Bad health checks are refused through the public API, naming the field,
// and nothing is written.
func TestHealthCheckRefused(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{})
	ctx := ctxT(t)
	for _, tc := range []struct {
		name string
		hc   shoal.HealthCheck
		want string
	}{
		{"no test", shoal.HealthCheck{Interval: time.Second}, "ServiceSpec.Task.HealthCheck: needs a test"},
		{"two kinds", shoal.HealthCheck{Command: []string{"check"}, TCP: &shoal.TCPCheck{Port: 80}},
			"ServiceSpec.Task.HealthCheck: must have exactly one test, got Command and TCP"},
		{"port not exposed", shoal.HealthCheck{HTTP: &shoal.HTTPCheck{Port: 8080}},
			"ServiceSpec.Task.HealthCheck.HTTP.Port: 8080/tcp is not a target port of the service"},
		{"negative interval", shoal.HealthCheck{Command: []string{"check"}, Interval: -time.Second},
			"ServiceSpec.Task.HealthCheck.Interval: must be >= 0"},
		{"negative retries", shoal.HealthCheck{Command: []string{"check"}, Retries: -1},
			"ServiceSpec.Task.HealthCheck.Retries: must be >= 0"},
		{"negative status", shoal.HealthCheck{HTTP: &shoal.HTTPCheck{Port: 80, Status: shoal.StatusRange{Min: -1, Max: 200}}},
			"ServiceSpec.Task.HealthCheck.HTTP.Status.Min: must be an HTTP status code"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := webSpec("web", 1)
			spec.Ports = []shoal.PortConfig{{Target: 80}}
			hc := tc.hc
			spec.Task.HealthCheck = &hc
			_, err := c.Client().CreateService(ctx, spec)
			require.ErrorIs(t, err, shoal.ErrInvalidSpec)
			assert.Contains(t, err.Error(), tc.want)
			list, err := c.Client().ListServices(ctx)
			require.NoError(t, err)
			assert.Empty(t, list, "nothing is written")
		})
	}

	// A good check round-trips through the API.
	spec := webSpec("web", 1)
	spec.Ports = []shoal.PortConfig{{Target: 80}}
	want := &shoal.HealthCheck{HTTP: &shoal.HTTPCheck{Port: 80, Path: "/healthz", Status: shoal.StatusRange{Min: 200, Max: 204}},
		Interval: time.Second, Timeout: 2 * time.Second, Retries: 4, StartPeriod: 3 * time.Second, StartInterval: 500 * time.Millisecond}
	spec.Task.HealthCheck = want
	svc, err := c.Client().CreateService(ctx, spec)
	require.NoError(t, err)
	got, err := c.Client().GetService(ctx, svc.ID)
	require.NoError(t, err)
	assert.Equal(t, want, got.Spec.Task.HealthCheck)
}
