package shoal_test

import (
	"bufio"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal"
	"github.com/shoalhq/shoal/runtime"
	"github.com/shoalhq/shoal/runtime/conformance"
	"github.com/shoalhq/shoal/runtime/runc"
	"github.com/shoalhq/shoal/shoaltest"
)

// needContainers skips a test that runs real containers where it cannot.
func needContainers(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: real containers take seconds")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: containers are made with namespaces, cgroups and mounts")
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("needs the runc binary (Debian's runc package)")
	}
}

// containerCluster is a shoaltest cluster whose nodes run containers under
// runc (shoaltest.Containers), pulling from an in-process registry.
type containerCluster struct {
	*shoaltest.Cluster
	reg *conformance.Registry
	ctr *shoaltest.Containers
}

func startContainerCluster(t *testing.T, workers int, mesh bool, edit ...func(*shoal.Config)) *containerCluster {
	t.Helper()
	cc := &containerCluster{reg: conformance.NewRegistry(t), ctr: shoaltest.NewContainers(t)}
	cc.ctr.Configure = func(_ string, cfg *runc.Config) { cfg.Images.InsecureRegistries = []string{cc.reg.Host} }
	cc.Cluster = shoaltest.Start(t, shoaltest.Options{
		Workers: workers, ManagersRunTasks: true, Mesh: mesh,
		HeartbeatPeriod: time.Second,
		Runtime:         cc.ctr.Runtime,
		Configure: func(_ string, cfg *shoal.Config) {
			cfg.InsecureRegistries = []string{cc.reg.Host}
			for _, e := range edit {
				e(cfg)
			}
		},
	})
	return cc
}

func (cc *containerCluster) runtimeOf(t *testing.T, task *shoal.Task) *runc.Runtime {
	t.Helper()
	n := cc.NodeByID(task.NodeID)
	require.NotNil(t, n, "node of task %s", task.ID)
	return cc.ctr.Of(n.Name)
}

// stdoutOf waits until a task's stdout holds want and returns it.
func (cc *containerCluster) stdoutOf(t *testing.T, task *shoal.Task, want string) string {
	t.Helper()
	path := cc.runtimeOf(t, task).LogPath(task.ID, runtime.StreamStdout)
	var out string
	cc.WaitFor("task "+task.ID+" printed "+want, func() bool {
		b, _ := os.ReadFile(path)
		out = string(b)
		return strings.Contains(out, want)
	})
	return out
}

func running(tasks []*shoal.Task) []*shoal.Task {
	var out []*shoal.Task
	for _, t := range tasks {
		if t.Status.State == shoal.TaskRunning && t.DesiredState == shoal.TaskRunning {
			out = append(out, t)
		}
	}
	return out
}

func hello(t *testing.T, addr string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.SetDeadline(time.Now().Add(10*time.Second)))
	line, err := bufio.NewReader(conn).ReadString('\n')
	require.NoError(t, err, "an answer through %s", addr)
	assert.Equal(t, "hello\n", line)
}

