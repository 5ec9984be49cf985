package runc_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	goruntime "runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/shoalhq/shoal"
	"github.com/shoalhq/shoal/runtime"
	"github.com/shoalhq/shoal/runtime/conformance"
	"github.com/shoalhq/shoal/runtime/runc"
	"github.com/shoalhq/shoal/shoaltest"
)

// The benchmarks of this file measure the runtime against a baseline run
// in the same benchmark, alternating with it container by container (or
// batch by batch), so that both see the same load of the machine, and
// report each figure with its ratio to the baseline. For the runtime the
// baseline is the floor of what it does, `runc run --detach` of the same
// bundle started by hand from this process; for the agent's path it is the
// runtime's. Run them with
//
//	go test -bench . -run '^$' ./runtime/runc/
//
// The container benchmarks need root and runc, and skip without them.

// benchSleep is how long the benchmarks' containers would run: longer than
// any round, so every container is running when it is measured and removed.
const benchSleep = "10m"

// benchEnv is a runtime whose image store holds the test program's image,
// with what the floor's containers need.
type benchEnv struct {
	rt        *runc.Runtime
	runc      string // the runc binary
	ref       string // the image by digest, as the managers pin a service's image
	digest    string
	floorDir  string // bundles of the floor's containers
	floorRoot string // runc --root of the floor's containers

	mu        sync.Mutex
	subjects  map[string]runtime.Controller // started through the runtime, not yet removed (guarded by mu)
	floors    map[string]*floorContainer    // started by hand, not yet removed (guarded by mu)
	templates []runtime.Controller          // prepared for their bundles, removed at the end (guarded by mu)
}

// newBenchEnv makes a runtime on a bridge of its own and wraps it (see
// wrapRuntime).
func newBenchEnv(b *testing.B) *benchEnv {
	b.Helper()
	needRunc(b)
	reg := newRegistry(b)
	return wrapRuntime(b, newRuntime(b, reg, b.TempDir()), reg)
}

// wrapRuntime pulls the test program's image into rt's store once and
// makes this process a child subreaper, so the floor's containers,
// orphaned when `runc run --detach` exits, are reaped here and not left as
// zombies of the node's PID 1. Every container left is removed at the end.
func wrapRuntime(b *testing.B, rt *runc.Runtime, reg *testRegistry) *benchEnv {
	b.Helper()
	bin, err := exec.LookPath("runc")
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	e := &benchEnv{
		rt:        rt,
		runc:      bin,
		floorDir:  filepath.Join(dir, "floor"),
		floorRoot: filepath.Join(dir, "floor-runc"),
		subjects:  make(map[string]runtime.Controller),
		floors:    make(map[string]*floorContainer),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	img, err := e.rt.Images().Pull(ctx, reg.ref, runtime.RegistryAuth{})
	if err != nil {
		b.Fatal(err)
	}
	e.digest = img.Digest
	e.ref = reg.ref + "@" + img.Digest
	for _, d := range []string{e.floorDir, e.floorRoot} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			b.Fatal(err)
		}
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		b.Fatalf("becoming a child subreaper (to reap the floor's containers): %v", err)
	}
	// Registered after rt's cleanup, so it runs before the bridge is torn
	// down.
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := e.removeAll(ctx); err != nil {
			b.Error(err)
		}
		e.mu.Lock()
		templates := e.templates
		e.mu.Unlock()
		for _, c := range templates {
			if err := c.Remove(ctx); err != nil {
				b.Error(err)
			}
		}
		_ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
	})
	return e
}

// spec is the long-running spec of the benchmarks' containers.
func (e *benchEnv) spec(hostNetwork bool) runtime.Spec {
	return runtime.Spec{Image: e.ref, Args: []string{"-sleep", benchSleep}, HostNetwork: hostNetwork}
}

// template prepares (and never starts) a container whose bundle the
// floor's containers copy; it is removed at the end.
func (e *benchEnv) template(b *testing.B, id string, hostNetwork bool) *specs.Spec {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := e.rt.Controller(runtime.Task{ID: id, ServiceName: "bench", Spec: e.spec(hostNetwork)})
	if err != nil {
		b.Fatal(err)
	}
	e.mu.Lock()
	e.templates = append(e.templates, c)
	e.mu.Unlock()
	if err := c.Prepare(ctx); err != nil {
		b.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(c.(*runc.Controller).Dir(), "bundle", "config.json"))
	if err != nil {
		b.Fatal(err)
	}
	var s specs.Spec
	if err := json.Unmarshal(raw, &s); err != nil {
		b.Fatal(err)
	}
	return &s
}

