// Package shim is the supervisor of one runc container: the process that
// runs `runc run --detach`, stays the container's parent (a child
// subreaper), copies its output into rotated log files, reaps it and
// records its exit status in the container's directory, while the host
// program that started it may stop or crash.
//
// The package's init function turns a process started with Env set into
// a shim before main runs, so any program that imports runtime/runc can be
// its own shim. The command runtime/runc/cmd/shoal-runc-shim is a shim and
// nothing else: a small binary that starts faster and uses less memory
// per container than a large host program started again
// (runc.Config.ShimPath).
//
// It needs only the standard library and golang.org/x/sys/unix.
package shim

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

// Env is the environment variable that turns a process into a
// container's shim: its value is the container's directory. A shim is
// started with two pipes: file descriptor 3, which it closes once it wrote
// FileStarted or FileStartError, and file descriptor 4, from which it reads
// one byte before it starts the container. The starter can so start the
// shim early (while the container is being prepared) and let it go when
// the bundle is ready; if fd 4 closes without a byte, the shim exits
// without starting anything.
const Env = "SHOAL_RUNC_SHIM"

func init() {
	if dir := os.Getenv(Env); dir != "" {
		os.Exit(Run(dir))
	}
}

// Files of a container's directory that the shim reads or writes.
const (
	FileConfig     = "shim.json"     // what the shim runs (Config)
	FilePid        = "shim.pid"      // "<pid> <start time>" of the shim, written by the shim
	FileStarted    = "started.json"  // Started, written once runc started the container
	FileStartError = "start-error"   // runc's error, written when it failed to start it
	FileExit       = "exit.json"     // Exit, written once the container exited
	FileLog        = "shim.log"      // the shim's own diagnostics
	FileRuncLog    = "runc.log"      // runc's log (JSON lines)
	fileRuncPid    = "container.pid" // runc's pid file
	DirBundle      = "bundle"        // the OCI bundle
	DirLogs        = "logs"          // stdout.log[.N], stderr.log[.N]
)

// Config is what a shim is told to run.
type Config struct {
	Runc     string `json:"runc"`
	Root     string `json:"root"` // runc --root
	ID       string `json:"id"`
	LogMax   int64  `json:"log_max"`   // bytes per log file before rotation
	LogFiles int    `json:"log_files"` // files kept per stream, the current one included
}

// Started is written by the shim once the container runs.
type Started struct {
	Pid int `json:"pid"`
}

// Exit is written by the shim once the container exited.
type Exit struct {
	Code   int    `json:"code"`
	Signal string `json:"signal,omitempty"`
	At     int64  `json:"at"` // Unix nanoseconds
}

