package shoal_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/metadata"

	"github.com/shoalhq/shoal"
	"github.com/shoalhq/shoal/internal/controlapi"
	"github.com/shoalhq/shoal/shoaltest"
)

// The linearizability test runs a workload of concurrent reads and writes of
// a few keys through the public client against a 3- or 5-manager cluster
// while a random fault schedule runs (leader kills, crashes, graceful stops
// and restarts, isolation, majority/minority partitions, Raft message drops
// and delays), records every operation's call and return, and checks the
// history with porcupine. Each seed fixes the fault schedule and the
// workload's choices; the seed is in the subtest's name, so a failure is
// rerun with SHOAL_LINEARIZABILITY_SEED=<seed>.
//
// A key is a service named k<i>; its value is the service's label "v".
// Write(key, v) is GetService then UpdateService with the version read
// (optimistic concurrency), retried on ErrConflict; its effect point is the
// UpdateService that succeeds. Read(key) is GetService.
//
// Environment:
//
//	SHOAL_LINEARIZABILITY_SEEDS=N   run seeds 1..N (default 50) - the long run
//	SHOAL_LINEARIZABILITY_SEED=S    run only seed S (reproduce a failure)
//	SHOAL_LINEARIZABILITY_OUT=DIR   where visualizations of failures go
//	                                (default a new directory under os.TempDir)
const (
	linEnvSeeds = "SHOAL_LINEARIZABILITY_SEEDS"
	linEnvSeed  = "SHOAL_LINEARIZABILITY_SEED"
	linEnvOut   = "SHOAL_LINEARIZABILITY_OUT"

	// linDefaultSeeds is what CI runs: seeds 1..40 on 3 managers, 41..50 on 5.
	linDefaultSeeds = 50
	// linKeys is the number of registers: few enough that operations
	// collide often (conflicts, concurrent reads of a key being written),
	// enough that the per-key partitions keep porcupine's search small.
	linKeys = 3
	// linMaxOps bounds the history per seed, which bounds both the run time
	// and porcupine's search. Clients pace themselves (linPause) so that
	// operations spread over the whole fault schedule; this is a backstop.
	linMaxOps = 1500
	// linPause is the most a client waits between operations (uniformly
	// 1..linPause ms): enough load to keep every key contended, little
	// enough for a 2-core machine running two seeds at once.
	linPause = 12
	// linOpTimeout bounds one client call. Longer than an election (10
	// ticks of 10ms) plus a restart, so that most calls during a fault end
	// with a definite answer rather than a timeout.
	linOpTimeout = 3 * time.Second
	// linWriteAttempts is how often a write retries after ErrConflict.
	linWriteAttempts = 8
	// linCheckTimeout bounds porcupine; running out is a test failure
	// (neither a pass nor a violation), never silently accepted.
	linCheckTimeout = 30 * time.Second
	// linMissing is the value a read returns when the key's service is not
	// found: the keys exist before the history starts, so the model never
	// accepts it.
	linMissing = "<missing>"
)

// linManagersForSeed: one seed in five runs on five managers; the default
// set is seeds 1..40 on three and 41..50 on five.
func linManagersForSeed(seed uint64) int {
	if seed <= linDefaultSeeds {
		if seed > 40 {
			return 5
		}
		return 3
	}
	if seed%5 == 0 {
		return 5
	}
	return 3
}

func TestLinearizability(t *testing.T) {
	if testing.Short() {
		t.Skip("linearizability runs 50 fault schedules; skipped in -short mode")
	}
	var seeds []uint64
	if s := os.Getenv(linEnvSeed); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		require.NoError(t, err, "%s must be a seed number", linEnvSeed)
		seeds = append(seeds, seed)
	} else {
		n := uint64(linDefaultSeeds)
		if s := os.Getenv(linEnvSeeds); s != "" {
			v, err := strconv.ParseUint(s, 10, 64)
			require.NoError(t, err, "%s must be a number of seeds", linEnvSeeds)
			n = v
		}
		for s := uint64(1); s <= n; s++ {
			seeds = append(seeds, s)
		}
	}
	for _, seed := range seeds {
		managers := linManagersForSeed(seed)
		t.Run(fmt.Sprintf("seed=%d/managers=%d", seed, managers), func(t *testing.T) {
			t.Parallel()
			runLinearizability(t, seed, managers)
		})
	}
}