// startSubject is the runtime's path from an assigned task to a running
// container: Controller, Prepare, Start.
func (e *benchEnv) startSubject(ctx context.Context, id string, spec runtime.Spec) (prepare, start time.Duration, err error) {
	t0 := time.Now()
	c, err := e.rt.Controller(runtime.Task{ID: id, ServiceName: "bench", Spec: spec})
	if err != nil {
		return 0, 0, err
	}
	e.mu.Lock()
	e.subjects[id] = c
	e.mu.Unlock()
	if err := c.Prepare(ctx); err != nil {
		return 0, 0, err
	}
	t1 := time.Now()
	if err := c.Start(ctx); err != nil {
		return 0, 0, err
	}
	return t1.Sub(t0), time.Since(t1), nil
}

// floorContainer is a container run by hand with `runc run --detach`.
type floorContainer struct {
	id       string
	bundle   string
	pid      int  // the container's init, this process's child once runc exits
	attached bool // on the runtime's bridge
	mounted  bool // its root filesystem is the image store's mount
}

// prepareFloor writes the bundle of a floor container: the template's
// config.json with the container's own root filesystem (the image store's
// overlay mount for its ID), cgroup and, when the template has one, a
// network namespace of its own on the runtime's bridge.
func (e *benchEnv) prepareFloor(ctx context.Context, tmpl *specs.Spec, id string) (*floorContainer, error) {
	f := &floorContainer{id: id, bundle: filepath.Join(e.floorDir, id)}
	e.mu.Lock()
	e.floors[id] = f
	e.mu.Unlock()
	raw, err := json.Marshal(tmpl)
	if err != nil {
		return nil, err
	}
	var s specs.Spec
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, err
	}
	f.mounted = true
	if s.Root.Path, err = e.rt.Images().Mount(ctx, e.digest, id); err != nil {
		return nil, err
	}
	s.Linux.CgroupsPath = path.Join(path.Dir(s.Linux.CgroupsPath), id)
	for i, ns := range s.Linux.Namespaces {
		if ns.Type != specs.NetworkNamespace {
			continue
		}
		f.attached = true
		att, err := e.rt.Bridge().Attach(ctx, id)
		if err != nil {
			return nil, err
		}
		s.Linux.Namespaces[i].Path = att.NetnsPath
	}
	if err := os.MkdirAll(f.bundle, 0o700); err != nil {
		return nil, err
	}
	out, err := json.Marshal(&s)
	if err != nil {
		return nil, err
	}
	return f, os.WriteFile(filepath.Join(f.bundle, "config.json"), out, 0o600)
}

// runFloor runs a prepared floor container with `runc run --detach` and
// returns how long runc took.
func (e *benchEnv) runFloor(ctx context.Context, f *floorContainer) (time.Duration, error) {
	out, err := os.Create(filepath.Join(f.bundle, "runc.out"))
	if err != nil {
		return 0, err
	}
	defer out.Close()
	pidFile := filepath.Join(f.bundle, "container.pid")
	// runc hands its stdio to the container: a file, so that nothing here
	// waits for the container to close it.
	cmd := exec.CommandContext(ctx, e.runc, "--root", e.floorRoot, "run", "--detach", "--pid-file", pidFile, "--bundle", f.bundle, f.id)
	cmd.Stdout, cmd.Stderr = out, out
	t0 := time.Now()
	err = cmd.Run()
	d := time.Since(t0)
	if err != nil {
		msg, _ := os.ReadFile(out.Name())
		return 0, fmt.Errorf("runc run %s: %w: %s", f.id, err, strings.TrimSpace(string(msg)))
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return 0, err
	}
	if f.pid, err = strconv.Atoi(strings.TrimSpace(string(b))); err != nil {
		return 0, fmt.Errorf("%s: %w", pidFile, err)
	}
	return d, nil
}

