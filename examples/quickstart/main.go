// Command quickstart runs a whole Shoal cluster in one process: one manager
// and three workers on 127.0.0.1-4, each running the routing mesh. It
// creates a service of 6 replicas of a tiny HTTP server (this same binary,
// re-executed as the task's program) that publishes a port in ingress mode,
// shows where the tasks run and that the published port answers on every
// node, spread over the tasks, scales to 9, stops a worker and shows its
// tasks rescheduled on the others and the port still answering, scales down
// to 4 under load (the mesh drains tasks before they stop), removes the
// service and exits 0.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/shoalhq/shoal"
	"github.com/shoalhq/shoal/gossip"
)

// taskEnv marks the re-executed binary as a task.
const taskEnv = "SHOAL_QUICKSTART_TASK"

// targetPort is the port the web service's tasks listen on, as far as the
// service spec is concerned; the process runtime gives each task its own
// host port instead (PORT), and the routing mesh forwards to it.
const targetPort = 80

// gossipPort is the routing mesh's gossip port on every node's address when
// the quickstart runs on fixed ports (serf's customary port).
const gossipPort = 7946

func main() {
	if os.Getenv(taskEnv) == "1" {
		serveTask()
		return
	}
	port := flag.Int("port", 4242, "port every node listens on (0 picks free ports)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if _, err := run(ctx, os.Stdout, *port); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

// serveTask is the program every task runs: an HTTP server on the host port
// the process runtime gave it (PORT, on every address of the host, so the
// routing mesh reaches it at its node's address) that says which task
// answered.
func serveTask() {
	addr := ":" + os.Getenv("PORT")
	if os.Getenv("PORT") == "" {
		addr = "127.0.0.1:0" // run by hand, outside a cluster
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("listening on %s\n", lis.Addr())
	name := fmt.Sprintf("task %s (slot %s)", short8(os.Getenv("SHOAL_TASK_ID")), os.Getenv("SHOAL_TASK_SLOT"))
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s on node %s\n", name, short8(os.Getenv("SHOAL_NODE_ID")))
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

// meshCheck records one round of requests sent to the published port of
// every running node: which tasks answered on which node, and which tasks
// were running or had been stopped at the time. The test reads it.
type meshCheck struct {
	Step string
	Port uint16
	// Running holds the IDs of the service's running tasks.
	Running map[string]bool
	// Stopped holds the IDs of the service's tasks stopped before the round
	// (on a stopped worker, or scaled away).
	Stopped map[string]bool
	// Replies maps a node's hostname to the IDs of the tasks that answered
	// its published port, in order.
	Replies map[string][]string
}

type cluster struct {
	out      io.Writer
	mgr      *shoal.Node
	workers  []*shoal.Node
	stateDir map[string]string     // node ID → StateDir
	names    map[string]string     // node ID → hostname
	ips      map[string]netip.Addr // node ID → its loopback address (mesh)
	// http sends every request on a new connection, so the routing mesh
	// balances each one (it balances connections, not requests).
	http   *http.Client
	checks []meshCheck
}

func run(ctx context.Context, out io.Writer, port int) ([]meshCheck, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "shoal-quickstart-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	c := &cluster{out: out, stateDir: map[string]string{}, names: map[string]string{}, ips: map[string]netip.Addr{},
		http: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}}
	defer c.stopAll()
	err = c.demo(ctx, exe, dir, port)
	return c.checks, err
}

func (c *cluster) demo(ctx context.Context, exe, dir string, port int) error {
	out := c.out
	// Step 1: the first manager creates the cluster. It does not run tasks
	// here, so the table shows the workers' share clearly (and its published
	// port shows that a node without tasks answers too).
	step(out, "1. Init a manager on 127.0.0.1")
	gport := gossipPort
	if port == 0 {
		gport = 0 // free ports everywhere, so tests never collide
	}
	cfg := func(i int, name string) shoal.Config {
		ip := netip.AddrFrom4([4]byte{127, 0, 0, byte(i)})
		return shoal.Config{
			StateDir:        filepath.Join(dir, name),
			ListenAddr:      netip.AddrPortFrom(ip, uint16(port)).String(),
			Hostname:        name,
			HeartbeatPeriod: time.Second, // a stopped worker is noticed in ~3s
			RestartDelay:    500 * time.Millisecond,
			// Every node runs the routing mesh: a gossip member on its own
			// address that spreads its tasks' endpoints, and the userspace
			// balancer (no root needed) serving every published port on
			// its own address, so four nodes share one host.
			Mesh: shoal.MeshConfig{
				GossipAddr: netip.AddrPortFrom(ip, uint16(gport)).String(),
				Balancer:   shoal.BalancerUserspace,
				ListenAddr: ip,
				// A removed task leaves every balancer and then runs on
				// for DrainDelay before it is stopped. The default (2s)
				// covers gossip among 200 nodes; four nodes on loopback
				// learn a change in milliseconds, and the quickstart
				// stays quick.
				DrainDelay: 300 * time.Millisecond,
				// For the same reason a stopping node waits less for its
				// gossip leave to spread (default 1s, and up to 5s for
				// the broadcast when no peer is left to take it).
				Gossip: func(g *gossip.Config) {
					g.LeavePropagateDelay = 300 * time.Millisecond
					g.LeaveTimeout = 500 * time.Millisecond
				},
			},
		}
	}
	mcfg := cfg(1, "manager")
	mcfg.DisableAgent = true
	var err error
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

	// Step 3: a service of 6 replicas of this binary as an HTTP server,
	// publishing its port in ingress mode: the cluster allocates a port
	// that answers on every node.
	step(out, "3. Create service \"web\" with 6 replicas, publishing port 80 in ingress mode")
	svc, err := cl.CreateService(ctx, shoal.ServiceSpec{
		Name:     "web",
		Replicas: 6,
		Task: shoal.TaskSpec{
			Command:         []string{exe},
			Env:             []string{taskEnv + "=1"},
			StopGracePeriod: 5 * time.Second,
		},
		// Published 0: the managers allocate a port from 30000-32767.
		Ports: []shoal.PortConfig{{Target: targetPort, Mode: shoal.Ingress}},
	})
	if err != nil {
		return fmt.Errorf("create service: %w", err)
	}
	published, err := publishedPort(svc)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "web publishes %s: port %d answers on every node\n", svc.Ports[0], published)
	if err := c.waitRunning(ctx, svc.ID, 6, ""); err != nil {
		return err
	}
	if err := c.printTasks(ctx, svc.ID); err != nil {
		return err
	}
	if err := c.callTasks(ctx, svc.ID, 6); err != nil {
		return err
	}
	if err := c.checkMesh(ctx, "3", svc.ID, published, 6, nil); err != nil {
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

	// Step 5: stop a worker; its tasks are rescheduled on the others, and
	// the published port keeps answering on the surviving nodes.
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
	gone, err := c.taskIDs(ctx, svc.ID, func(t *shoal.Task) bool { return t.NodeID == victimID })
	if err != nil {
		return err
	}
	if err := c.checkMesh(ctx, "5", svc.ID, published, 9, gone); err != nil {
		return err
	}

	// Step 6: scale down under load. The removed tasks leave every node's
	// balancer first and stop DrainDelay later, so no request fails.
	step(out, "6. Scale \"web\" down to 4 while requests keep coming")
	before, err := c.taskIDs(ctx, svc.ID, running)
	if err != nil {
		return err
	}
	load := c.startLoad(netip.AddrPortFrom(c.ips[c.mgr.ID()], published))
	if _, err := cl.ScaleService(ctx, svc.ID, 4); err != nil {
		load.stop()
		return fmt.Errorf("scale: %w", err)
	}
	err = c.waitRunning(ctx, svc.ID, 4, victimID)
	if err == nil {
		// Until the removed tasks have exited: they drain first.
		err = waitFor(ctx, "scaled-down tasks stopped", func() (bool, error) {
			ts, err := cl.ListTasks(ctx, shoal.TaskFilter{Service: svc.ID})
			for _, t := range ts {
				if t.DesiredState > shoal.TaskRunning && t.Status.State <= shoal.TaskRunning && t.NodeID != victimID {
					return false, err
				}
			}
			return true, err
		})
	}
	ok, failed := load.stop()
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "during the scale-down: %d requests to %s, %d failed\n", ok+failed, load.addr, failed)
	if err := c.printTasks(ctx, svc.ID); err != nil {
		return err
	}
	// The scaled-away tasks: running before, not now (they are removed
	// from the task list once stopped).
	after, err := c.taskIDs(ctx, svc.ID, running)
	if err != nil {
		return err
	}
	gone = map[string]bool{}
	for id := range before {
		if !after[id] {
			gone[id] = true
		}
	}
	if err := c.checkMesh(ctx, "6", svc.ID, published, 4, gone); err != nil {
		return err
	}

	// Step 7: remove the service; every task is stopped and removed.
	step(out, "7. Remove service \"web\"")
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

	step(out, "8. Stop the cluster")
	if err := c.stopAll(); err != nil {
		return err
	}
	fmt.Fprintln(out, "done")
	return nil
}

func step(out io.Writer, s string) { fmt.Fprintf(out, "\n== %s\n", s) }

// short is an ID as the tables print it (12 characters).
func short(id string) string { return prefix(id, 12) }

// short8 is an ID as a task's reply names it (8 characters).
func short8(id string) string { return prefix(id, 8) }

func prefix(id string, n int) string { return id[:min(n, len(id))] }

func publishedPort(svc *shoal.Service) (uint16, error) {
	for _, p := range svc.Ports {
		if p.Target == targetPort && p.Mode == shoal.Ingress && p.Published != 0 {
			return p.Published, nil
		}
	}
	return 0, fmt.Errorf("service %s: no published ingress port for target %d in %v", svc.Spec.Name, targetPort, svc.Ports)
}

func (c *cluster) note(n *shoal.Node, cfg shoal.Config) {
	c.stateDir[n.ID()] = cfg.StateDir
	c.names[n.ID()] = cfg.Hostname
	c.ips[n.ID()] = cfg.Mesh.ListenAddr
}

// live returns the running nodes, manager first.
func (c *cluster) live() []*shoal.Node {
	return append([]*shoal.Node{c.mgr}, c.workers...)
}

func (c *cluster) stopAll() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// All at once: each node's Stop spends about a second letting its
	// gossip leave reach the others (gossip.Config.LeavePropagateDelay).
	nodes := c.workers
	if c.mgr != nil {
		nodes = append(nodes, c.mgr)
	}
	c.workers, c.mgr = nil, nil
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Go(func() { errs[i] = n.Stop(ctx) })
	}
	wg.Wait()
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
				if t.Status.State == shoal.TaskRunning && t.NodeID != avoid && len(t.Endpoints) > 0 {
					running++
				}
			}
		}
		return running == n && live == n, err
	})
}

