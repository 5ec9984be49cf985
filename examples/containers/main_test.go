package main

import (
	"bytes"
	"context"
	"log/slog"
	"maps"
	"net"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/shoalhq/shoal"
)

// TestMain checks that the example leaves no goroutine behind: it stops
// every node, runtime and server it starts.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestContainers runs the whole example: the test binary is the nodes'
// container shim too (runtime/runc's init function turns it into one), as
// the example's binary is.
func TestContainers(t *testing.T) {
	if err := preflight(); err != nil {
		t.Skip("the example " + err.Error())
	}
	if testing.Short() {
		t.Skip("-short: the example builds a web server and runs containers on three nodes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out bytes.Buffer
	logs := &lockedBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	// Bridges and pools of their own, so that the test runs next to the
	// example run by hand.
	rep, err := run(ctx, &out, logger, bridges{Prefix: "shoalxt", Base: 20})
	s := out.String()
	defer func() {
		if t.Failed() {
			t.Log("example output:\n" + s)
			t.Log("warnings and errors the nodes logged:\n" + logs.String())
		}
	}()
	require.NoError(t, err)

	assert.Regexp(t, `web publishes 3\d{4}:8080/tcp \(ingress\): port 3\d{4} answers on every node`, s)
	assert.Regexp(t, `the manager pinned the image to 127\.0\.0\.1:\d+/examples/web:1@sha256:[0-9a-f]{64}\n`, s)
	assert.Regexp(t, `the manager pinned the image to 127\.0\.0\.1:\d+/examples/web:2@sha256:[0-9a-f]{64}\n`, s)
	assert.NotContains(t, s, "warning:")
	assert.NotContains(t, s, "left container", "removing the service removed every container")
	assert.True(t, strings.HasSuffix(s, "done\n"))
	assert.Equal(t, map[string]int{"manager": 1, "worker-1": 1, "worker-2": 1}, rep.PerNode, "one task per node")

	// Every node answers on the published port, round robin over the
	// running tasks, before and after the update.
	require.Len(t, rep.Checks, 2)
	assert.GreaterOrEqual(t, rep.Published, uint16(30000), "allocated from the dynamic range")
	for i, c := range rep.Checks {
		assert.Equal(t, strconv.Itoa(i+1), c.Version)
		assert.Len(t, c.Running, replicas)
		assert.ElementsMatch(t, nodeNames, slices.Collect(maps.Keys(c.Replies)), "version %s: every node answered", c.Version)
		for node, rs := range c.Replies {
			hosts := map[string]bool{}
			for _, r := range rs {
				assert.Equal(t, c.Version, r.Version, "%s answered with version %s", node, r.Version)
				assert.Contains(t, c.Running, r.Hostname, "%s answered from a container that is not running", node)
				hosts[r.Hostname] = true
			}
			assert.Len(t, hosts, replicas, "version %s: %s spread its requests over every task", c.Version, node)
		}
	}
	for h := range rep.Checks[1].Running {
		assert.NotContains(t, rep.Checks[0].Running, h, "the update replaced every container")
	}
	port := strconv.Itoa(int(rep.Published))
	lines := regexp.MustCompile(`(?m)^  GET 127\.0\.0\.[1-3]:` + port + ` \((manager|worker-[12])\) +-> hello from [0-9a-z]{12} \(version [12]\)$`)
	assert.Len(t, lines.FindAllString(s, -1), 2*len(nodeNames)*replicas, "one printed line per request")

	checkRollingUpdate(t, rep.Changes)
	// The mesh drains a stopping task before it stops, and the update
	// replaces one task at a time: no request during the update fails.
	assert.Zero(t, rep.Load.Failed, "requests failed during the update, the first with: %v", rep.Load.FirstErr)
	assert.Positive(t, rep.Load.Versions["1"], "version 1 answered during the update")
	assert.Positive(t, rep.Load.Versions["2"], "version 2 answered during the update")
	assert.Regexp(t, `meanwhile \d+ requests to the published port, every node in turn: \d+ answered by version 1, \d+ by version 2, 0 failed\n`, s)

	// Nothing is left behind: the directory (with the nodes' state, the
	// runtimes' containers, images and netns mounts), the bridges, mounts.
	_, err = os.Stat(rep.Dir)
	assert.ErrorIs(t, err, os.ErrNotExist, "the temporary directory is removed")
	require.Len(t, rep.Bridges, len(nodeNames))
	for _, b := range rep.Bridges {
		_, err := net.InterfaceByName(b)
		assert.Error(t, err, "bridge %s is torn down", b)
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	require.NoError(t, err)
	assert.NotContains(t, string(mounts), rep.Dir, "nothing stays mounted under the temporary directory")
}

// checkRollingUpdate checks the task changes of an update with
// Parallelism 1 and StopFirst: each slot's old task is told to stop, then
// its replacement of version 2 runs, before the next slot's old task is
// told to stop. Changes come from one watch, so their order is the order
// the cluster made them in.
func checkRollingUpdate(t *testing.T, changes []taskChange) {
	t.Helper()
	stopAt := map[uint64]int{} // slot → index of the old task's first change with desired state shutdown
	runAt := map[uint64]int{}  // slot → index at which its version 2 task first runs
	newTasks := map[uint64]map[string]bool{}
	for i, c := range changes {
		switch c.Version {
		case "1":
			if _, ok := stopAt[c.Slot]; !ok && c.Desired > shoal.TaskRunning {
				stopAt[c.Slot] = i
			}
			if c.State.Terminal() {
				// tini passed SIGTERM on and the server shut down
				// gracefully: it was not killed after the grace period.
				assert.Equal(t, shoal.TaskShutdown, c.State, "slot %d's old task", c.Slot)
				assert.Zero(t, c.ExitCode, "slot %d's old task exited with code %d", c.Slot, c.ExitCode)
			}
		case "2":
			if newTasks[c.Slot] == nil {
				newTasks[c.Slot] = map[string]bool{}
			}
			newTasks[c.Slot][c.TaskID] = true
			if _, ok := runAt[c.Slot]; !ok && c.State == shoal.TaskRunning {
				runAt[c.Slot] = i
			}
		default:
			t.Errorf("a task of image version %q changed during the update", c.Version)
		}
	}
	require.Len(t, stopAt, replicas, "every slot's old task was stopped: %+v", changes)
	require.Len(t, runAt, replicas, "every slot's new task ran: %+v", changes)
	for slot, ids := range newTasks {
		assert.Len(t, ids, 1, "slot %d was replaced once", slot)
	}
	slots := slices.Collect(maps.Keys(stopAt))
	slices.SortFunc(slots, func(a, b uint64) int { return stopAt[a] - stopAt[b] })
	for i, slot := range slots {
		assert.Less(t, stopAt[slot], runAt[slot], "slot %d: the old task stops before the new one runs (stop-first)", slot)
		if i+1 < len(slots) {
			next := slots[i+1]
			assert.Less(t, runAt[slot], stopAt[next], "slot %d's replacement runs before slot %d's old task is stopped (parallelism 1)", slot, next)
		}
	}
}

func TestParseReply(t *testing.T) {
	tests := []struct {
		body string
		want reply
		ok   bool
	}{
		{"hello from 0afjvn2ylp3s (version 1)", reply{"0afjvn2ylp3s", "1"}, true},
		{"hello from web-1.example (version 2.0.1)", reply{"web-1.example", "2.0.1"}, true},
		{"hello from  (version 1)", reply{}, false},
		{"hello from host (version )", reply{}, false},
		{"hello from host (version 1", reply{}, false},
		{"hello from two words (version 1)", reply{}, false},
		{"hello from host (version 1) (version 2)", reply{}, false},
		{"hi from host (version 1)", reply{}, false},
		{"", reply{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.body, func(t *testing.T) {
			got, err := parseReply(tt.body)
			if !tt.ok {
				assert.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func FuzzParseReply(f *testing.F) {
	f.Add("hello from 0afjvn2ylp3s (version 1)")
	f.Add("hello from x (version (version 1))")
	f.Add("hello from ")
	f.Fuzz(func(t *testing.T, body string) {
		r, err := parseReply(body)
		if err != nil {
			return
		}
		// What parses is exactly what the web server writes.
		assert.Equal(t, body, "hello from "+r.Hostname+" (version "+r.Version+")")
	})
}

func TestImageTag(t *testing.T) {
	tests := []struct{ ref, want string }{
		{"127.0.0.1:5000/examples/web:2", "2"},
		{"127.0.0.1:5000/examples/web:2@sha256:d42bb05b31a020e7fabb821c158f9ed18a3de16d60152cb9841e0067932234c7", "2"},
		{"127.0.0.1:5000/examples/web", ""},
		{"127.0.0.1:5000/examples/web@sha256:d42bb05b31a020e7fabb821c158f9ed18a3de16d60152cb9841e0067932234c7", ""},
		{"nginx:1.25", "1.25"},
		{"nginx", ""},
		{"", ""},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, imageTag(tt.ref), tt.ref)
	}
}

// lockedBuffer is a bytes.Buffer that the nodes' goroutines may write to
// while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer // guarded by mu
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