// removeFloor kills a floor container, reaps its init, deletes it from
// runc and releases its root filesystem and network namespace.
func (e *benchEnv) removeFloor(ctx context.Context, f *floorContainer) error {
	var errs []error
	if f.pid > 0 {
		_ = exec.CommandContext(ctx, e.runc, "--root", e.floorRoot, "kill", f.id, "KILL").Run()
		errs = append(errs, reap(ctx, f.pid))
	}
	if out, err := exec.CommandContext(ctx, e.runc, "--root", e.floorRoot, "delete", "--force", f.id).CombinedOutput(); err != nil && !strings.Contains(string(out), "not exist") {
		errs = append(errs, fmt.Errorf("runc delete %s: %w: %s", f.id, err, out))
	}
	if f.attached {
		errs = append(errs, e.rt.Bridge().Detach(ctx, f.id))
	}
	if f.mounted {
		errs = append(errs, e.rt.Images().Unmount(ctx, f.id))
	}
	errs = append(errs, os.RemoveAll(f.bundle))
	if err := errors.Join(errs...); err != nil {
		return err
	}
	e.mu.Lock()
	delete(e.floors, f.id)
	e.mu.Unlock()
	return nil
}

// reap waits for pid, a child of this process, to exit, polling until ctx
// ends.
func reap(ctx context.Context, pid int) error {
	for {
		var ws unix.WaitStatus
		got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		switch {
		case got == pid:
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return fmt.Errorf("reaping the floor's container %d: %w", pid, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("reaping the floor's container %d: %w", pid, ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// removeAll removes every subject and floor container left, ten at a time.
func (e *benchEnv) removeAll(ctx context.Context) error {
	e.mu.Lock()
	var jobs []func() error
	for _, c := range e.subjects {
		id := c.(*runc.Controller).Task().ID
		jobs = append(jobs, func() error {
			if err := c.Remove(ctx); err != nil {
				return err
			}
			e.mu.Lock()
			delete(e.subjects, id)
			e.mu.Unlock()
			return nil
		})
	}
	for _, f := range e.floors {
		jobs = append(jobs, func() error { return e.removeFloor(ctx, f) })
	}
	e.mu.Unlock()
	return inBatches(len(jobs), 10, func(i int) error { return jobs[i]() })
}

// inBatches runs fn(0..n-1), size calls at a time, each batch finishing
// before the next starts.
func inBatches(n, size int, fn func(i int) error) error {
	var errs []error
	for lo := 0; lo < n; lo += size {
		hi := min(lo+size, n)
		batchErrs := make([]error, hi-lo)
		var wg sync.WaitGroup
		for i := lo; i < hi; i++ {
			wg.Go(func() { batchErrs[i-lo] = fn(i) })
		}
		wg.Wait()
		errs = append(errs, batchErrs...)
	}
	return errors.Join(errs...)
}

// percentile is the nearest-rank percentile p (0 < p <= 1) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	s := slices.Sorted(slices.Values(ds))
	k := int(math.Ceil(p*float64(len(s)))) - 1
	return s[max(0, min(k, len(s)-1))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkStartCached measures a task's start with its image in the
// store: Controller, Prepare and Start (the agent's path from ASSIGNED to
// RUNNING at the runtime), against the floor, `runc run --detach` of a
// bundle made the same way (the prepared template's config.json with the
// container's own overlay mount, cgroup and, with network=bridge, its own
// network namespace from the runtime's bridge; making that bundle is not
// timed, it is floor-setup). Each round starts 50 containers of each kind,
// alternately, and removes them all. p99 is the nearest-rank percentile:
// of 50, the slowest. p50-ratio-with-setup compares the subject with the
// floor and its setup together: the same work, done without Shoal.
//
// network=host runs both without a network namespace of their own (the
// subject with Spec.HostNetwork), so neither pays for one; network=bridge
// is what a task normally gets.
func BenchmarkStartCached(b *testing.B) {
	const perRound = 50
	for _, bc := range []struct {
		name string
		host bool
	}{{"network=bridge", false}, {"network=host", true}} {
		b.Run(bc.name, func(b *testing.B) {
			e := newBenchEnv(b)
			tmpl := e.template(b, "template", bc.host)
			var subject, prepare, start, floor, floorSetup, floorAll []time.Duration
			round := 0
			for b.Loop() {
				round++
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
				for i := range perRound {
					id := fmt.Sprintf("s%d-%d", round, i)
					p, s, err := e.startSubject(ctx, id, e.spec(bc.host))
					if err != nil {
						b.Fatal(err)
					}
					subject, prepare, start = append(subject, p+s), append(prepare, p), append(start, s)

					t0 := time.Now()
					f, err := e.prepareFloor(ctx, tmpl, fmt.Sprintf("f%d-%d", round, i))
					if err != nil {
						b.Fatal(err)
					}
					floorSetup = append(floorSetup, time.Since(t0))
					d, err := e.runFloor(ctx, f)
					if err != nil {
						b.Fatal(err)
					}
					floor = append(floor, d)
					floorAll = append(floorAll, floorSetup[len(floorSetup)-1]+d)
				}
				b.StopTimer()
				if err := e.removeAll(ctx); err != nil {
					b.Fatal(err)
				}
				cancel()
				b.StartTimer()
			}
			sp50, sp99 := percentile(subject, .5), percentile(subject, .99)
			fp50, fp99 := percentile(floor, .5), percentile(floor, .99)
			b.ReportMetric(ms(sp50), "p50-ms")
			b.ReportMetric(ms(sp99), "p99-ms")
			b.ReportMetric(ms(fp50), "floor-p50-ms")
			b.ReportMetric(ms(fp99), "floor-p99-ms")
			b.ReportMetric(float64(sp50)/float64(fp50), "p50-ratio")
			b.ReportMetric(float64(sp99)/float64(fp99), "p99-ratio")
			b.ReportMetric(ms(percentile(prepare, .5)), "prepare-p50-ms")
			b.ReportMetric(ms(percentile(start, .5)), "start-p50-ms")
			b.ReportMetric(ms(percentile(prepare, .99)), "prepare-p99-ms")
			b.ReportMetric(ms(percentile(start, .99)), "start-p99-ms")
			b.ReportMetric(ms(percentile(floorSetup, .5)), "floor-setup-p50-ms")
			// The floor with its root filesystem and network namespace made
			// by hand too: the same work as the subject's, without Shoal.
			b.ReportMetric(float64(sp50)/float64(percentile(floorAll, .5)), "p50-ratio-with-setup")
		})
	}
}

// BenchmarkHundredContainers starts 100 long-running containers through
// one runtime, one at a time (sequential) or ten at once (batch=10), and
// as many floor containers (`runc run --detach`, bundles made beforehand
// and not timed), alternating subject and floor container by container or
// batch by batch. It reports both start rates and their ratio, and, with
// the 100 subject containers running (the floor's removed), the memory
// they cost: this process's (the agent's) resident set and Go heap after a
// collection, its goroutines, and the shims' and the containers' resident
// sets (VmRSS, which counts the shim binary's shared pages in every shim,
// and PSS, which shares them out), each per container. A first container,
// started and removed before the rounds, pays the one-time costs (the
// bridge, the image's first mount).
func BenchmarkHundredContainers(b *testing.B) {
	const n = 100
	for _, bc := range []struct {
		name  string
		batch int
	}{{"sequential", 1}, {"batch=10", 10}} {
		b.Run(bc.name, func(b *testing.B) {
			e := newBenchEnv(b)
			tmpl := e.template(b, "template", false)
			spec := e.spec(false)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			if _, _, err := e.startSubject(ctx, "warmup", spec); err != nil {
				b.Fatal(err)
			}
			if err := e.removeAll(ctx); err != nil {
				b.Fatal(err)
			}
			cancel()
			var subjectTime, floorTime time.Duration
			var sum memFigures
			rounds := 0
			for b.Loop() {
				rounds++
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
				before, err := readAgentMem()
				if err != nil {
					b.Fatal(err)
				}
				for lo := 0; lo < n; lo += bc.batch {
					k := min(bc.batch, n-lo)
					t0 := time.Now()
					err := inBatches(k, k, func(i int) error {
						_, _, err := e.startSubject(ctx, fmt.Sprintf("s%d-%d", rounds, lo+i), spec)
						return err
					})
					subjectTime += time.Since(t0)
					if err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
					fs := make([]*floorContainer, k)
					for i := range fs {
						if fs[i], err = e.prepareFloor(ctx, tmpl, fmt.Sprintf("f%d-%d", rounds, lo+i)); err != nil {
							b.Fatal(err)
						}
					}
					b.StartTimer()
					t0 = time.Now()
					err = inBatches(k, k, func(i int) error {
						_, err := e.runFloor(ctx, fs[i])
						return err
					})
					floorTime += time.Since(t0)
					if err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				e.mu.Lock()
				floors := slices.Collect(maps.Values(e.floors))
				e.mu.Unlock()
				if err := inBatches(len(floors), 10, func(i int) error { return e.removeFloor(ctx, floors[i]) }); err != nil {
					b.Fatal(err)
				}
				after, err := readAgentMem()
				if err != nil {
					b.Fatal(err)
				}
				procs, err := e.processMem()
				if err != nil {
					b.Fatal(err)
				}
				if len(procs.shims) != n {
					b.Fatalf("%d shims found, want %d", len(procs.shims), n)
				}
				m := memFigures{
					agentRSS:   float64(after.rssKiB) - float64(before.rssKiB),
					agentHeap:  (float64(after.heap) - float64(before.heap)) / 1024,
					goroutines: float64(after.goroutines - before.goroutines),
				}
				var errs [3]error
				m.shimRSS, errs[0] = sumKiB(procs.shims, false)
				m.shimPSS, errs[1] = sumKiB(procs.shims, true)
				m.ctrRSS, errs[2] = sumKiB(procs.containers, false)
				if err := errors.Join(errs[:]...); err != nil {
					b.Fatal(err)
				}
				sum.add(m)
				if err := e.removeAll(ctx); err != nil {
					b.Fatal(err)
				}
				cancel()
				b.StartTimer()
			}
			total := float64(rounds * n)
			b.ReportMetric(total/subjectTime.Seconds(), "containers/s")
			b.ReportMetric(total/floorTime.Seconds(), "floor-containers/s")
			b.ReportMetric(float64(subjectTime)/float64(floorTime), "time-ratio")
			b.ReportMetric(sum.agentRSS/total, "agent-KiB/container")
			b.ReportMetric(sum.agentHeap/total, "agent-heap-KiB/container")
			b.ReportMetric(sum.goroutines/total, "goroutines/container")
			b.ReportMetric(sum.shimRSS/total, "shim-KiB/container")
			b.ReportMetric(sum.shimPSS/total, "shim-pss-KiB/container")
			b.ReportMetric(sum.ctrRSS/total, "ctr-KiB/container")
		})
	}
}

// memFigures are memory totals in KiB (goroutines in number).
type memFigures struct {
	agentRSS, agentHeap, goroutines, shimRSS, shimPSS, ctrRSS float64
}

func (m *memFigures) add(o memFigures) {
	m.agentRSS += o.agentRSS
	m.agentHeap += o.agentHeap
	m.goroutines += o.goroutines
	m.shimRSS += o.shimRSS
	m.shimPSS += o.shimPSS
	m.ctrRSS += o.ctrRSS
}

// agentMem is this process's memory after a collection that returned
// what it could to the system.
type agentMem struct {
	rssKiB     uint64
	heap       uint64 // bytes of live Go heap objects
	goroutines int
}

func readAgentMem() (agentMem, error) {
	debug.FreeOSMemory()
	var ms goruntime.MemStats
	goruntime.ReadMemStats(&ms)
	rss, err := procKiB("/proc/self/status", "VmRSS:")
	return agentMem{rssKiB: rss, heap: ms.HeapAlloc, goroutines: goruntime.NumGoroutine()}, err
}

// procMem holds the PIDs of the running subject containers' shims and
// inits.
type procMem struct {
	shims, containers []int
}

// processMem finds the shim (from shim.pid) and the container's init of
// every running subject container.
func (e *benchEnv) processMem() (procMem, error) {
	var p procMem
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, c := range e.subjects {
		rc := c.(*runc.Controller)
		raw, err := os.ReadFile(filepath.Join(rc.Dir(), "shim.pid"))
		if err != nil {
			return p, err
		}
		f := strings.Fields(string(raw))
		if len(f) == 0 {
			return p, fmt.Errorf("%s/shim.pid: empty", rc.Dir())
		}
		pid, err := strconv.Atoi(f[0])
		if err != nil {
			return p, fmt.Errorf("%s/shim.pid: %w", rc.Dir(), err)
		}
		p.shims = append(p.shims, pid)
		p.containers = append(p.containers, rc.Pid())
	}
	return p, nil
}

// sumKiB adds up the VmRSS (or, with pss, the Pss) of pids, in KiB.
func sumKiB(pids []int, pss bool) (float64, error) {
	var total float64
	for _, pid := range pids {
		file, key := fmt.Sprintf("/proc/%d/status", pid), "VmRSS:"
		if pss {
			file, key = fmt.Sprintf("/proc/%d/smaps_rollup", pid), "Pss:"
		}
		kib, err := procKiB(file, key)
		if err != nil {
			return 0, err
		}
		total += float64(kib)
	}
	return total, nil
}

// procKiB reads the "key: N kB" line of a /proc file.
func procKiB(file, key string) (uint64, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(raw)) {
		if rest, ok := strings.CutPrefix(line, key); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				break
			}
			return strconv.ParseUint(f[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("%s: no %s line", file, key)
}

// BenchmarkShimExec measures what every Start pays before the shim runs
// runc: starting the shim program (this test binary; in production the
// host program) up to the package's init function, which turns it into the
// shim. The shim is pointed at a directory that does not exist, so it ends
// at its first step. Two baselines alternate with it: a fork and exec of
// /bin/true from this process (true-p50-ms), and of the conformance test
// program, a Go program of the standard library alone, which is what a
// shim binary with no other dependency would cost to start (go-p50-ms).
func BenchmarkShimExec(b *testing.B) {
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	trueBin, err := exec.LookPath("true")
	if err != nil {
		b.Skip("needs a true program in PATH for the baseline")
	}
	small := conformance.Program(b)
	missing := filepath.Join(b.TempDir(), "missing")
	var shim, base, smallGo []time.Duration
	for b.Loop() {
		cmd := exec.Command(self)
		cmd.Env = []string{"SHOAL_RUNC_SHIM=" + missing}
		t0 := time.Now()
		err := cmd.Run()
		shim = append(shim, time.Since(t0))
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 3 {
			b.Fatalf("the shim with a missing directory: %v, want exit status 3", err)
		}
		t0 = time.Now()
		if err := exec.Command(trueBin).Run(); err != nil {
			b.Fatal(err)
		}
		base = append(base, time.Since(t0))
		t0 = time.Now()
		if err := exec.Command(small).Run(); err != nil {
			b.Fatal(err)
		}
		smallGo = append(smallGo, time.Since(t0))
	}
	sp50, bp50, gp50 := percentile(shim, .5), percentile(base, .5), percentile(smallGo, .5)
	b.ReportMetric(ms(sp50), "p50-ms")
	b.ReportMetric(ms(percentile(shim, .99)), "p99-ms")
	b.ReportMetric(ms(bp50), "true-p50-ms")
	b.ReportMetric(ms(gp50), "go-p50-ms")
	b.ReportMetric(float64(sp50)/float64(bp50), "p50-ratio")
	b.ReportMetric(float64(sp50)/float64(gp50), "go-p50-ratio")
}

// BenchmarkAgentStart measures the whole path of a task on a shoaltest
// cluster (one manager, one worker whose runtime is a runc Runtime): from
// ScaleService adding a replica to the watch delivering its task as
// RUNNING, with nothing subtracted (the control API, Raft, the
// orchestrator, the scheduler, the dispatcher, the agent, the runtime and
// the status report back). It alternates with the runtime path alone
// (Controller, Prepare, Start on the worker's runtime), which is the
// baseline of the ratios. Each round scales one service from 0 to 20
// replicas, one at a time, then removes it and its 20 baseline
// containers. assigned-ms and reported-ms are the task's status
// timestamps of ASSIGNED (the scheduler's) and RUNNING (the agent's), from
// the scale call.
func BenchmarkAgentStart(b *testing.B) {
	const perRound = 20
	needRunc(b)
	reg := newRegistry(b)
	var mu sync.Mutex
	rts := make(map[string]*runc.Runtime)
	cl := shoaltest.Start(b, shoaltest.Options{
		Workers: 1,
		Runtime: func(name string) runtime.Runtime {
			rt := newRuntime(b, reg, b.TempDir())
			mu.Lock()
			rts[name] = rt
			mu.Unlock()
			return rt
		},
		Configure: func(_ string, cfg *shoal.Config) { cfg.InsecureRegistries = []string{reg.host} },
	})
	mu.Lock()
	worker := rts[cl.Workers()[0].Name]
	mu.Unlock()
	e := wrapRuntime(b, worker, reg)
	// Cleanups run last first: the nodes stop before the bridges go.
	b.Cleanup(cl.Stop)
	client := cl.Client()

	var agent, direct, assigned, reported []time.Duration
	round := 0
	for b.Loop() {
		round++
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		svc, err := client.CreateService(ctx, shoal.ServiceSpec{
			Name: fmt.Sprintf("bench%d", round),
			Task: shoal.TaskSpec{Image: reg.ref, Args: []string{"-sleep", benchSleep}},
		})
		if err != nil {
			b.Fatal(err)
		}
		if svc.Spec.Task.Image != e.ref {
			b.Fatalf("the service's image is %s, want it pinned to %s", svc.Spec.Task.Image, e.ref)
		}
		events, err := client.Watch(ctx, shoal.WatchFilter{Kinds: []shoal.ObjectKind{shoal.KindTask}, Services: []string{svc.ID}})
		if err != nil {
			b.Fatal(err)
		}
		for i := 1; i <= perRound; i++ {
			t0 := time.Now()
			if _, err := client.ScaleService(ctx, svc.ID, i); err != nil {
				b.Fatal(err)
			}
			var assignedAt time.Time
			for running := false; !running; {
				var ev shoal.Event
				select {
				case ev = <-events:
				case <-ctx.Done():
					b.Fatalf("waiting for replica %d to run: %v", i, ctx.Err())
				}
				t := ev.Task
				if t == nil || t.Slot != uint64(i) {
					continue
				}
				switch st := t.Status.State; {
				case st == shoal.TaskAssigned:
					assignedAt = t.Status.Timestamp
				case st == shoal.TaskRunning:
					agent = append(agent, time.Since(t0))
					reported = append(reported, t.Status.Timestamp.Sub(t0))
					running = true
				case st > shoal.TaskRunning:
					b.Fatalf("replica %d: %s: %s %s", i, st, t.Status.Message, t.Status.Err)
				}
			}
			if !assignedAt.IsZero() {
				assigned = append(assigned, assignedAt.Sub(t0))
			}
			p, s, err := e.startSubject(ctx, fmt.Sprintf("d%d-%d", round, i), e.spec(false))
			if err != nil {
				b.Fatal(err)
			}
			direct = append(direct, p+s)
		}
		b.StopTimer()
		if err := client.RemoveService(ctx, svc.ID); err != nil {
			b.Fatal(err)
		}
		if err := e.removeAll(ctx); err != nil {
			b.Fatal(err)
		}
		// The agent removes the service's containers once the managers drop
		// its tasks.
		for {
			left, err := worker.Restorable(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if len(left) == 0 {
				break
			}
			select {
			case <-ctx.Done():
				b.Fatalf("the worker still has containers %v: %v", left, ctx.Err())
			case <-time.After(50 * time.Millisecond):
			}
		}
		cancel()
		b.StartTimer()
	}
	ap50, ap99 := percentile(agent, .5), percentile(agent, .99)
	dp50, dp99 := percentile(direct, .5), percentile(direct, .99)
	b.ReportMetric(ms(ap50), "p50-ms")
	b.ReportMetric(ms(ap99), "p99-ms")
	b.ReportMetric(ms(dp50), "runtime-p50-ms")
	b.ReportMetric(ms(dp99), "runtime-p99-ms")
	b.ReportMetric(float64(ap50)/float64(dp50), "p50-ratio")
	b.ReportMetric(float64(ap99)/float64(dp99), "p99-ratio")
	if len(assigned) > 0 {
		b.ReportMetric(ms(percentile(assigned, .5)), "assigned-p50-ms")
	}
	b.ReportMetric(ms(percentile(reported, .5)), "reported-p50-ms")
}