// linInput is a register operation: a read of Key, or a write of Value to Key.
type linInput struct {
	Key   string
	Write bool
	Value string
}

// linModel is a map of registers, partitioned by key; every key starts empty
// (the label is not set when the key's service is created).
func linModel() porcupine.Model {
	return porcupine.Model{
		Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
			byKey := map[string][]porcupine.Operation{}
			var keys []string
			for _, op := range history {
				k := op.Input.(linInput).Key
				if _, ok := byKey[k]; !ok {
					keys = append(keys, k)
				}
				byKey[k] = append(byKey[k], op)
			}
			sort.Strings(keys)
			out := make([][]porcupine.Operation, 0, len(keys))
			for _, k := range keys {
				out = append(out, byKey[k])
			}
			return out
		},
		Init: func() any { return "" },
		Step: func(state, input, output any) (bool, any) {
			in := input.(linInput)
			if in.Write {
				return true, in.Value
			}
			return output.(string) == state.(string), state
		},
		DescribeOperation: func(input, output any) string {
			in := input.(linInput)
			if in.Write {
				if output == nil {
					return fmt.Sprintf("write(%s, %q) -> ?", in.Key, in.Value)
				}
				return fmt.Sprintf("write(%s, %q)", in.Key, in.Value)
			}
			return fmt.Sprintf("read(%s) -> %q", in.Key, output)
		},
		DescribeState: func(state any) string { return fmt.Sprintf("%q", state) },
	}
}

// linOp is one recorded operation.
type linOp struct {
	client  int
	manager string
	in      linInput
	out     string
	// Diagnostics only; the model never sees them. attempts: for a write,
	// how many UpdateService calls it made. sawBy: for a read, the label "a"
	// it saw, naming the write attempt that set the value.
	attempts  int
	sawBy     string
	call, ret int64
	pending   bool // a write whose outcome is unknown: it may or may not have happened
}

// linHistory collects operations from the workload's clients.
type linHistory struct {
	start time.Time

	mu         sync.Mutex
	ops        []linOp
	staleReads int // reads the manager answered and marked as possibly stale
	failed     int // calls that ended with an error and were left out
}

func (h *linHistory) now() int64 { return int64(time.Since(h.start)) }

func (h *linHistory) add(op linOp) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ops = append(h.ops, op)
}

// linFaults is what the managers' Raft transports ask about every message
// (shoaltest.Options.RaftFault); the fault schedule flips it.
type linFaults struct {
	dropPermille atomic.Int64
	maxDelay     atomic.Int64 // nanoseconds

	mu  sync.Mutex
	rng *rand.Rand
}

