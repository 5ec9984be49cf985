package process

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"syscall"
	"time"

	"github.com/shoalhq/shoal/runtime"
)

var _ runtime.Execer = (*Controller)(nil)

// execWaitDelay is how long Exec waits for the command's output pipes
// after the command is killed (a child it left behind may hold them).
const execWaitDelay = time.Second

// Exec runs req as a program of the node next to the started task: in the
// task's environment (with its port variables, then req.Env) and working
// directory (req.Dir if set), Command[0] looked up in the task's PATH, in a
// process group of its own that is killed when ctx ends. The process
// runtime runs every program as the agent's user: req.User must be empty.
// See runtime.Execer.
func (c *Controller) Exec(ctx context.Context, req runtime.ExecRequest) (int, error) {
	if len(req.Command) == 0 || req.Command[0] == "" {
		return 0, fmt.Errorf("process: exec in task %s: ExecRequest.Command: must not be empty", c.task.ID)
	}
	if req.User != "" {
		return 0, fmt.Errorf("process: exec in task %s: ExecRequest.User: the process runtime runs programs as its own user only", c.task.ID)
	}
	c.mu.Lock()
	started, env, eps := c.started, c.env, c.endpoints
	c.mu.Unlock()
	if !started {
		return 0, fmt.Errorf("process: exec in task %s: %w", c.task.ID, runtime.ErrNotStarted)
	}
	select {
	case <-c.exited:
		return 0, fmt.Errorf("process: exec in task %s: the task has exited", c.task.ID)
	default:
	}
	env = dedupEnv(append(append(append([]string(nil), env...), portEnv(eps)...), req.Env...))
	dir := c.cwd
	if req.Dir != "" {
		dir = req.Dir
	}
	path, _ := lookupEnv(env, "PATH")
	program, err := resolveProgram(req.Command[0], path, dir)
	if err != nil {
		return 0, fmt.Errorf("process: exec in task %s: %w", c.task.ID, err)
	}
	cmd := exec.CommandContext(ctx, program, req.Command[1:]...)
	cmd.Args[0] = req.Command[0]
	cmd.Env, cmd.Dir = env, dir
	cmd.Stdout, cmd.Stderr = req.Stdout, req.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = execWaitDelay
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, nil
	case ctx.Err() != nil:
		return 0, ctx.Err()
	case errors.As(err, &ee) && ee.ExitCode() >= 0:
		return ee.ExitCode(), nil
	}
	return 0, fmt.Errorf("process: exec in task %s: %w", c.task.ID, err)
}