// Run is the shim's main: it runs the container of directory dir under
// runc and stays its parent (a child subreaper, so the container's init is
// re-parented to it when runc exits), copies the container's stdout and
// stderr into rotated files, reaps the container and records its exit
// status. It returns the process's exit code. The shim's starter puts it
// in a session of its own, so the host program may stop or crash
// meanwhile.
func Run(dir string) int {
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGPIPE)
	// The starter's pipes must reach neither runc nor the container: only
	// this process closes them.
	unix.CloseOnExec(3)
	unix.CloseOnExec(4)
	logf, err := os.OpenFile(filepath.Join(dir, FileLog), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return 3
	}
	defer logf.Close()
	fail := func(format string, args ...any) int {
		fmt.Fprintf(logf, "%s shim: %s\n", time.Now().UTC().Format(time.RFC3339Nano), fmt.Sprintf(format, args...))
		return 1
	}
	var cfg Config
	if err := ReadJSON(filepath.Join(dir, FileConfig), &cfg); err != nil {
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
	logDir := filepath.Join(dir, DirLogs)
	stdout, err := OpenRotating(filepath.Join(logDir, "stdout.log"), cfg.LogMax, cfg.LogFiles)
	if err != nil {
		return fail("%v", err)
	}
	stderr, err := OpenRotating(filepath.Join(logDir, "stderr.log"), cfg.LogMax, cfg.LogFiles)
	if err != nil {
		return fail("%v", err)
	}
	// Wait for the starter's go: the bundle is complete once it comes.
	var goByte [1]byte
	if n, _ := unix.Read(4, goByte[:]); n != 1 {
		notifyStarter()
		return 0 // the starter gave up (the task will not start)
	}
	_ = unix.Close(4)
	cmd := exec.Command(cfg.Runc, "--root", cfg.Root, "--log", filepath.Join(dir, FileRuncLog), "--log-format", "json",
		"run", "--detach", "--pid-file", filepath.Join(dir, fileRuncPid), "--bundle", filepath.Join(dir, DirBundle), cfg.ID)
	cmd.Stdout, cmd.Stderr = outW, errW
	runErr := cmd.Run()
	outW.Close()
	errW.Close()
	if runErr != nil {
		_ = outR.Close()
		// runc logs its error (and prints it to what was to be the
		// container's stderr): keep the message for the agent.
		msg := runcError(filepath.Join(dir, FileRuncLog))
		if msg == "" {
			var b strings.Builder
			_, _ = io.Copy(&b, io.LimitReader(errR, 4096))
			msg = strings.TrimSpace(b.String())
		}
		if msg == "" {
			msg = runErr.Error()
		}
		_ = errR.Close()
		if err := WriteFileAtomic(filepath.Join(dir, FileStartError), []byte(msg)); err != nil {
			return fail("%v", err)
		}
		notifyStarter()
		return 0
	}
	pid, err := readPidFile(filepath.Join(dir, fileRuncPid))
	if err != nil {
		return fail("%v", err)
	}
	if err := WriteJSONAtomic(filepath.Join(dir, FileStarted), Started{Pid: pid}); err != nil {
		return fail("%v", err)
	}
	notifyStarter()
	var copies sync.WaitGroup
	for _, c := range []struct {
		r *os.File
		w *Rotating
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
	if err := WriteJSONAtomic(filepath.Join(dir, FileExit), rec); err != nil {
		return fail("%v", err)
	}
	return 0
}

// notifyStarter closes file descriptor 3, the pipe the starter waits on.
func notifyStarter() { _ = unix.Close(3) }

// reapContainer waits for any child until pid exits (the shim reaps every
// child it gets, as a subreaper must) and returns how it ended.
func reapContainer(pid int) Exit {
	for {
		var ws unix.WaitStatus
		got, err := unix.Wait4(-1, &ws, 0, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return Exit{Code: -1, Signal: "unknown"}
		}
		if got != pid {
			continue
		}
		switch {
		case ws.Exited():
			return Exit{Code: ws.ExitStatus()}
		case ws.Signaled():
			return Exit{Code: -1, Signal: signalName(ws.Signal())}
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
	st, err := ProcessStartTime(pid)
	if err != nil {
		return err
	}
	return WriteFileAtomic(filepath.Join(dir, FilePid), []byte(fmt.Sprintf("%d %d\n", pid, st)))
}

// ProcessStartTime returns field 22 of /proc/<pid>/stat: the process's
// start time in clock ticks since boot.
func ProcessStartTime(pid int) (uint64, error) {
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

func ReadPid(dir string) (pid int, start uint64, err error) {
	b, err := os.ReadFile(filepath.Join(dir, FilePid))
	if err != nil {
		return 0, 0, err
	}
	if _, err := fmt.Sscanf(string(b), "%d %d", &pid, &start); err != nil {
		return 0, 0, fmt.Errorf("%s: %w", FilePid, err)
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

func ReadJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

func WriteJSONAtomic(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return WriteFileAtomic(path, b)
}

// WriteFileAtomic writes b to a temporary file and renames it over path,
// so a reader sees the old content or the new, never a part. It does not
// sync: a container's files matter only while the machine runs (no
// container survives a reboot), and the page cache outlives a crash of
// the processes that wrote them.
func WriteFileAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