func (f *linFaults) decide(from, to uint64) (bool, time.Duration) {
	drop, maxDelay := f.dropPermille.Load(), f.maxDelay.Load()
	if drop == 0 && maxDelay == 0 {
		return false, 0
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if drop > 0 && f.rng.Int64N(1000) < drop {
		return true, 0
	}
	if maxDelay > 0 {
		return false, time.Duration(f.rng.Int64N(maxDelay + 1))
	}
	return false, 0
}

// linStaleKey carries a per-call flag the client interceptor sets when the
// manager answers with the stale-read header.
type linStaleKey struct{}

// linStaleInterceptor records the manager's stale-read marker: a read served
// from a manager's local state without a quorum to confirm it is current
// makes no claim to be linearizable, so such reads are counted, not checked.
func linStaleInterceptor(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
	invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	var md metadata.MD
	err := invoker(ctx, method, req, reply, cc, append(opts, grpc.Header(&md))...)
	if flag, ok := ctx.Value(linStaleKey{}).(*atomic.Bool); ok && len(md.Get(controlapi.StaleReadHeader)) > 0 {
		flag.Store(true)
	}
	return err
}

func linKey(i int) string { return fmt.Sprintf("k%d", i) }

// linDefinite says whether a failed write certainly did not happen: the
// request was refused by validation, lookup or the version check. Anything
// else (no quorum, no leader, leadership lost, a broken connection, a
// timeout) may have been proposed before it failed.
func linDefinite(err error) bool {
	return errors.Is(err, shoal.ErrConflict) || errors.Is(err, shoal.ErrInvalidSpec) || errors.Is(err, shoal.ErrNotFound)
}

func runLinearizability(t *testing.T, seed uint64, managers int) {
	t.Logf("linearizability seed %d, %d managers (rerun: %s=%d go test -run 'TestLinearizability' .)",
		seed, managers, linEnvSeed, seed)
	rng := rand.New(rand.NewPCG(seed, 0x5ea1))
	faults := &linFaults{rng: rand.New(rand.NewPCG(seed, 0xfa17))}
	c := shoaltest.Start(t, shoaltest.Options{
		Managers:  managers,
		RaftFault: faults.decide,
	})
	mgrs := c.Managers()
	require.Len(t, mgrs, managers)

	// Clients dial the managers from outside the cluster: partitions cut
	// managers from each other, never a client from its manager, so the
	// minority side keeps serving clients.
	creds, err := mgrs[0].Shoal().Client().IssueClientCredentials(context.Background(), "linearizability", 0)
	require.NoError(t, err)
	clients := make([]*shoal.Client, len(mgrs))
	for i, m := range mgrs {
		cl, err := shoal.Dial(context.Background(), m.Addr, shoal.WithCredentials(creds), shoal.WithGRPCDialOptions(
			grpc.WithContextDialer(c.Network().Dialer("client-of-"+m.Name)),
			grpc.WithUnaryInterceptor(linStaleInterceptor),
			// Reconnect quickly after a restart.
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff:           backoff.Config{BaseDelay: 10 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 200 * time.Millisecond},
				MinConnectTimeout: time.Second,
			}),
		))
		require.NoError(t, err)
		t.Cleanup(func() { _ = cl.Close() })
		clients[i] = cl
	}

	for i := 0; i < linKeys; i++ {
		linCreateKey(t, c, linKey(i))
	}

	h := &linHistory{start: time.Now()}
	wctx, stopWorkload := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { stopWorkload(); wg.Wait() }() // also when the schedule fails the test
	nClients := 2*managers - 1
	var opBudget atomic.Int64
	opBudget.Store(linMaxOps)
	for id := 0; id < nClients; id++ {
		crng := rand.New(rand.NewPCG(seed, uint64(id)+1))
		wg.Go(func() { linClient(wctx, h, id, crng, mgrs, clients, &opBudget) })
	}

	schedule := linRunSchedule(t, c, rng, faults)
	t.Logf("fault schedule: %s", strings.Join(schedule, "; "))

	// Everything is healed and running again: let the workload run on a
	// healthy cluster a little, then stop it.
	c.WaitFor("a leader after the fault schedule", func() bool { return c.Leader() != nil })
	time.Sleep(100 * time.Millisecond)
	stopWorkload()
	wg.Wait()

	// Final reads through the leader, recorded in the history like any other
	// read: a write that was acknowledged and then lost shows up as a final
	// value the history cannot explain. They wait for a read the leader does
	// not mark as stale.
	final := linFinalReads(t, c, clients, mgrs, h)

	ops, pendingDropped := linPrepare(h.ops)
	var reads, writes, pending int
	for _, op := range h.ops {
		switch {
		case !op.in.Write:
			reads++
		case op.pending:
			pending++
		default:
			writes++
		}
	}
	t.Logf("history: %d ops (%d reads, %d acknowledged writes, %d writes of unknown outcome, %d of them never observed and left out); %d reads marked stale and %d failed calls not checked",
		len(h.ops), reads, writes, pending, pendingDropped, h.staleReads, h.failed)

	model := linModel()
	res, info := porcupine.CheckOperationsVerbose(model, ops, linCheckTimeout)
	if res != porcupine.Ok {
		path := linVisualize(t, seed, model, info)
		switch res {
		case porcupine.Illegal:
			t.Errorf("seed %d (%d managers): history is NOT linearizable; visualization: %s", seed, managers, path)
		default:
			t.Errorf("seed %d (%d managers): porcupine gave no answer within %v (%s); visualization: %s",
				seed, managers, linCheckTimeout, res, path)
		}
		linDumpKeys(t, model, h.ops)
	}
	assert.Empty(t, linLostWrites(h.ops, final), "seed %d (%d managers): acknowledged writes lost", seed, managers)
}