// taskIDs returns the IDs of the service's tasks that keep says to.
func (c *cluster) taskIDs(ctx context.Context, svc string, keep func(*shoal.Task) bool) (map[string]bool, error) {
	ts, err := c.mgr.Client().ListTasks(ctx, shoal.TaskFilter{Service: svc})
	if err != nil {
		return nil, err
	}
	ids := map[string]bool{}
	for _, t := range ts {
		if keep(t) {
			ids[t.ID] = true
		}
	}
	return ids, nil
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func running(t *shoal.Task) bool {
	return t.DesiredState == shoal.TaskRunning && t.Status.State == shoal.TaskRunning
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
		if running(t) {
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

// callTasks sends a request straight to each running task, at the endpoint
// its node reported (Task.Endpoints: the node's address and the host port
// the process runtime gave the task), until all want running tasks have
// answered, each itself. (A task that lost its host port to another
// program before it could bind it fails and is replaced, and the port may
// then answer for someone else: the price of running plain programs.)
func (c *cluster) callTasks(ctx context.Context, svc string, want int) error {
	replies := map[string]string{} // task ID → reply
	var run []*shoal.Task
	err := waitFor(ctx, fmt.Sprintf("%d tasks to answer at their endpoints", want), func() (bool, error) {
		ts, err := c.mgr.Client().ListTasks(ctx, shoal.TaskFilter{Service: svc})
		if err != nil {
			return false, err
		}
		run = slices.DeleteFunc(ts, func(t *shoal.Task) bool { return !running(t) || len(t.Endpoints) == 0 })
		var lastErr error
		for _, t := range run {
			if _, ok := replies[t.ID]; ok {
				continue
			}
			// Running means the program started; it may not listen yet.
			body, err := c.get(ctx, t.Endpoints[0].Addr)
			if err != nil {
				lastErr = fmt.Errorf("call %s: %w", t.Name(), err)
				continue
			}
			if id, err := replyTask(body); err != nil || id != short8(t.ID) {
				lastErr = fmt.Errorf("call %s at %s: answered %q", t.Name(), t.Endpoints[0].Addr, body)
				continue
			}
			replies[t.ID] = body
		}
		for _, t := range run {
			if _, ok := replies[t.ID]; !ok {
				return false, lastErr
			}
		}
		return len(run) == want, nil
	})
	if err != nil {
		return err
	}
	for _, t := range run {
		fmt.Fprintf(c.out, "GET %s (%s) -> %s\n", t.Endpoints[0].Addr, t.Name(), replies[t.ID])
	}
	return nil
}

// get sends one request to addr and returns the reply's body.
func (c *cluster) get(ctx context.Context, addr netip.AddrPort) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr.String()+"/", nil)
	if err != nil {
		return "", err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", resp.Status, body)
	}
	return strings.TrimSpace(string(body)), nil
}

// replyTask returns the 8-character task ID prefix in a task's reply.
func replyTask(body string) (string, error) {
	var id string
	if _, err := fmt.Sscanf(body, "hello from task %s", &id); err != nil {
		return "", fmt.Errorf("unexpected reply %q: %w", body, err)
	}
	return id, nil
}

// waitMeshTables waits until want tasks of the service run and every
// running node's routing-mesh table (Node.MeshEndpoints) lists exactly them
// on port, and returns them.
func (c *cluster) waitMeshTables(ctx context.Context, svc string, port uint16, want int) ([]*shoal.Task, error) {
	var run []*shoal.Task
	err := waitFor(ctx, fmt.Sprintf("every node's mesh table to list the %d tasks of port %d", want, port), func() (bool, error) {
		ts, err := c.mgr.Client().ListTasks(ctx, shoal.TaskFilter{Service: svc})
		if err != nil {
			return false, err
		}
		run = slices.DeleteFunc(ts, func(t *shoal.Task) bool { return !running(t) })
		if len(run) != want {
			return false, nil // a task is being replaced
		}
		ids := make([]string, 0, len(run))
		for _, t := range run {
			ids = append(ids, t.ID)
		}
		slices.Sort(ids)
		for _, n := range c.live() {
			var got []string
			for _, e := range n.MeshEndpoints() {
				if e.ServiceID == svc && e.Published == port {
					got = append(got, e.TaskID)
				}
			}
			slices.Sort(got)
			if !slices.Equal(got, ids) {
				return false, nil
			}
		}
		return true, nil
	})
	return run, err
}

// checkMesh waits until every running node's mesh table lists the
// service's want running tasks, then sends as many requests as there are tasks
// to the published port on each node's address, prints which task
// answered, and fails if a reply came from anything but a running task
// (stopped lists the tasks that were stopped before; none may answer).
func (c *cluster) checkMesh(ctx context.Context, stepName, svc string, port uint16, want int, stopped map[string]bool) error {
	run, err := c.waitMeshTables(ctx, svc, port, want)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.out, "every node's mesh table lists the %d endpoints of web; %d requests to port %d on each node:\n",
		len(run), len(run), port)
	check := meshCheck{Step: stepName, Port: port, Running: map[string]bool{}, Stopped: maps.Clone(stopped),
		Replies: map[string][]string{}}
	byPrefix := map[string]*shoal.Task{}
	perNode := map[string]int{}
	for _, t := range run {
		check.Running[t.ID] = true
		byPrefix[short8(t.ID)] = t
		perNode[t.NodeID]++
	}
	stoppedPrefix := map[string]string{}
	for id := range stopped {
		stoppedPrefix[short8(id)] = id
	}
	distinct := map[string]bool{}
	tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	for _, n := range c.live() {
		name := c.names[n.ID()]
		addr := netip.AddrPortFrom(c.ips[n.ID()], port)
		var answered []string
		for range run {
			body, err := c.getRetry(ctx, addr)
			if err != nil {
				return fmt.Errorf("published port on %s (%s): %w", name, addr, err)
			}
			prefix, err := replyTask(body)
			if err != nil {
				return err
			}
			t := byPrefix[prefix]
			if t == nil {
				if id, ok := stoppedPrefix[prefix]; ok {
					return fmt.Errorf("%s answered on %s but was stopped", id, addr)
				}
				return fmt.Errorf("task %s answered on %s but is not a running task of web", prefix, addr)
			}
			check.Replies[name] = append(check.Replies[name], t.ID)
			answered = append(answered, t.Name())
			distinct[t.ID] = true
		}
		fmt.Fprintf(tw, "  GET %s\t%s\t(runs %s)\t-> %s\n", addr, name, plural(perNode[n.ID()], "task"), strings.Join(answered, " "))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(c.out, "%d nodes answered; %d of %d running tasks replied", len(check.Replies), len(distinct), len(run))
	if len(stopped) > 0 {
		fmt.Fprintf(c.out, "; none of the %s did", plural(len(stopped), "stopped task"))
	}
	fmt.Fprintln(c.out)
	c.checks = append(c.checks, check)
	return nil
}

// getRetry is get, tried again for a few seconds if it fails: a node's
// balancer applies its table a moment after the table changes.
func (c *cluster) getRetry(ctx context.Context, addr netip.AddrPort) (string, error) {
	var body string
	err := waitFor(ctx, "a reply from "+addr.String(), func() (bool, error) {
		var err error
		body, err = c.get(ctx, addr)
		return err == nil, err
	})
	return body, err
}

// load sends requests to one address, one at a time, until stopped.
type load struct {
	addr         netip.AddrPort
	done         chan struct{}
	wg           sync.WaitGroup
	mu           sync.Mutex
	ok, failures int
}

func (c *cluster) startLoad(addr netip.AddrPort) *load {
	l := &load{addr: addr, done: make(chan struct{})}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() { <-l.done; cancel() }()
		for {
			_, err := c.get(ctx, addr)
			if ctx.Err() != nil {
				return // cut short by stop: not counted
			}
			l.mu.Lock()
			if err != nil {
				l.failures++
			} else {
				l.ok++
			}
			l.mu.Unlock()
			select {
			case <-l.done:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return l
}

// stop ends the load and returns how many requests succeeded and failed.
func (l *load) stop() (ok, failed int) {
	close(l.done)
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ok, l.failures
}
