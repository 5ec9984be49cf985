package shoal_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal"
)

// Crash test knobs (environment of `go test`).
const (
	// crashEnvCycles is how many kill/restart cycles to run; default
	// crashDefaultCycles (2 with -short).
	crashEnvCycles = "SHOAL_CRASH_CYCLES"
	// crashEnvSeed replays a run: the seed is logged by every run.
	crashEnvSeed = "SHOAL_CRASH_SEED"
)

const (
	crashDefaultCycles = 5
	// crashWriters concurrent writers share the manager's fsyncs, so a kill
	// lands while several writes are at different stages.
	crashWriters = 8
	// crashSnapshotInterval is the Raft snapshot interval of the odd
	// cycles' managers: small, so that snapshots and log compaction run
	// while the manager is being killed.
	crashSnapshotInterval = "100"
)

// TestCrashManagerSIGKILLKeepsAcknowledgedWrites runs a real manager process
// (this test binary re-executed), writes to it from concurrent clients, kills
// it with SIGKILL at a random moment mid-write, restarts it from its StateDir
// and checks that every write it acknowledged is there, and nothing that was
// never sent. Some cycles also kill the manager while it restarts (replaying
// its log) and some run with frequent snapshots, so kills land during
// snapshotting and compaction too.
func TestCrashManagerSIGKILLKeepsAcknowledgedWrites(t *testing.T) {
	if goruntime.GOOS == "windows" || goruntime.GOOS == "plan9" || goruntime.GOOS == "js" || goruntime.GOOS == "wasip1" {
		t.Skipf("the crash test kills child processes with SIGKILL, which %s does not have", goruntime.GOOS)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Skipf("the crash test re-executes the test binary, whose path is unknown: %v", err)
	}
	cycles := crashDefaultCycles
	if testing.Short() {
		cycles = 2
	}
	if s := os.Getenv(crashEnvCycles); s != "" {
		cycles, err = strconv.Atoi(s)
		require.NoError(t, err, "%s", crashEnvCycles)
		require.Positive(t, cycles, "%s", crashEnvCycles)
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv(crashEnvSeed); s != "" {
		seed, err = strconv.ParseUint(s, 10, 64)
		require.NoError(t, err, "%s", crashEnvSeed)
	}
	t.Logf("seed %d, %d cycles (replay with %s=%d %s=%d)", seed, cycles, crashEnvSeed, seed, crashEnvCycles, cycles)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("FAILED with seed %d: replay with %s=%d %s=%d go test -run Crash .", seed, crashEnvSeed, seed, crashEnvCycles, cycles)
		}
	})
	rng := rand.New(rand.NewPCG(seed, 0x5ea1))

	// Bounds the whole test; a cycle takes about a second.
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(cycles)*30*time.Second+time.Minute)
	defer cancel()

	dir := t.TempDir()
	addr := crashFreeAddr(t)
	h := &crashHistory{acked: map[string]int{}, attempted: map[string]int{}}

	child := startCrashChild(ctx, t, exe, "init", dir, addr, "")
	require.Equal(t, addr, child.addr)
	totalStart := time.Now()
	for cycle := 1; cycle <= cycles; cycle++ {
		delay := time.Duration(50+rng.IntN(250)) * time.Millisecond
		res := crashWriteAndKill(ctx, t, child, cycle, delay)
		h.add(cycle, res)

		snapshot := ""
		if cycle%2 == 1 {
			snapshot = crashSnapshotInterval
		}
		// Every other cycle (at random) the restarting manager is killed
		// too, a few milliseconds in: during its log replay or election.
		if rng.IntN(2) == 0 {
			early := time.Duration(rng.IntN(40)) * time.Millisecond
			crashKillDuringStart(ctx, t, exe, dir, addr, snapshot, early)
			t.Logf("cycle %d: also killed a restarting manager %v after its exec", cycle, early)
		}
		restartStart := time.Now()
		child = startCrashChild(ctx, t, exe, "restart", dir, addr, snapshot)
		restarted := time.Since(restartStart)
		present := crashVerify(ctx, t, child.addr, crashClientCredsDir(dir), h, cycle)
		t.Logf("cycle %d: killed %v after the first ack with %d writes in flight; %d acknowledged this cycle, %d in all, all present after restart (restart took %v); %d unacknowledged writes of this cycle were kept",
			cycle, delay, res.inflightAtKill, len(res.acked), len(h.acked), restarted.Round(time.Millisecond), present.unackedKept)
		if t.Failed() {
			return
		}
	}
	// A clean stop after all those crashes works too.
	child.stopGracefully(t)
	t.Logf("%d cycles, %d acknowledged writes checked after the last restart, %v", cycles, len(h.acked), time.Since(totalStart).Round(time.Millisecond))
}

