// Command quickstart runs a whole Shoal cluster in one process: one manager
// and three workers on 127.0.0.1-4. It creates a service of 6 replicas of a
// tiny HTTP server (this same binary, re-executed as the task's program),
// shows where the tasks run, scales to 9, stops a worker and shows its tasks
// rescheduled on the others, removes the service and exits 0.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/shoalhq/shoal"
)

// taskEnv marks the re-executed binary as a task.
const taskEnv = "SHOAL_QUICKSTART_TASK"

func main() {
	if os.Getenv(taskEnv) == "1" {
		serveTask()
		return
	}
	port := flag.Int("port", 4242, "port every node listens on (0 picks free ports)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Stdout, *port); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

// serveTask is the program every task runs: an HTTP server on a free port of
// 127.0.0.1 that says which task answered. It prints its address first, so
// the quickstart can find it in the task's log.
func serveTask() {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("listening on %s\n", lis.Addr())
	name := fmt.Sprintf("task %s (slot %s)", os.Getenv("SHOAL_TASK_ID")[:8], os.Getenv("SHOAL_TASK_SLOT"))
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s on node %s\n", name, os.Getenv("SHOAL_NODE_ID")[:8])
	})}
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
		<-sig
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}()
	if err := srv.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

type cluster struct {
	out      io.Writer
	mgr      *shoal.Node
	workers  []*shoal.Node
	stateDir map[string]string // node ID → StateDir
	names    map[string]string // node ID → hostname
}

func run(ctx context.Context, out io.Writer, port int) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "shoal-quickstart-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	c := &cluster{out: out, stateDir: map[string]string{}, names: map[string]string{}}
	defer c.stopAll()

	// Step 1: the first manager creates the cluster. It does not run tasks
	// here, so the table shows the workers' share clearly.
	step(out, "1. Init a manager on 127.0.0.1")
	cfg := func(i int, name string) shoal.Config {
		return shoal.Config{
			StateDir:        filepath.Join(dir, name),
			ListenAddr:      fmt.Sprintf("127.0.0.%d:%d", i, port),
			Hostname:        name,
			HeartbeatPeriod: time.Second, // a stopped worker is noticed in ~3s
			RestartDelay:    500 * time.Millisecond,
			// The quickstart publishes no ports: no routing mesh.
			Mesh: shoal.MeshConfig{Disabled: true},
		}
	}
	mcfg := cfg(1, "manager")
	mcfg.DisableAgent = true
	if c.mgr, err = shoal.Init(ctx, mcfg); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	c.note(c.mgr, mcfg)
	cl := c.mgr.Client()
	info, err := cl.Cluster(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "manager %s listens on %s\nworker join token: %s\n", short(c.mgr.ID()), c.mgr.Addr(), info.WorkerToken)

	// Step 2: three workers join with the worker token.
	step(out, "2. Join three workers on 127.0.0.2-4")
	for i := 2; i <= 4; i++ {
		wcfg := cfg(i, fmt.Sprintf("worker-%d", i-1))
		w, err := shoal.Join(ctx, wcfg, c.mgr.Addr(), info.WorkerToken)
		if err != nil {
			return fmt.Errorf("join worker-%d: %w", i-1, err)
		}
		c.workers = append(c.workers, w)
		c.note(w, wcfg)
	}
	if err := waitFor(ctx, "3 ready workers", func() (bool, error) {
		nodes, err := cl.ListNodes(ctx)
		ready := 0
		for _, n := range nodes {
			if n.Role == shoal.Worker && n.State == shoal.NodeReady {
				ready++
			}
		}
		return ready == 3, err
	}); err != nil {
		return err
	}
	if err := c.printNodes(ctx); err != nil {
		return err
	}

	// Step 3: a service of 6 replicas of this binary as an HTTP server.
	step(out, "3. Create service \"web\" with 6 replicas")
	svc, err := cl.CreateService(ctx, shoal.ServiceSpec{
		Name:     "web",
		Replicas: 6,
		Task: shoal.TaskSpec{
			Command:         []string{exe},
			Env:             []string{taskEnv + "=1"},
			StopGracePeriod: 5 * time.Second,
		},
	})
	if err != nil {
		return fmt.Errorf("create service: %w", err)
	}
	if err := c.waitRunning(ctx, svc.ID, 6, ""); err != nil {
		return err
	}
	if err := c.printTasks(ctx, svc.ID); err != nil {
		return err
	}
	if err := c.callTasks(ctx, svc.ID); err != nil {
		return err
	}

	// Step 4: scale to 9.
	step(out, "4. Scale \"web\" to 9 replicas")
	if _, err := cl.ScaleService(ctx, svc.ID, 9); err != nil {
		return fmt.Errorf("scale: %w", err)
	}
	if err := c.waitRunning(ctx, svc.ID, 9, ""); err != nil {
		return err
	}
	if err := c.printTasks(ctx, svc.ID); err != nil {
		return err
	}

	// Step 5: stop a worker; its tasks are rescheduled on the others.
	victim := c.workers[2]
	victimID := victim.ID()
	step(out, fmt.Sprintf("5. Stop %s; its tasks move to the other workers", c.names[victimID]))
	if err := victim.Stop(ctx); err != nil {
		return fmt.Errorf("stop worker: %w", err)
	}
	c.workers = c.workers[:2]
	if err := c.waitRunning(ctx, svc.ID, 9, victimID); err != nil {
		return err
	}
	if err := c.printTasks(ctx, svc.ID); err != nil {
		return err
	}
	if err := c.printNodes(ctx); err != nil {
		return err
	}

	// Step 6: remove the service; every task is stopped and removed.
	step(out, "6. Remove service \"web\"")
	if err := cl.RemoveService(ctx, svc.ID); err != nil {
		return fmt.Errorf("remove service: %w", err)
	}
	if err := waitFor(ctx, "tasks removed", func() (bool, error) {
		ts, err := cl.ListTasks(ctx, shoal.TaskFilter{Service: svc.ID})
		return len(ts) == 0, err
	}); err != nil {
		return err
	}
	fmt.Fprintln(out, "all tasks stopped and removed")

	step(out, "7. Stop the cluster")
	if err := c.stopAll(); err != nil {
		return err
	}
	fmt.Fprintln(out, "done")
	return nil
}