// linCreateKey creates a key's service, retrying while the cluster elects.
func linCreateKey(t *testing.T, c *shoaltest.Cluster, name string) {
	t.Helper()
	c.WaitFor("key "+name+" created", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := c.Client().CreateService(ctx, shoal.ServiceSpec{Name: name, Replicas: 0,
			Task: shoal.TaskSpec{Command: []string{"idle"}}})
		if errors.Is(err, shoal.ErrExist) {
			return true
		}
		return err == nil
	})
}

// linClient runs one client of the workload until ctx ends or the op budget
// is spent: random reads and writes of random keys through random running
// managers (leader, followers and the minority side alike).
func linClient(ctx context.Context, h *linHistory, id int, rng *rand.Rand, mgrs []*shoaltest.Node,
	clients []*shoal.Client, budget *atomic.Int64) {
	for seq := 0; ctx.Err() == nil && budget.Add(-1) >= 0; seq++ {
		i := rng.IntN(len(mgrs))
		if mgrs[i].Shoal() == nil {
			// Stopped: another manager takes the call.
			for j := 1; j < len(mgrs); j++ {
				if k := (i + j) % len(mgrs); mgrs[k].Shoal() != nil {
					i = k
					break
				}
			}
		}
		key := linKey(rng.IntN(linKeys))
		var unknown bool
		if rng.IntN(2) == 0 {
			linRead(ctx, h, id, mgrs[i].Name, clients[i], key)
		} else {
			unknown = linWrite(ctx, h, id, mgrs[i].Name, clients[i], key, fmt.Sprintf("c%d.%d", id, seq))
		}
		pause := time.Duration(1+rng.IntN(linPause)) * time.Millisecond
		if unknown {
			// The manager is in trouble: don't pile up writes of unknown
			// outcome, each of which widens porcupine's search.
			pause += 20 * time.Millisecond
		}
		select {
		case <-ctx.Done():
		case <-time.After(pause):
		}
	}
}

func linRead(ctx context.Context, h *linHistory, id int, mgr string, cl *shoal.Client, key string) {
	var stale atomic.Bool
	octx, cancel := context.WithTimeout(context.WithValue(ctx, linStaleKey{}, &stale), linOpTimeout)
	defer cancel()
	call := h.now()
	svc, err := cl.GetService(octx, key)
	ret := h.now()
	var out, sawBy string
	switch {
	case err == nil:
		out, sawBy = svc.Spec.Labels["v"], svc.Spec.Labels["a"]
	case errors.Is(err, shoal.ErrNotFound):
		out = linMissing
	default:
		// A failed read tells nothing.
		h.mu.Lock()
		h.failed++
		h.mu.Unlock()
		return
	}
	if stale.Load() {
		h.mu.Lock()
		h.staleReads++
		h.mu.Unlock()
		return
	}
	h.add(linOp{client: id, manager: mgr, in: linInput{Key: key}, out: out, sawBy: sawBy, call: call, ret: ret})
}

// linWrite writes value to key and records it; it reports whether the
// outcome is unknown.
func linWrite(ctx context.Context, h *linHistory, id int, mgr string, cl *shoal.Client, key, value string) bool {
	octx, cancel := context.WithTimeout(ctx, linOpTimeout)
	defer cancel()
	call := h.now()
	for attempt := 0; attempt < linWriteAttempts; attempt++ {
		svc, err := cl.GetService(octx, key)
		if err != nil {
			// Nothing was written yet.
			h.mu.Lock()
			h.failed++
			h.mu.Unlock()
			return false
		}
		spec := svc.Spec
		labels := make(map[string]string, len(spec.Labels)+1)
		for k, v := range spec.Labels {
			labels[k] = v
		}
		labels["v"] = value
		// Which attempt set the value, so that a failure report shows a
		// write applied by an attempt that was reported as failed.
		labels["a"] = fmt.Sprintf("%s attempt %d", value, attempt+1)
		spec.Labels = labels
		_, err = cl.UpdateService(octx, svc.ID, svc.Version, spec)
		ret := h.now()
		switch {
		case err == nil:
			h.add(linOp{client: id, manager: mgr, in: linInput{Key: key, Write: true, Value: value}, attempts: attempt + 1, call: call, ret: ret})
			return false
		case errors.Is(err, shoal.ErrConflict):
			continue // another write won; read again
		case linDefinite(err):
			h.mu.Lock()
			h.failed++
			h.mu.Unlock()
			return false
		default:
			h.add(linOp{client: id, manager: mgr, in: linInput{Key: key, Write: true, Value: value}, attempts: attempt + 1, call: call, pending: true})
			return true
		}
	}
	h.mu.Lock()
	h.failed++
	h.mu.Unlock()
	return false
}

