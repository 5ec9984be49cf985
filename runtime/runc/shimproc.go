package runc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shoalhq/shoal/runtime"
	"github.com/shoalhq/shoal/runtime/runc/shim"
)

// spawned is a shim started by Prepare, waiting for Start's go.
type spawned struct {
	pidfd  *os.File // the shim's pidfd
	goW    *os.File // a byte lets the shim start the container; closing it without one sends it away
	notify *os.File // reaches EOF once the shim decided the start, or died
}

// spawnShim starts the container's shim, which waits for a byte on its go
// pipe: its start overlaps the rest of Prepare. Called by prepare.
func (c *Controller) spawnShim() (*spawned, error) {
	for _, f := range []string{shim.FileStarted, shim.FileStartError, shim.FileExit, shim.FilePid} {
		_ = os.Remove(filepath.Join(c.dir, f))
	}
	cfg := shim.Config{Runc: c.rt.runc, Root: c.rt.root, ID: c.task.ID, LogMax: c.rt.cfg.LogMaxBytes, LogFiles: c.rt.cfg.LogMaxFiles}
	if err := shim.WriteJSONAtomic(filepath.Join(c.dir, shim.FileConfig), cfg); err != nil {
		return nil, err
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, err
	}
	defer devnull.Close()
	shimLog, err := os.OpenFile(filepath.Join(c.dir, shim.FileLog), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer shimLog.Close()
	env := []string{shim.Env + "=" + c.dir}
	if p, ok := os.LookupEnv("PATH"); ok {
		env = append(env, "PATH="+p)
	}
	notifyR, notifyW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	goR, goW, err := os.Pipe()
	if err != nil {
		notifyR.Close()
		notifyW.Close()
		return nil, err
	}
	proc, err := os.StartProcess(c.rt.shim, []string{c.rt.shim}, &os.ProcAttr{
		Dir:   "/",
		Env:   env,
		Files: []*os.File{devnull, shimLog, shimLog, notifyW, goR},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
	notifyW.Close()
	goR.Close()
	if err != nil {
		notifyR.Close()
		goW.Close()
		return nil, fmt.Errorf("starting the shim %s: %w", c.rt.shim, err)
	}
	// The shim is an unreaped child: its PID cannot be reused before the
	// pidfd is open.
	fd, err := unix.PidfdOpen(proc.Pid, 0)
	_ = proc.Release()
	if err != nil {
		notifyR.Close()
		goW.Close() // the shim exits without starting anything
		return nil, fmt.Errorf("pidfd of the shim: %w", err)
	}
	return &spawned{pidfd: newPidfd(fd), goW: goW, notify: notifyR}, nil
}

// dismiss sends a spawned shim away without a start and reaps it.
func (sp *spawned) dismiss() {
	sp.goW.Close()
	sp.notify.Close()
	reapWait(sp.pidfd)
	sp.pidfd.Close()
}

// startShim lets the spawned shim start the container and waits until it
// reports that runc started it (or failed to). It returns the shim's pidfd.
func (c *Controller) startShim(ctx context.Context, sp *spawned) (*os.File, error) {
	_, werr := sp.goW.Write([]byte{1})
	sp.goW.Close()
	defer sp.notify.Close()
	pidfd := sp.pidfd
	if werr == nil {
		stop := context.AfterFunc(ctx, func() { _ = sp.notify.SetReadDeadline(time.Now()) })
		_, _ = io.Copy(io.Discard, sp.notify)
		stop()
	}
	if _, err := os.Stat(filepath.Join(c.dir, shim.FileStarted)); err == nil {
		return pidfd, nil
	}
	if msg, err := os.ReadFile(filepath.Join(c.dir, shim.FileStartError)); err == nil {
		reapWait(pidfd)
		pidfd.Close()
		return nil, fmt.Errorf("runc could not start the container: %s", strings.TrimSpace(string(msg)))
	}
	if err := ctx.Err(); err != nil {
		// The shim goes on and the container may start: kill whatever
		// runc made of it, so nothing runs unknown to the agent.
		_, _ = c.rt.runcCmd(context.Background(), "kill", c.task.ID, "KILL")
		pidfd.Close()
		return nil, err
	}
	reapWait(pidfd)
	pidfd.Close()
	b, _ := os.ReadFile(filepath.Join(c.dir, shim.FileLog))
	return nil, fmt.Errorf("the shim exited before the container started: %s", lastLine(string(b)))
}

// reapWait reaps the shim once it exits (it does right after a failed
// start), waiting at most a few seconds.
func reapWait(pidfd *os.File) {
	for range 500 {
		if exitedFd(pidfd) {
			reap(pidfd)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// exitedFd reports whether the process of a pidfd has exited.
func exitedFd(pidfd *os.File) bool {
	fds := []unix.PollFd{{Fd: int32(pidfd.Fd()), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n > 0
}

// reap collects the exit of the pidfd's process if it is this program's
// child (the shim it started); for a shim adopted from an earlier run it
// is a no-op (ECHILD).
func reap(pidfd *os.File) {
	var info unix.Siginfo
	_ = unix.Waitid(unix.P_PIDFD, int(pidfd.Fd()), &info, unix.WEXITED|unix.WNOHANG, nil)
}

// startWaiter watches the shim until it exits, then reads the container's
// exit record. Called with c.mu held.
func (c *Controller) startWaiter(pidfd *os.File) {
	c.pidfd = pidfd
	done := make(chan struct{})
	c.waiterDone = done
	go func() {
		defer close(done)
		c.waitShim(pidfd)
	}()
}

// waitShim blocks until the shim exits (or Detach lets go). The pidfd is
// non-blocking and waited on through Go's poller, so no thread is held per
// container; Detach unblocks the wait by closing it.
func (c *Controller) waitShim(pidfd *os.File) {
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-c.detached:
			_ = pidfd.SetReadDeadline(time.Now())
		case <-stop:
		}
	}()
	waitReadable(pidfd)
	if isClosed(c.detached) {
		pidfd.Close()
		return
	}
	reap(pidfd)
	pidfd.Close()
	st := c.readExit()
	c.mu.Lock()
	if c.killedAfterGrace && st.Signal == "SIGKILL" {
		st.Message = fmt.Sprintf("killed by SIGKILL after %s grace period", c.grace)
	}
	c.status = st
	c.mu.Unlock()
	close(c.exited)
}

// waitReadable waits until the pidfd is readable (its process exited) or
// its read deadline passes.
func waitReadable(pidfd *os.File) {
	rc, err := pidfd.SyscallConn()
	if err == nil {
		err = rc.Read(func(uintptr) bool { return exitedFd(pidfd) })
	}
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, os.ErrClosed) {
		return
	}
	// Not pollable here: look every few milliseconds instead.
	for !exitedFd(pidfd) {
		time.Sleep(20 * time.Millisecond)
	}
}

// readExit reads the shim's exit record. A shim that died without one (it
// was killed) leaves the container unsupervised: it is killed, and the
// status says why.
func (c *Controller) readExit() runtime.ExitStatus {
	var rec shim.Exit
	if err := shim.ReadJSON(filepath.Join(c.dir, shim.FileExit), &rec); err == nil {
		st := runtime.ExitStatus{Code: rec.Code, Signal: rec.Signal}
		st.Message = st.String()
		return st
	}
	_, _ = c.rt.runcCmd(context.Background(), "kill", c.task.ID, "KILL")
	return runtime.ExitStatus{Code: -1, Signal: "SIGKILL", Message: "the container's shim died without recording its exit; the container was killed"}
}

// openShim opens a pidfd of the container's shim if it still runs (the
// same process: its start time matches the record).
func openShim(dir string) (*os.File, error) {
	pid, start, err := shim.ReadPid(dir)
	if err != nil {
		return nil, err
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, err
	}
	f := newPidfd(fd)
	if st, err := shim.ProcessStartTime(pid); err != nil || st != start {
		f.Close()
		return nil, fmt.Errorf("the shim (pid %d) is gone", pid)
	}
	return f, nil
}

// newPidfd wraps a pidfd as a non-blocking file, so Go's poller waits on it.
func newPidfd(fd int) *os.File {
	_ = unix.SetNonblock(fd, true)
	return os.NewFile(uintptr(fd), "shim-pidfd")
}