// crashHistory is every write of the test: names acknowledged and names sent,
// with the cycle that sent them.
type crashHistory struct {
	acked     map[string]int
	attempted map[string]int
}

func (h *crashHistory) add(cycle int, r crashCycleResult) {
	for _, n := range r.attempted {
		h.attempted[n] = cycle
	}
	for _, n := range r.acked {
		h.acked[n] = cycle
	}
}

type crashCycleResult struct {
	acked, attempted []string
	inflightAtKill   int64
}

func crashSpec(name string) shoal.ServiceSpec {
	return shoal.ServiceSpec{Name: name, Replicas: 0, Labels: map[string]string{"crash.name": name},
		Task: shoal.TaskSpec{Command: []string{"true"}}}
}

// crashWriteAndKill runs crashWriters writers against child until delay after
// the first acknowledged write, then SIGKILLs the child while they write.
func crashWriteAndKill(ctx context.Context, t *testing.T, child *crashChild, cycle int, delay time.Duration) crashCycleResult {
	t.Helper()
	creds, err := shoal.LoadClientCredentials(crashClientCredsDir(child.dir))
	require.NoError(t, err)
	cl, err := shoal.Dial(ctx, child.addr, shoal.WithCredentials(creds))
	require.NoError(t, err)
	defer cl.Close()

	var (
		mu       sync.Mutex
		res      crashCycleResult
		preKill  []error
		killed   atomic.Bool
		inflight atomic.Int64
		first    = make(chan struct{})
		once     sync.Once
		wg       sync.WaitGroup
	)
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	for w := 0; w < crashWriters; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; wctx.Err() == nil; i++ {
				name := fmt.Sprintf("c%d-w%d-%d", cycle, w, i)
				mu.Lock()
				res.attempted = append(res.attempted, name)
				mu.Unlock()
				callCtx, callCancel := context.WithTimeout(wctx, 20*time.Second)
				inflight.Add(1)
				_, err := cl.CreateService(callCtx, crashSpec(name))
				inflight.Add(-1)
				callCancel()
				if err == nil {
					mu.Lock()
					res.acked = append(res.acked, name)
					mu.Unlock()
					once.Do(func() { close(first) })
					continue
				}
				if killed.Load() || wctx.Err() != nil {
					return
				}
				// The manager is alive: every write must succeed.
				mu.Lock()
				preKill = append(preKill, fmt.Errorf("%s: %w", name, err))
				mu.Unlock()
				return
			}
		}()
	}

	select {
	case <-first:
	case <-ctx.Done():
	case <-time.After(30 * time.Second):
	}
	select {
	case <-first:
		timer := time.NewTimer(delay)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
		}
	default:
		// No write was acknowledged: kill anyway and report below.
	}
	killed.Store(true)
	res.inflightAtKill = inflight.Load()
	child.kill(t)
	wcancel()
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	require.Empty(t, preKill, "writes failed while the manager was alive (child stderr:\n%s)", child.stderr.Tail(30))
	require.NotEmpty(t, res.acked, "cycle %d: no write was acknowledged within 30s (child stderr:\n%s)", cycle, child.stderr.Tail(30))
	return res
}

type crashVerifyResult struct{ unackedKept int }