// linRunSchedule runs the seed's fault schedule and returns a description of
// it. It ends with every partition healed, message faults off and every
// manager running.
func linRunSchedule(t *testing.T, c *shoaltest.Cluster, rng *rand.Rand, faults *linFaults) []string {
	mgrs := c.Managers()
	var log []string
	pause := func(min, max int) time.Duration {
		return time.Duration(min+rng.IntN(max-min+1)) * time.Millisecond
	}

	// Message drops and delays run on their own window, overlapping the
	// topology faults.
	var weather sync.WaitGroup
	defer weather.Wait() // also when a fault fails the test
	if rng.IntN(4) != 0 {
		startAfter, window := pause(0, 500), pause(200, 700)
		drop := int64([]int{0, 100, 200, 300}[rng.IntN(4)])
		delay := []time.Duration{0, 5 * time.Millisecond, 20 * time.Millisecond}[rng.IntN(3)]
		if drop == 0 && delay == 0 {
			drop = 200
		}
		log = append(log, fmt.Sprintf("after %v for %v: drop %d‰ of raft messages, delay up to %v", startAfter, window, drop, delay))
		weather.Go(func() {
			time.Sleep(startAfter)
			faults.dropPermille.Store(drop)
			faults.maxDelay.Store(int64(delay))
			time.Sleep(window)
			faults.dropPermille.Store(0)
			faults.maxDelay.Store(0)
		})
	}

	running := func() []*shoaltest.Node {
		var out []*shoaltest.Node
		for _, m := range mgrs {
			if m.Shoal() != nil {
				out = append(out, m)
			}
		}
		return out
	}
	leaderOrAny := func() *shoaltest.Node {
		if l := c.Leader(); l != nil {
			return l
		}
		r := running()
		return r[rng.IntN(len(r))]
	}

	events := 2 + rng.IntN(2)
	for e := 0; e < events; e++ {
		time.Sleep(pause(30, 150))
		down := pause(100, 400)
		switch rng.IntN(5) {
		case 0: // the leader dies and comes back
			m := leaderOrAny()
			log = append(log, fmt.Sprintf("crash leader %s for %v", m.Name, down))
			require.NoError(t, m.Crash())
			time.Sleep(down)
			require.NoError(t, m.Restart(), "restart %s", m.Name)
		case 1: // any manager dies and comes back
			m := mgrs[rng.IntN(len(mgrs))]
			log = append(log, fmt.Sprintf("crash %s for %v", m.Name, down))
			require.NoError(t, m.Crash())
			time.Sleep(down)
			require.NoError(t, m.Restart(), "restart %s", m.Name)
		case 2: // graceful stop and restart
			m := mgrs[rng.IntN(len(mgrs))]
			log = append(log, fmt.Sprintf("stop %s for %v", m.Name, down))
			require.NoError(t, m.Stop())
			time.Sleep(down)
			require.NoError(t, m.Restart(), "restart %s", m.Name)
		case 3: // isolate one manager (the leader half the time)
			m := mgrs[rng.IntN(len(mgrs))]
			if rng.IntN(2) == 0 {
				m = leaderOrAny()
			}
			log = append(log, fmt.Sprintf("isolate %s for %v", m.Name, down))
			c.Isolate(m)
			time.Sleep(down)
			c.Heal()
		case 4: // majority/minority partition
			perm := rng.Perm(len(mgrs))
			minorityN := (len(mgrs) - 1) / 2
			if len(mgrs) == 5 && rng.IntN(2) == 0 {
				minorityN = 1
			}
			var minority, majority []*shoaltest.Node
			var names []string
			for i, p := range perm {
				if i < minorityN {
					minority = append(minority, mgrs[p])
					names = append(names, mgrs[p].Name)
				} else {
					majority = append(majority, mgrs[p])
				}
			}
			log = append(log, fmt.Sprintf("partition minority %v for %v", names, down))
			c.Partition(minority, majority)
			time.Sleep(down)
			c.Heal()
		}
	}
	weather.Wait()
	c.Heal()
	return log
}

