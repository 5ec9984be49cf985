package shoal_test

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal"
	"github.com/shoalhq/shoal/runtime"
	"github.com/shoalhq/shoal/runtime/conformance"
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

// An image's HEALTHCHECK is run inside the container (runc exec) unless the
// spec sets a check of its own or disables it.
func TestContainerImageHealthcheck(t *testing.T) {
	needContainers(t)
	cc := startContainerCluster(t, 0, false)
	img := conformance.ProgramImage(t, nil)
	cf, err := img.ConfigFile()
	require.NoError(t, err)
	cf = cf.DeepCopy()
	cf.Config.Healthcheck = &v1.HealthConfig{Test: []string{"CMD", "/testprog", "-cat", "/work/ready"},
		Interval: 100 * time.Millisecond, Timeout: 10 * time.Second, Retries: 2}
	img, err = mutate.ConfigFile(img, cf)
	require.NoError(t, err)
	ref := cc.reg.Push(t, "shoal/checked:1", img)
	ctx := ctxT(t)

	create := func(name string, hc *shoal.HealthCheck) *shoal.Service {
		t.Helper()
		svc, err := cc.Client().CreateService(ctx, shoal.ServiceSpec{Name: name, Replicas: 1, Task: shoal.TaskSpec{
			Image: ref, Args: []string{"-write", "/work/ready", "-sleep", "10m"}, StopGracePeriod: time.Second,
			HealthCheck: hc,
		}})
		require.NoError(t, err)
		return svc
	}
	image := create("image", nil)
	disabled := create("disabled", &shoal.HealthCheck{Disable: true})
	own := create("own", &shoal.HealthCheck{Command: []string{"/testprog", "-stdout", "not today", "-exit", "3"},
		Interval: 100 * time.Millisecond, Timeout: 10 * time.Second, Retries: 2})

	cc.WaitFor("the image's check passes", func() bool {
		ts := running(cc.Tasks(image.ID))
		return len(ts) == 1 && ts[0].Status.Health == shoal.HealthHealthy
	})
	assert.Equal(t, "written", running(cc.Tasks(image.ID))[0].Status.HealthOutput, "run inside the container")

	cc.WaitFor("the spec's own check fails the task", func() bool {
		for _, tk := range cc.Tasks(own.ID) {
			if tk.Status.State == shoal.TaskFailed && tk.Status.Health == shoal.HealthUnhealthy {
				assert.Equal(t, "not today\n(exit code 3)", tk.Status.Err)
				return true
			}
		}
		return false
	})

	ts := running(cc.Tasks(disabled.ID))
	require.Len(t, ts, 1)
	assert.Equal(t, shoal.HealthNone, ts[0].Status.Health, "Disable switches the image's check off")
}

// A service whose tasks enter the routing mesh only once GET /healthz on
// their port 8080 answers 2xx or 3xx, probed every 5s (every second in the
// first 30s after a start, whose failures do not count); three failures in
// a row replace the task.
func ExampleHealthCheck() {
	spec := shoal.ServiceSpec{
		Name:     "web",
		Replicas: 3,
		Ports:    []shoal.PortConfig{{Target: 8080, Published: 80}},
		Task: shoal.TaskSpec{
			Image: "registry.example/web:2",
			HealthCheck: &shoal.HealthCheck{
				HTTP:          &shoal.HTTPCheck{Port: 8080, Path: "/healthz"},
				Interval:      5 * time.Second,
				Timeout:       2 * time.Second,
				Retries:       3,
				StartPeriod:   30 * time.Second,
				StartInterval: time.Second,
			},
		},
	}
	fmt.Println(spec.Task.HealthCheck.HTTP.Port, spec.Task.HealthCheck.Retries)
	// Output: 8080 3
}
