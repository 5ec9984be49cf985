package shoal_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/shoalhq/shoal"
)

// Environment of a re-executed test binary that runs one crash-test manager.
const (
	// crashEnvChild selects child mode: "init" creates the cluster, "restart"
	// restarts the manager from its StateDir (New + Start).
	crashEnvChild = "SHOAL_CRASH_CHILD"
	// crashEnvDir is the manager's StateDir.
	crashEnvDir = "SHOAL_CRASH_DIR"
	// crashEnvAddr is the fixed host:port the manager listens on.
	crashEnvAddr = "SHOAL_CRASH_ADDR"
	// crashEnvSnapshot, if set, is Config.Raft.SnapshotInterval, so that
	// snapshots and log compaction also happen while the manager is killed.
	crashEnvSnapshot = "SHOAL_CRASH_SNAPSHOT"
)

// crashChildLifetime bounds how long a child lives if nobody kills it and its
// standard input never closes (it should never come to that).
const crashChildLifetime = 5 * time.Minute

// runCrashChildIfAsked returns at once unless the test binary was re-executed
// by the crash test (SHOAL_CRASH_CHILD set). Then it runs one manager, writes
// "READY <addr>" on stdout once the manager serves and blocks until it is
// killed or its standard input closes (the parent test went away); it never
// returns. TestMain calls it before anything else.
func runCrashChildIfAsked() {
	mode := os.Getenv(crashEnvChild)
	if mode == "" {
		return
	}
	os.Exit(runCrashChild(mode, os.Stdin, os.Stdout, os.Stderr))
}

func runCrashChild(mode string, stdin io.Reader, stdout, stderr io.Writer) int {
	fail := func(format string, args ...any) int {
		fmt.Fprintf(stdout, "ERROR %s\n", fmt.Sprintf(format, args...))
		return 2
	}
	cfg := shoal.DefaultConfig(os.Getenv(crashEnvDir), os.Getenv(crashEnvAddr))
	cfg.DisableAgent = true
	// A short tick makes the restarted single manager elect itself quickly,
	// so that a cycle costs little time.
	cfg.Raft.TickInterval = 20 * time.Millisecond
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if s := os.Getenv(crashEnvSnapshot); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return fail("%s=%q: %v", crashEnvSnapshot, s, err)
		}
		cfg.Raft.SnapshotInterval = v
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var node *shoal.Node
	switch mode {
	case "init":
		n, err := shoal.Init(ctx, cfg)
		if err != nil {
			return fail("init: %v", err)
		}
		node = n
	case "restart":
		n, err := shoal.New(cfg)
		if err != nil {
			return fail("new: %v", err)
		}
		if err := n.Start(ctx); err != nil {
			return fail("restart from %s: %v", cfg.StateDir, err)
		}
		node = n
	default:
		return fail("%s=%q: want init or restart", crashEnvChild, mode)
	}
	select {
	case <-node.Ready():
	case <-ctx.Done():
		return fail("not ready: %v", ctx.Err())
	}
	if mode == "init" {
		// Operator credentials for the parent test, which dials this
		// manager from outside.
		creds, err := node.Client().IssueClientCredentials(ctx, "crash-test", 0)
		if err != nil {
			return fail("client credentials: %v", err)
		}
		if err := creds.Save(crashClientCredsDir(cfg.StateDir)); err != nil {
			return fail("client credentials: %v", err)
		}
	}
	fmt.Fprintf(stdout, "READY %s\n", node.Addr())

	// Block until killed. If the parent dies, stdin reaches EOF and the
	// child goes too, so no manager outlives its test.
	eof := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, stdin)
		close(eof)
	}()
	select {
	case <-eof:
	case <-node.Done():
		return fail("node stopped by itself: %v", node.Err())
	case <-time.After(crashChildLifetime):
		return fail("still running after %s: the parent never killed it", crashChildLifetime)
	}
	stopCtx, stopCancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer stopCancel()
	if err := node.Stop(stopCtx); err != nil {
		return fail("stop: %v", err)
	}
	return 0
}

// childOutput collects a child's stdout, signals its first READY or ERROR
// line, and keeps everything for diagnostics.
type childOutput struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	line  []byte
	ready chan string // receives the address after READY, or "" after ERROR
	sent  bool
}

func newChildOutput() *childOutput { return &childOutput{ready: make(chan string, 1)} }

func (o *childOutput) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf.Write(p)
	for _, b := range p {
		if b != '\n' {
			o.line = append(o.line, b)
			continue
		}
		line := string(o.line)
		o.line = o.line[:0]
		if o.sent {
			continue
		}
		switch {
		case strings.HasPrefix(line, "READY "):
			o.sent = true
			o.ready <- strings.TrimPrefix(line, "READY ")
		case strings.HasPrefix(line, "ERROR "):
			o.sent = true
			o.ready <- ""
		}
	}
	return len(p), nil
}

func (o *childOutput) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// lockedBuffer is a bytes.Buffer safe for the concurrent writes of os/exec
// and reads of the test.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// Tail returns the last n lines written.
func (b *lockedBuffer) Tail(n int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(b.buf.Bytes()))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// crashClientCredsDir is where the init child leaves operator credentials
// for the parent (outside the manager's own state).
func crashClientCredsDir(stateDir string) string { return stateDir + "-client" }