// linFinalReads reads every key through the leader once all managers agree
// on it (so the read reflects every write that will ever take effect), and
// records the reads in the history. It returns the final value of each key.
func linFinalReads(t *testing.T, c *shoaltest.Cluster, clients []*shoal.Client, mgrs []*shoaltest.Node, h *linHistory) map[string]string {
	t.Helper()
	c.WaitFor("managers agree on every key", func() bool {
		for i := 0; i < linKeys; i++ {
			var first *string
			for _, m := range mgrs {
				sn := m.Shoal()
				if sn == nil {
					return false
				}
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				svc, err := sn.Client().GetService(ctx, linKey(i))
				cancel()
				if err != nil {
					return false
				}
				v := svc.Spec.Labels["v"]
				if first == nil {
					first = &v
				} else if *first != v {
					return false
				}
			}
		}
		return true
	})
	final := map[string]string{}
	for i := 0; i < linKeys; i++ {
		key := linKey(i)
		c.WaitFor("final read of "+key, func() bool {
			l := c.Leader()
			if l == nil {
				return false
			}
			idx := -1
			for j, m := range mgrs {
				if m == l {
					idx = j
				}
			}
			var stale atomic.Bool
			ctx, cancel := context.WithTimeout(context.WithValue(context.Background(), linStaleKey{}, &stale), time.Second)
			defer cancel()
			call := h.now()
			svc, err := clients[idx].GetService(ctx, key)
			ret := h.now()
			if err != nil || stale.Load() {
				return false
			}
			final[key] = svc.Spec.Labels["v"]
			h.add(linOp{client: -1, manager: l.Name, in: linInput{Key: key}, out: final[key], sawBy: svc.Spec.Labels["a"], call: call, ret: ret})
			return true
		})
	}
	return final
}

// linPrepare turns the recorded operations into porcupine's history. A write
// of unknown outcome gets a return time after everything else (it may take
// effect at any point after its call). One whose value no read ever returned
// is left out: values are unique, so whether it took effect or not changes
// nothing any read saw, and leaving it out keeps the search small without
// accepting or rejecting any more histories. It returns how many were left
// out.
func linPrepare(recorded []linOp) ([]porcupine.Operation, int) {
	observed := map[string]bool{}
	var end int64
	for _, op := range recorded {
		if !op.in.Write {
			observed[op.in.Key+"\x00"+op.out] = true
		}
		end = max(end, op.call, op.ret)
	}
	clientID := func(op linOp) int {
		if op.client < 0 {
			return 0 // the final reader; shown with client 0's lane
		}
		return op.client
	}
	var ops []porcupine.Operation
	dropped := 0
	for _, op := range recorded {
		po := porcupine.Operation{ClientId: clientID(op), Input: op.in, Call: op.call, Return: op.ret,
			Metadata: "via " + op.manager}
		switch {
		case !op.in.Write:
			po.Output = op.out
		case op.pending:
			if !observed[op.in.Key+"\x00"+op.in.Value] {
				dropped++
				continue
			}
			po.Return = end + 1
		}
		ops = append(ops, po)
	}
	return ops, dropped
}

// linLostWrites counts acknowledged writes that the final state contradicts
// in the plainest way: the last write of a key was acknowledged, began after
// every other write of the key returned, and no write of the key has an
// unknown outcome - yet the key ends with another value. It also counts keys
// that end with a value nobody wrote. (Porcupine checks the general case: the
// final reads are in the history.)
func linLostWrites(recorded []linOp, final map[string]string) []string {
	var lost []string
	for key, v := range final {
		var writes []linOp
		uncertain := false
		written := map[string]bool{"": true}
		for _, op := range recorded {
			if op.in.Write && op.in.Key == key {
				writes = append(writes, op)
				written[op.in.Value] = true
				uncertain = uncertain || op.pending
			}
		}
		if !written[v] {
			lost = append(lost, fmt.Sprintf("key %s ends with %q, which no write wrote", key, v))
			continue
		}
		if uncertain || len(writes) == 0 {
			continue
		}
		sort.Slice(writes, func(i, j int) bool { return writes[i].call < writes[j].call })
		last := writes[len(writes)-1]
		after := true
		for _, w := range writes[:len(writes)-1] {
			after = after && w.ret < last.call
		}
		if after && v != last.in.Value {
			lost = append(lost, fmt.Sprintf("key %s: acknowledged write %q (client %d via %s, returned at %v) was the last write, but the key ends with %q",
				key, last.in.Value, last.client, last.manager, time.Duration(last.ret), v))
		}
	}
	return lost
}

