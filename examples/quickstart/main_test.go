package main

import (
	"bytes"
	"context"
	"os"
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
	// Port 0: every node picks a free port, so the test never collides with
	// a quickstart running by hand.
	require.NoError(t, run(ctx, &out, 0), out.String())
	s := out.String()
	assert.Contains(t, s, "running tasks per node: worker-1: 2, worker-2: 2, worker-3: 2")
	assert.Contains(t, s, "running tasks per node: worker-1: 3, worker-2: 3, worker-3: 3")
	assert.Regexp(t, `running tasks per node: worker-1: [45], worker-2: [45]\n`, s)
	assert.Equal(t, 6, strings.Count(s, "-> hello from task"), "every task answered over HTTP")
	assert.Contains(t, s, `\_ web.`, "the stopped worker's tasks show as history")
	assert.Contains(t, s, "all tasks stopped and removed")
	assert.True(t, strings.HasSuffix(s, "done\n"))
}
