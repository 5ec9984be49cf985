package main

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestMain lets the test binary serve as the task program, as the quickstart
// binary does: run re-executes os.Executable().
func TestMain(m *testing.M) {
	if os.Getenv(taskEnv) == "1" {
		serveTask()
		return
	}
	os.Exit(m.Run())
}

func TestQuickstart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out bytes.Buffer
	// Port 0: every node picks free ports (API and gossip), so the test
	// never collides with a quickstart running by hand.
	checks, err := run(ctx, &out, 0)
	require.NoError(t, err, out.String())
	s := out.String()
	defer func() {
		if t.Failed() {
			t.Log("quickstart output:\n" + s)
		}
	}()
	assert.Contains(t, s, "running tasks per node: worker-1: 2, worker-2: 2, worker-3: 2")
	assert.Contains(t, s, "running tasks per node: worker-1: 3, worker-2: 3, worker-3: 3")
	assert.Regexp(t, `running tasks per node: worker-1: [45], worker-2: [45]\n`, s)
	assert.Equal(t, 6, strings.Count(s, "-> hello from task"), "every task answered over HTTP")
	assert.Contains(t, s, `\_ web.`, "the stopped worker's tasks show as history")
	assert.Regexp(t, `web publishes 3\d{4}:80/tcp \(ingress\): port 3\d{4} answers on every node`, s)
	assert.Regexp(t, `during the scale-down: \d+ requests to 127\.0\.0\.1:3\d{4}, \d+ failed`, s)
	assert.Contains(t, s, "all tasks stopped and removed")
	assert.True(t, strings.HasSuffix(s, "done\n"))

	// The routing mesh: three rounds of requests to the published port on
	// every running node's address.
	require.Len(t, checks, 3, s)
	all := []string{"manager", "worker-1", "worker-2", "worker-3"}
	wantNodes := map[string][]string{"3": all, "5": all[:3], "6": all[:3]}
	wantRunning := map[string]int{"3": 6, "5": 9, "6": 4}
	for _, c := range checks {
		assert.GreaterOrEqual(t, c.Port, uint16(30000), "allocated from the dynamic range")
		assert.Len(t, c.Running, wantRunning[c.Step], "step %s", c.Step)
		assert.ElementsMatch(t, wantNodes[c.Step], slices.Collect(maps.Keys(c.Replies)),
			"step %s: every running node answered on the published port", c.Step)
		distinct := map[string]bool{}
		for node, ids := range c.Replies {
			assert.Len(t, ids, len(c.Running), "step %s: every request to %s got a reply", c.Step, node)
			nodeDistinct := map[string]bool{}
			for _, id := range ids {
				assert.True(t, c.Running[id], "step %s: %s answered on %s but is not running", c.Step, id, node)
				assert.False(t, c.Stopped[id], "step %s: stopped task %s answered on %s", c.Step, id, node)
				nodeDistinct[id] = true
				distinct[id] = true
			}
			assert.Greater(t, len(nodeDistinct), 1, "step %s: %s spread its replies over several tasks", c.Step, node)
		}
		assert.Greater(t, len(distinct), 1, "step %s: replies came from more than one task", c.Step)
	}
	port := strconv.Itoa(int(checks[0].Port))
	lines := regexp.MustCompile(`(?m)^  GET 127\.0\.0\.[1-4]:` + port + ` +\S+ +\(runs \d+ tasks?\) +-> (web\.\d ?)+$`)
	assert.Len(t, lines.FindAllString(s, -1), 4+3+3, "one printed line per node and round")
	mgrLines := regexp.MustCompile(`(?m)^  GET 127\.0\.0\.1:` + port + ` +manager +\(runs 0 tasks\) +-> web\.`)
	assert.Len(t, mgrLines.FindAllString(s, -1), 3, "the manager runs no task and answers every time")
	for _, n := range []int{6, 9, 4} {
		assert.Contains(t, s, fmt.Sprintf("every node's mesh table lists the %d endpoints of web", n))
	}
	require.Equal(t, "3", checks[0].Step)
	assert.Empty(t, checks[0].Stopped)
	// At least: a task that failed and was replaced meanwhile counts too.
	assert.GreaterOrEqual(t, len(checks[1].Stopped), 3, "worker-3's three tasks were stopped")
	assert.GreaterOrEqual(t, len(checks[2].Stopped), 5, "scaling 9 to 4 stopped five tasks")
	assert.Len(t, regexp.MustCompile(`none of the \d+ stopped tasks did\n`).FindAllString(s, -1), 2)
}
