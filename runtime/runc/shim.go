package runc

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// shimEnv is the environment variable that turns a run of the host
// program's own binary into a container's shim: its value is the
// container's directory. The package's init function checks it, so every
// program that imports this package can be its own shim, without a helper
// binary to install.
const shimEnv = "SHOAL_RUNC_SHIM"

func init() {
	if dir := os.Getenv(shimEnv); dir != "" {
		os.Exit(shimMain(dir))
	}
}

// Files of a container's directory.
const (
	fileTask       = "task.json"     // the runtime.Task, without credentials
	fileShimConfig = "shim.json"     // what the shim runs
	fileShimPid    = "shim.pid"      // "<pid> <start time>" of the shim, written by the shim
	fileStarted    = "started.json"  // written by the shim once runc started the container
	fileStartError = "start-error"   // written by the shim when runc failed to start it
	fileExit       = "exit.json"     // written by the shim once the container exited
	fileShimLog    = "shim.log"      // the shim's own diagnostics
	fileRuncLog    = "runc.log"      // runc's log (JSON lines)
	filePid        = "container.pid" // runc's pid file
	dirBundle      = "bundle"
	dirLogs        = "logs"
)

// shimConfig is what a shim is told to run.
type shimConfig struct {
	Runc     string `json:"runc"`
	Root     string `json:"root"` // runc --root
	ID       string `json:"id"`
	LogMax   int64  `json:"log_max"`   // bytes per log file before rotation
	LogFiles int    `json:"log_files"` // files kept per stream, the current one included
}

// startedRecord is written by the shim once the container runs.
type startedRecord struct {
	Pid int `json:"pid"`
}

// exitRecord is written by the shim once the container exited.
type exitRecord struct {
	Code   int    `json:"code"`
	Signal string `json:"signal,omitempty"`
	At     int64  `json:"at"` // Unix nanoseconds
}