func step(out io.Writer, s string) { fmt.Fprintf(out, "\n== %s\n", s) }

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func (c *cluster) note(n *shoal.Node, cfg shoal.Config) {
	c.stateDir[n.ID()] = cfg.StateDir
	c.names[n.ID()] = cfg.Hostname
}

func (c *cluster) stopAll() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	for _, w := range c.workers {
		errs = append(errs, w.Stop(ctx))
	}
	c.workers = nil
	if c.mgr != nil {
		errs = append(errs, c.mgr.Stop(ctx))
		c.mgr = nil
	}
	return errors.Join(errs...)
}

func waitFor(ctx context.Context, what string, cond func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for {
		ok, err := cond()
		if err == nil && ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last error: %v)", what, ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitRunning waits until n tasks run, none of them on node avoid.
func (c *cluster) waitRunning(ctx context.Context, svc string, n int, avoid string) error {
	cl := c.mgr.Client()
	return waitFor(ctx, fmt.Sprintf("%d running tasks", n), func() (bool, error) {
		ts, err := cl.ListTasks(ctx, shoal.TaskFilter{Service: svc})
		running, live := 0, 0
		for _, t := range ts {
			if t.DesiredState <= shoal.TaskRunning {
				live++
				if t.Status.State == shoal.TaskRunning && t.NodeID != avoid {
					running++
				}
			}
		}
		return running == n && live == n, err
	})
}

func ago(t time.Time) string {
	d := time.Since(t).Round(time.Second)
	if d < time.Second {
		return "less than a second ago"
	}
	return fmt.Sprintf("%s ago", d)
}

func title(s fmt.Stringer) string {
	v := s.String()
	return strings.ToUpper(v[:1]) + v[1:]
}

// printTasks prints the service's tasks like docker service ps: the current
// task of each slot, then its history indented.
func (c *cluster) printTasks(ctx context.Context, svc string) error {
	ts, err := c.mgr.Client().ListTasks(ctx, shoal.TaskFilter{Service: svc})
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(c.out, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tNODE\tDESIRED STATE\tCURRENT STATE\tERROR")
	var prevSlot uint64
	per := map[string]int{}
	for _, t := range ts {
		name := t.Name()
		if t.Slot == prevSlot {
			name = ` \_ ` + name
		}
		prevSlot = t.Slot
		node := c.names[t.NodeID]
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s %s\t%s\n", short(t.ID), name, node, title(t.DesiredState),
			title(t.Status.State), ago(t.Status.Timestamp), t.Status.Err)
		if t.Status.State == shoal.TaskRunning && t.DesiredState == shoal.TaskRunning {
			per[node]++
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	var parts []string
	for _, w := range []string{"worker-1", "worker-2", "worker-3"} {
		if n, ok := per[w]; ok {
			parts = append(parts, fmt.Sprintf("%s: %d", w, n))
		}
	}
	fmt.Fprintf(c.out, "running tasks per node: %s\n", strings.Join(parts, ", "))
	return nil
}

func (c *cluster) printNodes(ctx context.Context) error {
	nodes, err := c.mgr.Client().ListNodes(ctx)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(c.out, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "ID\tHOSTNAME\tROLE\tSTATUS\tAVAILABILITY\tADDRESS")
	for _, n := range nodes {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", short(n.ID), n.Hostname, n.Role, title(n.State), title(n.Availability), n.Addr)
	}
	return tw.Flush()
}

// callTasks finds each running task's address in its log (the process
// runtime keeps stdout per task under the worker's StateDir) and sends it a
// request.
func (c *cluster) callTasks(ctx context.Context, svc string) error {
	ts, err := c.mgr.Client().ListTasks(ctx, shoal.TaskFilter{Service: svc, DesiredStates: []shoal.TaskState{shoal.TaskRunning}})
	if err != nil {
		return err
	}
	client := &http.Client{Timeout: 5 * time.Second}
	for _, t := range ts {
		logPath := filepath.Join(c.stateDir[t.NodeID], "tasks", t.ID, "stdout.log")
		var addr string
		if err := waitFor(ctx, "task address in "+logPath, func() (bool, error) {
			data, err := os.ReadFile(logPath)
			if err != nil {
				return false, err
			}
			line, _, _ := strings.Cut(string(data), "\n")
			addr = strings.TrimPrefix(line, "listening on ")
			return addr != line, nil
		}); err != nil {
			return err
		}
		resp, err := client.Get("http://" + addr + "/")
		if err != nil {
			return fmt.Errorf("call %s: %w", t.Name(), err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		fmt.Fprintf(c.out, "GET %s (%s) -> %s", addr, t.Name(), body)
	}
	return nil
}