// crashVerify checks the restarted manager at addr: every acknowledged write
// is there with its spec, and every service there was written by the test.
func crashVerify(ctx context.Context, t *testing.T, addr, credsDir string, h *crashHistory, cycle int) crashVerifyResult {
	t.Helper()
	creds, err := shoal.LoadClientCredentials(credsDir)
	require.NoError(t, err)
	cl, err := shoal.Dial(ctx, addr, shoal.WithCredentials(creds))
	require.NoError(t, err)
	defer cl.Close()

	var svcs []*shoal.Service
	deadline := time.Now().Add(30 * time.Second)
	for {
		lctx, lcancel := context.WithTimeout(ctx, 20*time.Second)
		svcs, err = cl.ListServices(lctx)
		lcancel()
		if err == nil || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	require.NoError(t, err, "list services after restart")

	have := make(map[string]*shoal.Service, len(svcs))
	var phantom []string
	var res crashVerifyResult
	for _, s := range svcs {
		name := s.Spec.Name
		have[name] = s
		c, sent := h.attempted[name]
		if !sent {
			phantom = append(phantom, name)
			continue
		}
		if _, ok := h.acked[name]; !ok && c == cycle {
			res.unackedKept++
		}
		assert.Equal(t, name, s.Spec.Labels["crash.name"], "service %s came back with another spec", name)
		assert.Zero(t, s.Spec.Replicas, "service %s", name)
		assert.Equal(t, []string{"true"}, s.Spec.Task.Command, "service %s", name)
	}
	var missing []string
	for name := range h.acked {
		if have[name] == nil {
			missing = append(missing, name)
		}
	}
	sort.Strings(missing)
	sort.Strings(phantom)
	if len(missing) > 0 {
		byCycle := map[int]int{}
		for _, n := range missing {
			byCycle[h.acked[n]]++
		}
		t.Errorf("LOST ACKNOWLEDGED WRITES after restart %d: %d of %d acknowledged services missing (by the cycle that wrote them: %v); first: %s",
			cycle, len(missing), len(h.acked), byCycle, strings.Join(missing[:min(len(missing), 20)], ", "))
	}
	assert.Empty(t, phantom, "services nobody created")

	// Lookups by name go through the rebuilt indexes.
	n := 0
	for name := range h.acked {
		if n == 20 {
			break
		}
		n++
		gctx, gcancel := context.WithTimeout(ctx, 20*time.Second)
		s, err := cl.GetService(gctx, name)
		gcancel()
		if assert.NoError(t, err, "GetService(%s)", name) {
			assert.Equal(t, name, s.Spec.Name)
		}
	}
	return res
}

// crashKillDuringStart starts a restarting manager and SIGKILLs it after
// early, whether or not it serves by then.
func crashKillDuringStart(ctx context.Context, t *testing.T, exe, dir, addr, snapshot string, early time.Duration) {
	t.Helper()
	c := spawnCrashChild(ctx, t, exe, "restart", dir, addr, snapshot)
	timer := time.NewTimer(early)
	select {
	case <-timer.C:
	case <-c.done:
		timer.Stop()
		t.Fatalf("manager restarting from %s exited by itself: %v\nstdout:\n%s\nstderr:\n%s", dir, c.waitErr, c.out.String(), c.stderr.Tail(30))
	}
	c.kill(t)
}

// crashChild is one manager process.
type crashChild struct {
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	out     *childOutput
	stderr  *lockedBuffer
	addr    string
	dir     string // the manager's StateDir
	done    chan struct{}
	waitErr error // set before done closes
}

// spawnCrashChild starts the test binary in child mode; the test's cleanup
// kills it if it still runs.
func spawnCrashChild(ctx context.Context, t *testing.T, exe, mode, dir, addr, snapshot string) *crashChild {
	t.Helper()
	cmd := exec.Command(exe, "-test.run=^$")
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SHOAL_CRASH_") {
			env = append(env, kv)
		}
	}
	env = append(env, crashEnvChild+"="+mode, crashEnvDir+"="+dir, crashEnvAddr+"="+addr)
	if snapshot != "" {
		env = append(env, crashEnvSnapshot+"="+snapshot)
	}
	cmd.Env = env
	c := &crashChild{cmd: cmd, dir: dir, out: newChildOutput(), stderr: &lockedBuffer{}, done: make(chan struct{})}
	cmd.Stdout = c.out
	cmd.Stderr = c.stderr
	// Output copying must not hold Wait up after the process is gone.
	cmd.WaitDelay = 10 * time.Second
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	c.stdin = stdin
	if err := cmd.Start(); err != nil {
		t.Skipf("the crash test cannot re-execute the test binary %s: %v", exe, err)
	}
	go func() {
		c.waitErr = cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() { c.kill(t) })
	return c
}

// startCrashChild starts a manager process and waits until it serves.
func startCrashChild(ctx context.Context, t *testing.T, exe, mode, dir, addr, snapshot string) *crashChild {
	t.Helper()
	c := spawnCrashChild(ctx, t, exe, mode, dir, addr, snapshot)
	timer := time.NewTimer(60 * time.Second)
	defer timer.Stop()
	select {
	case a := <-c.out.ready:
		if a == "" {
			c.kill(t)
			t.Fatalf("manager (%s) failed to start from %s:\n%s\nstderr:\n%s", mode, dir, c.out.String(), c.stderr.Tail(30))
		}
		c.addr = a
	case <-c.done:
		t.Fatalf("manager (%s) exited before serving: %v\nstdout:\n%s\nstderr:\n%s", mode, c.waitErr, c.out.String(), c.stderr.Tail(30))
	case <-timer.C:
		c.kill(t)
		t.Fatalf("manager (%s) not serving after 60s\nstdout:\n%s\nstderr:\n%s", mode, c.out.String(), c.stderr.Tail(30))
	case <-ctx.Done():
		c.kill(t)
		t.Fatalf("manager (%s) not serving: %v", mode, ctx.Err())
	}
	return c
}