// shimMain runs a container under runc and stays its parent: it is a child
// subreaper, so the container's init is re-parented to it when runc
// exits; it copies the container's stdout and stderr into rotated files,
// reaps the container and records its exit status. It runs in a session
// of its own, so the host program may stop or crash meanwhile.
func shimMain(dir string) int {
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGPIPE)
	logf, err := os.OpenFile(filepath.Join(dir, fileShimLog), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return 3
	}
	defer logf.Close()
	fail := func(format string, args ...any) int {
		fmt.Fprintf(logf, "%s shim: %s\n", time.Now().UTC().Format(time.RFC3339Nano), fmt.Sprintf(format, args...))
		return 1
	}
	var cfg shimConfig
	if err := readJSON(filepath.Join(dir, fileShimConfig), &cfg); err != nil {
		return fail("%v", err)
	}
	if err := writeShimPid(dir); err != nil {
		return fail("%v", err)
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fail("becoming a subreaper: %v", err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		return fail("%v", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		return fail("%v", err)
	}
	logDir := filepath.Join(dir, dirLogs)
	stdout, err := openRotating(filepath.Join(logDir, "stdout.log"), cfg.LogMax, cfg.LogFiles)
	if err != nil {
		return fail("%v", err)
	}
	stderr, err := openRotating(filepath.Join(logDir, "stderr.log"), cfg.LogMax, cfg.LogFiles)
	if err != nil {
		return fail("%v", err)
	}
	cmd := exec.Command(cfg.Runc, "--root", cfg.Root, "--log", filepath.Join(dir, fileRuncLog), "--log-format", "json",
		"run", "--detach", "--pid-file", filepath.Join(dir, filePid), "--bundle", filepath.Join(dir, dirBundle), cfg.ID)
	cmd.Stdout, cmd.Stderr = outW, errW
	runErr := cmd.Run()
	outW.Close()
	errW.Close()
	if runErr != nil {
		_ = outR.Close()
		// runc logs its error (and prints it to what was to be the
		// container's stderr): keep the message for the agent.
		msg := runcError(filepath.Join(dir, fileRuncLog))
		if msg == "" {
			var b strings.Builder
			_, _ = io.Copy(&b, io.LimitReader(errR, 4096))
			msg = strings.TrimSpace(b.String())
		}
		if msg == "" {
			msg = runErr.Error()
		}
		_ = errR.Close()
		if err := writeFileAtomic(filepath.Join(dir, fileStartError), []byte(msg)); err != nil {
			return fail("%v", err)
		}
		return 0
	}
	pid, err := readPidFile(filepath.Join(dir, filePid))
	if err != nil {
		return fail("%v", err)
	}
	if err := writeJSONAtomic(filepath.Join(dir, fileStarted), startedRecord{Pid: pid}); err != nil {
		return fail("%v", err)
	}
	var copies sync.WaitGroup
	for _, c := range []struct {
		r *os.File
		w *rotating
	}{{outR, stdout}, {errR, stderr}} {
		copies.Add(1)
		go func() {
			defer copies.Done()
			_, _ = io.Copy(c.w, c.r)
			_ = c.w.Close()
			_ = c.r.Close()
		}()
	}
	rec := reapContainer(pid)
	// The container's processes are gone with its PID namespace's init, so
	// the pipes reach EOF; the wait is bounded in case a process outside
	// the namespace inherited them.
	done := make(chan struct{})
	go func() { copies.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
	rec.At = time.Now().UnixNano()
	if err := writeJSONAtomic(filepath.Join(dir, fileExit), rec); err != nil {
		return fail("%v", err)
	}
	return 0
}

// reapContainer waits for any child until pid exits (the shim reaps every
// child it gets, as a subreaper must) and returns how it ended.
func reapContainer(pid int) exitRecord {
	for {
		var ws unix.WaitStatus
		got, err := unix.Wait4(-1, &ws, 0, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return exitRecord{Code: -1, Signal: "unknown"}
		}
		if got != pid {
			continue
		}
		switch {
		case ws.Exited():
			return exitRecord{Code: ws.ExitStatus()}
		case ws.Signaled():
			return exitRecord{Code: -1, Signal: signalName(ws.Signal())}
		}
	}
}

func signalName(s syscall.Signal) string {
	if n := unix.SignalName(s); n != "" {
		return n
	}
	return "signal " + strconv.Itoa(int(s))
}

// writeShimPid records the shim's PID and start time, so that a later
// agent can tell the shim from a process that reused its PID.
func writeShimPid(dir string) error {
	pid := os.Getpid()
	st, err := processStartTime(pid)
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, fileShimPid), []byte(fmt.Sprintf("%d %d\n", pid, st)))
}

// processStartTime returns field 22 of /proc/<pid>/stat: the process's
// start time in clock ticks since boot.
func processStartTime(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	fields := strings.Fields(string(b[i+1:]))
	// fields[0] is field 3 (state); the start time is field 22.
	if len(fields) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	return strconv.ParseUint(fields[19], 10, 64)
}

func readShimPid(dir string) (pid int, start uint64, err error) {
	b, err := os.ReadFile(filepath.Join(dir, fileShimPid))
	if err != nil {
		return 0, 0, err
	}
	if _, err := fmt.Sscanf(string(b), "%d %d", &pid, &start); err != nil {
		return 0, 0, fmt.Errorf("%s: %w", fileShimPid, err)
	}
	return pid, start, nil
}

func readPidFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("%s: malformed pid %q", path, b)
	}
	return pid, nil
}

// runcError returns the message of the last error in runc's JSON log.
func runcError(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	var last string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var e struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		if json.Unmarshal(sc.Bytes(), &e) == nil && (e.Level == "error" || e.Level == "fatal") {
			last = e.Msg
		}
	}
	return last
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

func writeJSONAtomic(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return writeFileAtomic(path, b)
}

// writeFileAtomic writes b to a temporary file, syncs it and renames it
// over path, so a reader sees the old content or the new, never a part.
func writeFileAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