// linVisualize writes porcupine's visualization of a failed check to a
// directory that outlives the test, and returns its path.
func linVisualize(t *testing.T, seed uint64, model porcupine.Model, info porcupine.LinearizationInfo) string {
	dir := os.Getenv(linEnvOut)
	if dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return "(no visualization: " + err.Error() + ")"
		}
	} else {
		var err error
		dir, err = os.MkdirTemp("", "shoal-linearizability-")
		if err != nil {
			return "(no visualization: " + err.Error() + ")"
		}
	}
	path := filepath.Join(dir, fmt.Sprintf("seed-%d.html", seed))
	if err := porcupine.VisualizePath(model, info, path); err != nil {
		return "(no visualization: " + err.Error() + ")"
	}
	return path
}

// linDumpKeys logs, for each key whose own history is not linearizable, the
// key's operations in call order, and then any read that saw a value set by
// a write attempt the client was told had failed.
func linDumpKeys(t *testing.T, model porcupine.Model, recorded []linOp) {
	ops := append([]linOp(nil), recorded...)
	sort.SliceStable(ops, func(i, j int) bool { return ops[i].call < ops[j].call })
	for i := 0; i < linKeys; i++ {
		key := linKey(i)
		var keyOps []linOp
		for _, op := range ops {
			if op.in.Key == key {
				keyOps = append(keyOps, op)
			}
		}
		h, _ := linPrepare(keyOps)
		if porcupine.CheckOperationsTimeout(model, h, linCheckTimeout) == porcupine.Ok {
			continue
		}
		var b strings.Builder
		for _, op := range keyOps {
			ret := time.Duration(op.ret).String()
			if op.pending {
				ret = "?"
			}
			desc := fmt.Sprintf("read -> %q (set by %s)", op.out, op.sawBy)
			if op.in.Write {
				desc = fmt.Sprintf("write %q (%d attempts)", op.in.Value, op.attempts)
			}
			fmt.Fprintf(&b, "\n  [%v, %s] client %d via %s: %s", time.Duration(op.call), ret, op.client, op.manager, desc)
		}
		t.Logf("key %s is not linearizable:%s", key, b.String())
	}
	for _, msg := range linFailedAttemptsSeen(recorded) {
		t.Log(msg)
	}
}

// linFailedAttemptsSeen lists reads that saw a value set by a write attempt
// whose UpdateService the client was told had failed (ErrConflict, then a
// retry; or a definite failure): the write took effect although it was
// reported as not done.
func linFailedAttemptsSeen(recorded []linOp) []string {
	writes := map[string]linOp{}
	for _, op := range recorded {
		if op.in.Write {
			writes[op.in.Value] = op
		}
	}
	seen := map[string]bool{}
	var out []string
	for _, op := range recorded {
		if op.in.Write || op.sawBy == "" || seen[op.sawBy] {
			continue
		}
		var attempt int
		if _, err := fmt.Sscanf(op.sawBy, op.out+" attempt %d", &attempt); err != nil {
			continue
		}
		w, ok := writes[op.out]
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("read [%v, %v] via %s saw %q, set by a write whose every attempt was reported failed",
				time.Duration(op.call), time.Duration(op.ret), op.manager, op.sawBy))
		case attempt < w.attempts:
			out = append(out, fmt.Sprintf("read [%v, %v] via %s saw %q, but that attempt was reported as ErrConflict (the write then succeeded at attempt %d via %s, [%v, %v])",
				time.Duration(op.call), time.Duration(op.ret), op.manager, op.sawBy, w.attempts, w.manager, time.Duration(w.call), time.Duration(w.ret)))
		default:
			continue
		}
		seen[op.sawBy] = true
	}
	return out
}