// kill SIGKILLs the child and waits for it. A child that already exited by
// itself is an error (unless the test is already over).
func (c *crashChild) kill(t *testing.T) {
	select {
	case <-c.done:
		return
	default:
	}
	if err := c.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("kill manager process %d: %v", c.cmd.Process.Pid, err)
	}
	select {
	case <-c.done:
	case <-time.After(30 * time.Second):
		t.Errorf("manager process %d still running 30s after SIGKILL", c.cmd.Process.Pid)
		return
	}
	var ee *exec.ExitError
	if errors.As(c.waitErr, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			return
		}
	}
	t.Errorf("manager process %d ended by itself before SIGKILL: %v\nstdout:\n%s\nstderr:\n%s",
		c.cmd.Process.Pid, c.waitErr, c.out.String(), c.stderr.Tail(30))
}

// stopGracefully closes the child's stdin, which makes it Stop its manager
// and exit 0.
func (c *crashChild) stopGracefully(t *testing.T) {
	t.Helper()
	require.NoError(t, c.stdin.Close())
	select {
	case <-c.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("manager process %d did not stop within 30s of its stdin closing", c.cmd.Process.Pid)
	}
	assert.NoError(t, c.waitErr, "clean stop after crashes\nstdout:\n%s\nstderr:\n%s", c.out.String(), c.stderr.Tail(30))
}

// crashFreeAddr returns a loopback address with a port free at the moment,
// which the manager processes then listen on in turn.
func crashFreeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return addr
}

// TestCrashCorruptStateIsAClearError damages a killed manager's files the
// way no crash can and checks that the restart fails with an error naming the
// damaged file, without a panic.
func TestCrashCorruptStateIsAClearError(t *testing.T) {
	if goruntime.GOOS == "windows" || goruntime.GOOS == "plan9" || goruntime.GOOS == "js" || goruntime.GOOS == "wasip1" {
		t.Skipf("the crash test kills child processes with SIGKILL, which %s does not have", goruntime.GOOS)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Skipf("the crash test re-executes the test binary, whose path is unknown: %v", err)
	}
	garbage := func(path string, off int64, n int) error {
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(0xa5 ^ i)
		}
		if _, err := f.WriteAt(b, off); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}
	cases := []struct {
		name    string
		file    string
		corrupt func(path string) error
	}{
		{"raft.db both meta pages", "raft/raft.db", func(p string) error {
			// bbolt keeps two meta pages, at pages 0 and 1; with both
			// damaged there is no consistent state to fall back to.
			ps := int64(os.Getpagesize())
			if err := garbage(p, 16, 256); err != nil {
				return err
			}
			return garbage(p, ps+16, 256)
		}},
		{"raft.db truncated to a few bytes", "raft/raft.db", func(p string) error { return os.Truncate(p, 100) }},
		{"node.json garbage", "node.json", func(p string) error { return os.WriteFile(p, []byte("{\"node_id\": 12"), 0o600) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			dir := t.TempDir()
			addr := crashFreeAddr(t)
			child := startCrashChild(ctx, t, exe, "init", dir, addr, "")
			crashWriteAndKill(ctx, t, child, 1, 30*time.Millisecond)

			path := filepath.Join(dir, filepath.FromSlash(tc.file))
			_, err := os.Stat(path)
			require.NoError(t, err, "the manager keeps %s in its StateDir", tc.file)
			require.NoError(t, tc.corrupt(path))

			c := spawnCrashChild(ctx, t, exe, "restart", dir, addr, "")
			select {
			case <-c.done:
			case <-time.After(60 * time.Second):
				c.kill(t)
				t.Fatalf("a manager on a corrupt %s neither failed nor served within 60s", tc.file)
			case a := <-c.out.ready:
				if a != "" {
					c.kill(t)
					t.Fatalf("a manager on a corrupt %s started anyway", tc.file)
				}
				<-c.done
			}
			stdout, stderr := c.out.String(), c.stderr.Tail(40)
			assert.NotContains(t, stderr, "panic:", "a corrupt file must be an error, not a panic")
			assert.Contains(t, stdout, "ERROR ", "the restart must fail with an error\nstderr:\n%s", stderr)
			assert.Contains(t, stdout, path, "the error names the damaged file")
			t.Logf("restart on a corrupt %s: %s", tc.file, strings.TrimSpace(stdout))
		})
	}
}