// TestContainerServiceOnRunc runs a service of real containers on three
// nodes: pinned image, limits, mounts and user applied, the routing mesh
// answering from container addresses, scaling, a node's containers
// rescheduled when it stops, and an image update rolled one task at a time.
func TestContainerServiceOnRunc(t *testing.T) {
	needContainers(t)
	cc := startContainerCluster(t, 2, true)
	v1 := cc.reg.Push(t, "shoal/web:1", conformance.ProgramImage(t, map[string]string{"version": "1"}))
	v2 := cc.reg.Push(t, "shoal/web:2", conformance.ProgramImage(t, map[string]string{"version": "2"}))
	src := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(src, "f"), []byte("bound\n"), 0o644))

	ctx := ctxT(t)
	spec := shoal.ServiceSpec{Name: "web", Replicas: 6,
		Ports:  []shoal.PortConfig{{Target: 8080}},
		Update: shoal.UpdatePolicy{Parallelism: 1},
		Task: shoal.TaskSpec{
			Image: v1,
			Args:  []string{"-id", "-cat", "/data/f", "-write", "/vol/w", "-listen", "8080", "-sleep", "10m"},
			Mounts: []shoal.Mount{
				{Type: shoal.MountBind, Source: src, Target: "/data", ReadOnly: true},
				{Type: shoal.MountVolume, Source: "webdata", Target: "/vol"},
			},
			Limits:          shoal.Resources{MemoryBytes: 64 << 20, Pids: 100},
			StopGracePeriod: time.Second,
		}}
	svc, err := cc.Client().CreateService(ctx, spec)
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(svc.Spec.Task.Image, v1+"@sha256:"), "pinned: %s", svc.Spec.Task.Image)
	per := cc.WaitRunning(svc.ID, 6)
	assert.Len(t, per, 3, "spread over the three nodes")

	tasks := running(cc.Tasks(svc.ID))
	require.Len(t, tasks, 6)
	for _, task := range tasks {
		require.Len(t, task.Endpoints, 1)
		ep := task.Endpoints[0].Addr
		assert.True(t, cc.ctr.Subnet(cc.NodeByID(task.NodeID).Name).Contains(ep.Addr()), "task %s's endpoint %s is its container's address on its node's bridge", task.ID, ep)
	}
	one := tasks[0]
	out := cc.stdoutOf(t, one, "listening")
	assert.Contains(t, out, "0:0\n", "root, the image's user")
	assert.Contains(t, out, "bound\n", "the bind mount visible")
	rt := cc.runtimeOf(t, one)
	vol, err := os.ReadFile(filepath.Join(rt.VolumePath("webdata"), "w"))
	require.NoError(t, err, "the volume written by the task")
	assert.Equal(t, "written", string(vol))
	limit, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/memory", rt.CgroupPath(one.ID), "memory.limit_in_bytes"))
	if os.IsNotExist(err) {
		limit, err = os.ReadFile(filepath.Join("/sys/fs/cgroup", rt.CgroupPath(one.ID), "memory.max"))
	}
	require.NoError(t, err)
	assert.Equal(t, "67108864", strings.TrimSpace(string(limit)), "the memory limit in the container's cgroup")

	// The routing mesh answers on every node, from container addresses.
	got, err := cc.Client().GetService(ctx, svc.ID)
	require.NoError(t, err)
	require.Len(t, got.Ports, 1)
	published := got.Ports[0].Published
	for _, n := range cc.Nodes() {
		cc.WaitFor("the mesh of "+n.Name+" has the service", func() bool {
			return len(n.Shoal().MeshEndpoints()) >= 6
		})
		hello(t, netip.AddrPortFrom(n.IP, published).String())
	}

	_, err = cc.Client().ScaleService(ctx, svc.ID, 8)
	require.NoError(t, err)
	cc.WaitRunning(svc.ID, 8)
	_, err = cc.Client().ScaleService(ctx, svc.ID, 4)
	require.NoError(t, err)
	cc.WaitRunning(svc.ID, 4)

	// A stopped worker's containers are rescheduled on the others.
	w := cc.Workers()[0]
	wid := w.ID()
	require.NoError(t, w.Stop())
	per = cc.WaitRunningWhere(svc.ID, 4, func(per map[string]int) bool { return per[wid] == 0 })
	assert.NotContains(t, per, wid)
	require.NoError(t, w.Restart())

	// An image update, one task at a time.
	var (
		minRunning = 4
		sampling   sync.WaitGroup
		done       = make(chan struct{})
	)
	sampling.Add(1)
	go func() {
		defer sampling.Done()
		for {
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if n := len(running(cc.Tasks(svc.ID))); n < minRunning {
				minRunning = n
			}
		}
	}()
	cur, err := cc.Client().GetService(ctx, svc.ID)
	require.NoError(t, err)
	next := cur.Spec
	next.Task.Image = v2
	updated, err := cc.Client().UpdateService(ctx, svc.ID, cur.Version, next)
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(updated.Spec.Task.Image, v2+"@sha256:"))
	cc.WaitFor("every task runs the new image", func() bool {
		rs := running(cc.Tasks(svc.ID))
		if len(rs) != 4 {
			return false
		}
		for _, task := range rs {
			if task.Spec.Image != updated.Spec.Task.Image {
				return false
			}
		}
		return true
	})
	close(done)
	sampling.Wait()
	assert.GreaterOrEqual(t, minRunning, 3, "at most one task is replaced at a time")
	for _, task := range running(cc.Tasks(svc.ID)) {
		cc.stdoutOf(t, task, "listening")
	}

	// The user of a task, resolved in the image's /etc/passwd.
	who, err := cc.Client().CreateService(ctx, shoal.ServiceSpec{Name: "who", Replicas: 1, Task: shoal.TaskSpec{
		Image: v1, Args: []string{"-id", "-sleep", "10m"}, User: "app", StopGracePeriod: time.Second}})
	require.NoError(t, err)
	cc.WaitRunning(who.ID, 1)
	assert.Equal(t, "1000:1000\n", cc.stdoutOf(t, running(cc.Tasks(who.ID))[0], "1000:1000"))
}