// TestLinearizabilityChecker shows that the checker used above rejects the
// failures it is there to find, and accepts what a correct system may do.
func TestLinearizabilityChecker(t *testing.T) {
	w := func(client int, key, v string, call, ret int64) linOp {
		return linOp{client: client, manager: "m1", in: linInput{Key: key, Write: true, Value: v}, call: call, ret: ret}
	}
	pendingW := func(client int, key, v string, call int64) linOp {
		op := w(client, key, v, call, 0)
		op.pending = true
		return op
	}
	r := func(client int, key, out string, call, ret int64) linOp {
		return linOp{client: client, manager: "m2", in: linInput{Key: key}, out: out, call: call, ret: ret}
	}
	check := func(ops []linOp) porcupine.CheckResult {
		h, _ := linPrepare(ops)
		return porcupine.CheckOperationsTimeout(linModel(), h, 10*time.Second)
	}
	cases := []struct {
		name string
		ops  []linOp
		want porcupine.CheckResult
	}{
		{"sequential write then read", []linOp{w(0, "k0", "a", 0, 10), r(1, "k0", "a", 20, 30)}, porcupine.Ok},
		{"stale read after an acknowledged write", []linOp{w(0, "k0", "a", 0, 10), w(0, "k0", "b", 20, 30), r(1, "k0", "a", 40, 50)}, porcupine.Illegal},
		{"read concurrent with a write sees either", []linOp{w(0, "k0", "a", 0, 10), w(0, "k0", "b", 20, 30), r(1, "k0", "a", 25, 50)}, porcupine.Ok},
		{"reads go back in time", []linOp{w(0, "k0", "a", 0, 10), w(0, "k0", "b", 20, 60), r(1, "k0", "b", 25, 30), r(2, "k0", "a", 35, 40)}, porcupine.Illegal},
		{"lost acknowledged write (final read)", []linOp{w(0, "k0", "a", 0, 10), w(1, "k0", "b", 5, 15), r(2, "k0", "", 100, 110)}, porcupine.Illegal},
		{"unknown-outcome write may take effect late", []linOp{w(0, "k0", "a", 0, 10), pendingW(1, "k0", "b", 5), r(2, "k0", "a", 20, 30), r(2, "k0", "b", 40, 50)}, porcupine.Ok},
		{"unknown-outcome write may not take effect", []linOp{w(0, "k0", "a", 0, 10), pendingW(1, "k0", "b", 5), r(2, "k0", "a", 40, 50)}, porcupine.Ok},
		{"unknown-outcome write cannot undo itself", []linOp{pendingW(1, "k0", "b", 5), r(2, "k0", "b", 20, 30), r(2, "k0", "", 40, 50)}, porcupine.Illegal},
		{"missing key", []linOp{r(0, "k1", linMissing, 0, 10)}, porcupine.Illegal},
		{"keys are independent", []linOp{w(0, "k0", "a", 0, 10), r(1, "k1", "", 20, 30)}, porcupine.Ok},
	}
	for _, tc := range cases {
		assert.Equal(t, tc.want, check(tc.ops), tc.name)
	}

	// The plain lost-write check.
	ops := []linOp{w(0, "k0", "a", 0, 10), w(1, "k0", "b", 20, 30)}
	assert.Empty(t, linLostWrites(ops, map[string]string{"k0": "b"}))
	assert.Len(t, linLostWrites(ops, map[string]string{"k0": "a"}), 1, "the last acknowledged write was lost")
	assert.Len(t, linLostWrites(ops, map[string]string{"k0": "zzz"}), 1, "a value nobody wrote")
	assert.Empty(t, linLostWrites(append(ops, pendingW(2, "k0", "c", 25)), map[string]string{"k0": "c"}))

	// Reads that saw a write attempt reported as failed.
	ok := w(0, "k0", "a", 0, 10)
	ok.attempts = 2
	saw := func(by string) linOp { op := r(1, "k0", "a", 20, 30); op.sawBy = by; return op }
	assert.Empty(t, linFailedAttemptsSeen([]linOp{ok, saw("a attempt 2")}))
	assert.Len(t, linFailedAttemptsSeen([]linOp{ok, saw("a attempt 1")}), 1, "attempt 1 was told ErrConflict")
	assert.Len(t, linFailedAttemptsSeen([]linOp{saw("a attempt 1")}), 1, "the write was reported failed")
}