// TestContainersLiveRestore stops a node with LiveRestore: its containers
// keep running, and the node, started again, re-adopts the same containers
// (same PIDs) without the managers replacing a task.
func TestContainersLiveRestore(t *testing.T) {
	needContainers(t)
	cc := startContainerCluster(t, 1, false, func(cfg *shoal.Config) {
		cfg.LiveRestore = true
		// The worker is away for a few seconds: well within the grace of
		// three missed heartbeats, so nothing is replaced meanwhile.
		cfg.HeartbeatPeriod = 3 * time.Second
	})
	ref := cc.reg.Push(t, "shoal/web:1", conformance.ProgramImage(t, nil))
	ctx := ctxT(t)
	svc, err := cc.Client().CreateService(ctx, shoal.ServiceSpec{Name: "web", Replicas: 4, Task: shoal.TaskSpec{
		Image: ref, Args: []string{"-stdout", "up", "-sleep", "10m"}, StopGracePeriod: time.Second}})
	require.NoError(t, err)
	cc.WaitRunning(svc.ID, 4)
	w := cc.Workers()[0]
	pids := map[string]int{}
	for _, task := range running(cc.Tasks(svc.ID)) {
		if task.NodeID == w.ID() {
			cc.stdoutOf(t, task, "up")
			pids[task.ID] = containerPid(t, cc.runtimeOf(t, task), task.ID)
		}
	}
	require.NotEmpty(t, pids, "the worker runs some of the tasks")
	// A task that ends while its node is stopped.
	brief, err := cc.Client().CreateService(ctx, shoal.ServiceSpec{Name: "brief", Replicas: 1, Task: shoal.TaskSpec{
		Image: ref, Args: []string{"-stdout", "up", "-sleep", "1500ms", "-exit", "3"},
		Constraints: []string{"node.role==worker"}, Restart: shoal.RestartPolicy{Condition: shoal.RestartNever}}})
	require.NoError(t, err)
	cc.WaitRunning(brief.ID, 1)
	briefTask := running(cc.Tasks(brief.ID))[0]
	cc.stdoutOf(t, briefTask, "up")

	require.NoError(t, w.Stop())
	for id, pid := range pids {
		assert.NoError(t, syscall.Kill(pid, 0), "task %s's container runs on while its node is stopped", id)
	}
	briefPid := containerPid(t, cc.ctr.Of(w.Name), briefTask.ID)
	for syscall.Kill(briefPid, 0) == nil {
		time.Sleep(50 * time.Millisecond) // the brief task ends while no agent runs
	}
	require.NoError(t, w.Restart())
	cc.WaitRunning(svc.ID, 4)
	cc.WaitFor("the brief task's exit reported", func() bool {
		for _, task := range cc.Tasks(brief.ID) {
			if task.ID == briefTask.ID && task.Status.State == shoal.TaskFailed {
				return task.Status.ExitCode == 3
			}
		}
		return false
	})
	for _, task := range running(cc.Tasks(svc.ID)) {
		if pid, ok := pids[task.ID]; ok {
			assert.Equal(t, pid, containerPid(t, cc.runtimeOf(t, task), task.ID), "the same container")
			delete(pids, task.ID)
		}
	}
	assert.Empty(t, pids, "every task of the worker still runs, none replaced")

	// The re-adopted containers are the agent's again: removing the
	// service stops them.
	kept := map[string]int{}
	for _, task := range running(cc.Tasks(svc.ID)) {
		if task.NodeID == w.ID() {
			kept[task.ID] = containerPid(t, cc.runtimeOf(t, task), task.ID)
		}
	}
	require.NoError(t, cc.Client().RemoveService(ctx, svc.ID))
	cc.WaitFor("the re-adopted containers stopped", func() bool {
		for _, pid := range kept {
			if syscall.Kill(pid, 0) == nil {
				return false
			}
		}
		return true
	})
}

// containerPid reads the PID of a task's container from its runtime.
func containerPid(t *testing.T, rt *runc.Runtime, taskID string) int {
	t.Helper()
	pid, err := rt.ContainerPid(taskID)
	require.NoError(t, err)
	return pid
}

// TestContainerPullRefusedIsRejected: an image the registry does not have
// makes the task REJECTED with the registry's reason, and it is retried
// under the restart policy.
func TestContainerPullRefusedIsRejected(t *testing.T) {
	needContainers(t)
	cc := startContainerCluster(t, 0, false)
	ctx := ctxT(t)
	svc, err := cc.Client().CreateService(ctx, shoal.ServiceSpec{Name: "ghost", Replicas: 1, Task: shoal.TaskSpec{
		Image: cc.reg.Host + "/no/such:image@sha256:" + strings.Repeat("a", 64)}})
	require.NoError(t, err)
	var rejected []*shoal.Task
	cc.WaitFor("two rejected attempts", func() bool {
		rejected = nil
		for _, task := range cc.Tasks(svc.ID) {
			if task.Status.State == shoal.TaskRejected {
				rejected = append(rejected, task)
			}
		}
		return len(rejected) >= 2
	})
	assert.Contains(t, rejected[0].Status.Err, "pulling")
	assert.Contains(t, strings.ToLower(rejected[0].Status.Err), "unknown", "the registry's reason: %s", rejected[0].Status.Err)
}
