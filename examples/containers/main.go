// Command containers runs real containers on a Shoal cluster in one
// process: a manager and two workers on 127.0.0.1 to 127.0.0.3, each with
// its own runc runtime, bridge and address pool, and the routing mesh on.
// It builds a small web server from the Go source in webserver/, packs it
// into two images (versions 1 and 2) served by a registry in this process,
// runs a service of three replicas of version 1 that publishes port 8080 on
// every node, rolls it to version 2 one task at a time, then removes the
// service and everything it made.
//
// It needs root, runc and tini (see README.md); without them it says what
// is missing and exits with status 2.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/shoalhq/shoal"
	"github.com/shoalhq/shoal/gossip"
	"github.com/shoalhq/shoal/runtime/runc"
)

const (
	// repo is the images' repository in the registry.
	repo = "examples/web"
	// targetPort is the port the web server listens on in its container.
	targetPort = 8080
	// replicas is the web service's size: one task per node.
	replicas = 3
)

// nodeNames are the nodes' hostnames; node i listens on 127.0.0.(i+1).
var nodeNames = []string{"manager", "worker-1", "worker-2"}

func main() {
	verbose := flag.Bool("v", false, "log what the nodes and runtimes do to stderr")
	flag.Parse()
	if err := preflight(); err != nil {
		fmt.Fprintln(os.Stderr, "containers:", err)
		os.Exit(2)
	}
	logger := slog.New(slog.DiscardHandler)
	if *verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if _, err := run(ctx, os.Stdout, logger, bridges{Prefix: "shoalex", Base: 10}); err != nil {
		fmt.Fprintln(os.Stderr, "containers:", err)
		os.Exit(1)
	}
}

// preflight returns a sentence saying what this machine lacks to run the
// example, or nil.
func preflight() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root: containers are made with namespaces, cgroups, mounts and a bridge per node (run it with sudo)")
	}
	if _, err := exec.LookPath("runc"); err != nil {
		return errors.New("needs the runc binary in PATH (Debian's runc package)")
	}
	if _, err := exec.LookPath("tini-static"); err != nil {
		if _, err := exec.LookPath("docker-init"); err != nil {
			return errors.New("needs tini-static (Debian's tini package) or docker-init in PATH, the containers' init")
		}
	}
	if _, err := exec.LookPath("go"); err != nil {
		return errors.New("needs the go command in PATH to build the web server")
	}
	return nil
}

// bridges names the nodes' networks: node i gets the bridge Prefix+i and
// the pool 172.31.(Base+i).0/24. Bridges in one network namespace need
// distinct names and pools that do not overlap.
type bridges struct {
	Prefix string
	Base   int
}

func (b bridges) name(i int) string { return fmt.Sprintf("%s%d", b.Prefix, i) }

func (b bridges) subnet(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 31, byte(b.Base + i), 0}), 24)
}

// node is one cluster member and its container runtime.
type node struct {
	name   string
	ip     netip.Addr // its API, gossip and published ports
	bridge string
	rt     *runc.Runtime
	n      *shoal.Node // nil until started and once stopped
}

// report is what a run saw, for the test to check.
type report struct {
	// Dir is the run's temporary directory, removed at the end.
	Dir string
	// Bridges are the nodes' bridges, torn down at the end.
	Bridges []string
	// Published is web's published port.
	Published uint16
	// PerNode counts web's running tasks per node after it was created.
	PerNode map[string]int
	// Checks are the rounds of requests to every node's published port:
	// after the create (version 1) and after the update (version 2).
	Checks []meshCheck
	// Changes are the task changes seen during the update, in order.
	Changes []taskChange
	// Load counts the replies to requests sent during the update.
	Load loadCount
}

// meshCheck is one round of requests to the published port of every node.
type meshCheck struct {
	Version string
	// Running maps each running task's container hostname to its task ID.
	Running map[string]string
	// Replies maps a node's name to the replies its published port gave.
	Replies map[string][]reply
}

// reply is what the web server answered.
type reply struct {
	Hostname, Version string
}

// taskChange is a task's new state during the update.
type taskChange struct {
	TaskID   string
	Slot     uint64
	Version  string // the tag of the task's image
	Node     string
	State    shoal.TaskState
	Desired  shoal.TaskState
	ExitCode int
}

// demo holds what the run made, so that cleanup can undo it.
type demo struct {
	out    io.Writer
	log    *slog.Logger
	nets   bridges
	dir    string
	reg    *registry
	images [2]string // references of version 1 and 2, by tag
	nodes  []*node   // manager first
	names  map[string]string
	// http sends every request on a new connection, so the routing mesh
	// balances each one (it balances connections, not requests).
	http *http.Client
	rep  *report
	// cleaned says cleanup ran; a second call does nothing.
	cleaned bool
}

// run runs the example, writing what it does to out; logger receives the
// nodes' and runtimes' logs. It removes everything it made before it
// returns, whether it succeeded or not.
func run(ctx context.Context, out io.Writer, logger *slog.Logger, nets bridges) (*report, error) {
	dir, err := os.MkdirTemp("", "shoal-containers-")
	if err != nil {
		return nil, err
	}
	d := &demo{out: out, log: logger, nets: nets, dir: dir, names: map[string]string{},
		http: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}},
		rep:  &report{Dir: dir, PerNode: map[string]int{}}}
	err = d.steps(ctx)
	return d.rep, errors.Join(err, d.cleanup())
}

func (d *demo) steps(ctx context.Context) error {
	step(d.out, "1. Build the web server, versions 1 and 2, into two images")
	var imgs [2]imageBuild
	for i, version := range []string{"1", "2"} {
		bin, err := buildServer(ctx, d.dir, version)
		if err != nil {
			return err
		}
		img, err := serverImage(bin, version)
		if err != nil {
			return fmt.Errorf("image of version %s: %w", version, err)
		}
		imgs[i] = imageBuild{tag: repo + ":" + version, img: img}
		if st, err := os.Stat(bin); err == nil {
			fmt.Fprintf(d.out, "go build (CGO_ENABLED=0) of webserver version %s: %.1f MB, static\n", version, float64(st.Size())/1e6)
		}
	}

	step(d.out, "2. Serve both images from a registry on 127.0.0.1")
	var err error
	if d.reg, err = startRegistry(); err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	for i, b := range imgs {
		ref, digest, err := d.reg.Push(ctx, b.tag, b.img)
		if err != nil {
			return err
		}
		d.images[i] = ref
		fmt.Fprintf(d.out, "pushed %s (%s)\n", ref, digest)
	}

	step(d.out, "3. Start a manager (Init) and two workers (Join), each with its own runc runtime")
	if err := d.startNodes(ctx); err != nil {
		return err
	}

	step(d.out, fmt.Sprintf("4. Create service \"web\": %d replicas of %s:1, publishing port %d in ingress mode", replicas, repo, targetPort))
	svc, err := d.createWeb(ctx)
	if err != nil {
		return err
	}

	step(d.out, fmt.Sprintf("5. Update \"web\" to %s:2, one task at a time, a second apart", repo))
	if err := d.updateWeb(ctx, svc); err != nil {
		return err
	}

	step(d.out, "6. Remove \"web\", stop the nodes and clean up")
	if err := d.removeWeb(ctx, svc); err != nil {
		return err
	}
	if err := d.cleanup(); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "removed the bridges %s, the registry and %s\ndone\n", strings.Join(d.rep.Bridges, ", "), d.dir)
	return nil
}

// imageBuild is an image and the repo:tag it is pushed as.
type imageBuild struct {
	tag string
	img v1.Image
}

// startNodes makes each node's runtime, then starts the manager and joins
// the workers to it.
func (d *demo) startNodes(ctx context.Context) error {
	for i, name := range nodeNames {
		cfg := runc.DefaultConfig()
		cfg.Dir = filepath.Join(d.dir, name, "runc")
		// The registry is plain HTTP: every node's image store must be
		// told, as docker's insecure-registries.
		cfg.Images.InsecureRegistries = []string{d.reg.Host}
		// Three nodes share this machine's network namespace, so each
		// bridge needs its own name and pool.
		cfg.Network.Bridge = d.nets.name(i)
		cfg.Network.Subnet = d.nets.subnet(i)
		cfg.Logger = d.log.With("hostname", name)
		rt, err := runc.New(cfg)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		d.nodes = append(d.nodes, &node{name: name, ip: netip.AddrFrom4([4]byte{127, 0, 0, byte(i + 1)}),
			bridge: cfg.Network.Bridge, rt: rt})
		d.rep.Bridges = append(d.rep.Bridges, cfg.Network.Bridge)
	}

	mgr := d.nodes[0]
	mcfg := d.config(mgr)
	// The manager pins the service's image tag to a digest, so every task
	// runs the same image: it asks the registry too.
	mcfg.InsecureRegistries = []string{d.reg.Host}
	n, err := shoal.Init(ctx, mcfg)
	if err != nil {
		return fmt.Errorf("init: %w", err)
	}
	mgr.n = n
	d.names[n.ID()] = mgr.name
	info, err := n.Client().Cluster(ctx)
	if err != nil {
		return err
	}
	for _, w := range d.nodes[1:] {
		n, err := shoal.Join(ctx, d.config(w), mgr.n.Addr(), info.WorkerToken)
		if err != nil {
			return fmt.Errorf("join %s: %w", w.name, err)
		}
		w.n = n
		d.names[n.ID()] = w.name
	}
	cl := mgr.n.Client()
	var nodes []*shoal.NodeInfo
	if err := waitFor(ctx, "3 ready nodes", func() (bool, error) {
		nodes, err = cl.ListNodes(ctx)
		ready := 0
		for _, n := range nodes {
			if n.State == shoal.NodeReady {
				ready++
			}
		}
		return ready == len(d.nodes), err
	}); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(d.out, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "HOSTNAME\tROLE\tSTATUS\tADDRESS\tBRIDGE\tPOOL")
	for i, nd := range d.nodes {
		for _, n := range nodes {
			if n.ID == nd.n.ID() {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", n.Hostname, n.Role, n.State, n.Addr, nd.bridge, d.nets.subnet(i))
			}
		}
	}
	return tw.Flush()
}

// config is a node's configuration: its own address on loopback for the
// API, gossip and published ports, its runtime, and the routing mesh.
func (d *demo) config(nd *node) shoal.Config {
	return shoal.Config{
		StateDir:   filepath.Join(d.dir, nd.name, "state"),
		ListenAddr: netip.AddrPortFrom(nd.ip, 0).String(),
		Hostname:   nd.name,
		Runtime:    nd.rt,
		Logger:     d.log.With("hostname", nd.name),
		// Every node runs the routing mesh: a gossip member on its own
		// address and the userspace balancer serving published ports on
		// that address, so three nodes share one host. The balancer
		// forwards to the containers' addresses on the bridges, which
		// this host routes to.
		Mesh: shoal.MeshConfig{
			GossipAddr: netip.AddrPortFrom(nd.ip, 0).String(),
			Balancer:   shoal.BalancerUserspace,
			ListenAddr: nd.ip,
			// Three nodes on loopback learn an endpoint change in
			// milliseconds; the default drain (2s, for 200 nodes) would
			// only slow the rolling update down.
			DrainDelay: 300 * time.Millisecond,
			Gossip: func(g *gossip.Config) {
				g.LeavePropagateDelay = 300 * time.Millisecond
				g.LeaveTimeout = 500 * time.Millisecond
			},
		},
	}
}

// createWeb creates the web service, waits until every task runs, prints
// them and asks every node's published port.
func (d *demo) createWeb(ctx context.Context) (*shoal.Service, error) {
	cl := d.nodes[0].n.Client()
	svc, err := cl.CreateService(ctx, shoal.ServiceSpec{
		Name:     "web",
		Replicas: replicas,
		Task: shoal.TaskSpec{
			Image: d.images[0],
			// tini as PID 1: it forwards the stop signal to the server
			// and reaps what it leaves.
			Init: true,
			// A memory limit, which the container's cgroup enforces.
			Limits:          shoal.Resources{MemoryBytes: 64 << 20},
			StopGracePeriod: 5 * time.Second,
		},
		// Published 0: the manager allocates a port from 30000-32767.
		Ports: []shoal.PortConfig{{Target: targetPort, Mode: shoal.Ingress}},
	})
	if err != nil {
		return nil, fmt.Errorf("create service: %w", err)
	}
	for _, w := range svc.Warnings {
		fmt.Fprintln(d.out, "warning:", w)
	}
	fmt.Fprintf(d.out, "the manager pinned the image to %s\n", svc.Spec.Task.Image)
	if len(svc.Ports) != 1 || svc.Ports[0].Published == 0 {
		return nil, fmt.Errorf("web publishes %v, not one allocated port", svc.Ports)
	}
	d.rep.Published = svc.Ports[0].Published
	fmt.Fprintf(d.out, "web publishes %s: port %d answers on every node\n", svc.Ports[0], d.rep.Published)
	tasks, err := d.waitVersion(ctx, svc.ID, "1")
	if err != nil {
		return nil, err
	}
	for _, t := range tasks {
		d.rep.PerNode[d.names[t.NodeID]]++
	}
	if err := d.printTasks(ctx, svc.ID); err != nil {
		return nil, err
	}
	return svc, d.checkMesh(ctx, svc.ID, "1")
}

// updateWeb changes web's image to version 2 with a rolling update and
// prints every task change as the cluster makes it.
func (d *demo) updateWeb(ctx context.Context, svc *shoal.Service) error {
	cl := d.nodes[0].n.Client()
	// Watch first, so that no change is missed.
	wctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	events, err := cl.Watch(wctx, shoal.WatchFilter{Services: []string{svc.ID}})
	if err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	cur, err := cl.GetService(ctx, svc.ID)
	if err != nil {
		return err
	}
	spec := cur.Spec
	spec.Task.Image = d.images[1]
	spec.Update = shoal.UpdatePolicy{Parallelism: 1, Delay: time.Second}
	// Requests keep coming during the update, to every node in turn.
	var addrs []netip.AddrPort
	for _, nd := range d.nodes {
		addrs = append(addrs, netip.AddrPortFrom(nd.ip, d.rep.Published))
	}
	load := d.startLoad(addrs)
	defer load.stop()
	start := time.Now()
	up, err := cl.UpdateService(ctx, svc.ID, cur.Version, spec)
	if err != nil {
		return fmt.Errorf("update service: %w", err)
	}
	fmt.Fprintf(d.out, "the manager pinned the image to %s\n", up.Spec.Task.Image)
	fmt.Fprintf(d.out, "%8s  %-6s %-12s  %-8s  %-7s  %s\n", "TIME", "NAME", "TASK", "NODE", "IMAGE", "STATE")

	seen := map[string]taskChange{} // task ID → its last change
	completed := false
	for !completed || d.countVersion(seen, "2") < replicas {
		var ev shoal.Event
		select {
		case e, ok := <-events:
			if !ok {
				return fmt.Errorf("the watch ended before the update completed: %w", wctx.Err())
			}
			ev = e
		case <-wctx.Done():
			return fmt.Errorf("waiting for the update: %w", wctx.Err())
		}
		switch {
		case ev.Service != nil && ev.Action == shoal.Updated:
			if ev.Service.UpdateStatus.State == shoal.UpdateCompleted {
				completed = true
			}
		case ev.Task != nil && ev.Action != shoal.Removed:
			t := ev.Task
			c := taskChange{TaskID: t.ID, Slot: t.Slot, Version: imageTag(t.Spec.Image), Node: d.names[t.NodeID],
				State: t.Status.State, Desired: t.DesiredState, ExitCode: t.Status.ExitCode}
			if prev, ok := seen[t.ID]; ok && prev.State == c.State && prev.Desired == c.Desired {
				continue
			}
			seen[t.ID] = c
			d.rep.Changes = append(d.rep.Changes, c)
			state := c.State.String()
			switch {
			case c.State.Terminal():
				state += fmt.Sprintf(", exit code %d", c.ExitCode)
			case c.Desired > shoal.TaskRunning:
				state += ", desired " + c.Desired.String()
			}
			fmt.Fprintf(d.out, "%7.1fs  %-6s %-12s  %-8s  %-7s  %s\n", time.Since(start).Seconds(), t.Name(), short(t.ID),
				orDash(c.Node), ":"+c.Version, state)
		}
	}
	fmt.Fprintf(d.out, "update completed in %.1fs\n", time.Since(start).Seconds())
	d.rep.Load = load.stop()
	fmt.Fprintf(d.out, "meanwhile %d requests to the published port, every node in turn: %d answered by version 1, %d by version 2, %d failed\n",
		d.rep.Load.Requests(), d.rep.Load.Versions["1"], d.rep.Load.Versions["2"], d.rep.Load.Failed)
	if _, err := d.waitVersion(ctx, svc.ID, "2"); err != nil {
		return err
	}
	if err := d.printTasks(ctx, svc.ID); err != nil {
		return err
	}
	return d.checkMesh(ctx, svc.ID, "2")
}

// countVersion counts the tasks of the version that run and are meant to.
func (d *demo) countVersion(seen map[string]taskChange, version string) int {
	n := 0
	for _, c := range seen {
		if c.Version == version && c.State == shoal.TaskRunning && c.Desired == shoal.TaskRunning {
			n++
		}
	}
	return n
}

// removeWeb removes the service and waits until its tasks are gone from
// the cluster and their containers from every node.
func (d *demo) removeWeb(ctx context.Context, svc *shoal.Service) error {
	cl := d.nodes[0].n.Client()
	if err := cl.RemoveService(ctx, svc.ID); err != nil {
		return fmt.Errorf("remove service: %w", err)
	}
	if err := waitFor(ctx, "web's tasks removed", func() (bool, error) {
		ts, err := cl.ListTasks(ctx, shoal.TaskFilter{Service: svc.ID})
		return len(ts) == 0, err
	}); err != nil {
		return err
	}
	// A removed container is detached from its node's bridge last.
	if err := waitFor(ctx, "every container removed", func() (bool, error) {
		for _, nd := range d.nodes {
			if len(nd.rt.Bridge().Attachments()) > 0 {
				return false, nil
			}
		}
		return true, nil
	}); err != nil {
		return err
	}
	fmt.Fprintln(d.out, "web's tasks are removed, and their containers: no bridge has an attachment left")
	return nil
}

// cleanup stops the nodes still running, removes the containers a node
// left (none, when the service was removed first), tears the bridges down,
// closes the runtimes and the registry and deletes the temporary directory.
// If something cannot be cleaned up, the directory is kept for a look
// and the error says so. Only the first call does anything.
func (d *demo) cleanup() error {
	if d.cleaned {
		return nil
	}
	d.cleaned = true
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var errs []error
	// All at once: each node's Stop waits a moment for its gossip leave to
	// reach the others.
	var wg sync.WaitGroup
	stopErrs := make([]error, len(d.nodes))
	for i, nd := range d.nodes {
		if nd.n == nil {
			continue
		}
		wg.Go(func() {
			if err := nd.n.Stop(ctx); err != nil {
				stopErrs[i] = fmt.Errorf("stop %s: %w", nd.name, err)
			}
			nd.n = nil
		})
	}
	wg.Wait()
	errs = append(errs, stopErrs...)
	for _, nd := range d.nodes {
		if nd.rt == nil {
			continue
		}
		left, err := nd.rt.Restorable(ctx)
		errs = append(errs, err)
		for _, id := range left {
			fmt.Fprintf(d.out, "%s left container %s behind: discarding it\n", nd.name, id)
			errs = append(errs, nd.rt.Discard(ctx, id))
		}
		if err := nd.rt.Bridge().Teardown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("%s: teardown of bridge %s: %w", nd.name, nd.bridge, err))
		}
		errs = append(errs, nd.rt.Close())
		nd.rt = nil
	}
	if d.reg != nil {
		errs = append(errs, d.reg.Close())
		d.reg = nil
	}
	if err := errors.Join(errs...); err != nil {
		// Keep the directory: it holds what could not be cleaned up.
		return fmt.Errorf("cleaning up (%s is kept): %w", d.dir, err)
	}
	return os.RemoveAll(d.dir)
}

// waitVersion waits until the service runs exactly its replicas, all of
// the image version given, each with its endpoint, and every node's
// routing mesh lists them; it returns them.
func (d *demo) waitVersion(ctx context.Context, svc, version string) ([]*shoal.Task, error) {
	cl := d.nodes[0].n.Client()
	var running []*shoal.Task
	err := waitFor(ctx, fmt.Sprintf("%d running tasks of version %s in every node's mesh", replicas, version), func() (bool, error) {
		ts, err := cl.ListTasks(ctx, shoal.TaskFilter{Service: svc})
		if err != nil {
			return false, err
		}
		live := slices.DeleteFunc(ts, func(t *shoal.Task) bool { return t.DesiredState > shoal.TaskRunning })
		running = nil
		for _, t := range live {
			if t.Status.State == shoal.TaskRunning && len(t.Endpoints) > 0 && imageTag(t.Spec.Image) == version {
				running = append(running, t)
			}
		}
		if len(running) != replicas || len(live) != replicas {
			return false, nil
		}
		ids := make([]string, 0, len(running))
		for _, t := range running {
			ids = append(ids, t.ID)
		}
		slices.Sort(ids)
		for _, nd := range d.nodes {
			var got []string
			for _, e := range nd.n.MeshEndpoints() {
				if e.ServiceID == svc && e.Published == d.rep.Published {
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
	return running, err
}

// checkMesh sends as many requests as there are tasks to the published
// port on every node's address, prints the replies, and fails unless each
// came from a running task of the version wanted.
func (d *demo) checkMesh(ctx context.Context, svc, version string) error {
	ts, err := d.nodes[0].n.Client().ListTasks(ctx, shoal.TaskFilter{Service: svc})
	if err != nil {
		return err
	}
	check := meshCheck{Version: version, Running: map[string]string{}, Replies: map[string][]reply{}}
	for _, t := range ts {
		if t.DesiredState == shoal.TaskRunning && t.Status.State == shoal.TaskRunning {
			// A container's hostname is its task ID's first 12
			// characters unless TaskSpec.Hostname says otherwise.
			check.Running[short(t.ID)] = t.ID
		}
	}
	fmt.Fprintf(d.out, "%d requests to port %d on each node:\n", len(check.Running), d.rep.Published)
	for _, nd := range d.nodes {
		addr := netip.AddrPortFrom(nd.ip, d.rep.Published)
		for range check.Running {
			body, err := d.getRetry(ctx, addr)
			if err != nil {
				return fmt.Errorf("published port on %s (%s): %w", nd.name, addr, err)
			}
			fmt.Fprintf(d.out, "  GET %s %-10s -> %s\n", addr, "("+nd.name+")", body)
			r, err := parseReply(body)
			if err != nil {
				return err
			}
			if _, ok := check.Running[r.Hostname]; !ok || r.Version != version {
				return fmt.Errorf("%s answered %q: not a running task of version %s", addr, body, version)
			}
			check.Replies[nd.name] = append(check.Replies[nd.name], r)
		}
	}
	d.rep.Checks = append(d.rep.Checks, check)
	return nil
}

// getRetry sends one request to addr and returns the reply's body, trying
// again for a while if it fails: a balancer applies its table a moment
// after the table changes.
func (d *demo) getRetry(ctx context.Context, addr netip.AddrPort) (string, error) {
	var body string
	err := waitFor(ctx, "a reply from "+addr.String(), func() (bool, error) {
		var err error
		body, err = d.get(ctx, addr)
		return err == nil, err
	})
	return body, err
}

// get sends one request to addr and returns the reply's body.
func (d *demo) get(ctx context.Context, addr netip.AddrPort) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr.String()+"/", nil)
	if err != nil {
		return "", err
	}
	resp, err := d.http.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", resp.Status, b)
	}
	return strings.TrimSpace(string(b)), nil
}

// loadCount counts the replies to a load's requests.
type loadCount struct {
	// Versions maps a version to the number of replies from it.
	Versions map[string]int
	// Failed counts the requests that got no reply, or a reply that was
	// not the web server's; FirstErr is the first one's error.
	Failed   int
	FirstErr error
}

// Requests returns how many requests were sent.
func (c loadCount) Requests() int {
	n := c.Failed
	for _, v := range c.Versions {
		n += v
	}
	return n
}

// load sends requests to addrs in turn, one at a time, until stopped.
type load struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when the goroutine sending requests ends
	once   sync.Once
	count  loadCount // written by that goroutine until done is closed
}

func (d *demo) startLoad(addrs []netip.AddrPort) *load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{cancel: cancel, done: make(chan struct{}), count: loadCount{Versions: map[string]int{}}}
	go func() {
		defer close(l.done)
		for i := 0; ; i++ {
			body, err := d.get(ctx, addrs[i%len(addrs)])
			if ctx.Err() != nil {
				return // cut short by stop: not counted
			}
			var r reply
			if err == nil {
				r, err = parseReply(body)
			}
			if err != nil {
				l.count.Failed++
				if l.count.FirstErr == nil {
					l.count.FirstErr = err
				}
			} else {
				l.count.Versions[r.Version]++
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return l
}

// stop ends the load, waits for its last request and returns the counts.
// It may be called again.
func (l *load) stop() loadCount {
	l.once.Do(func() {
		l.cancel()
		<-l.done
	})
	return l.count
}

// parseReply reads "hello from <hostname> (version <version>)".
func parseReply(body string) (reply, error) {
	rest, ok := strings.CutPrefix(body, "hello from ")
	if ok {
		var host, version string
		host, version, ok = strings.Cut(rest, " (version ")
		version, ok2 := strings.CutSuffix(version, ")")
		if ok && ok2 && host != "" && version != "" && !strings.ContainsAny(host, " ()") && !strings.ContainsAny(version, " ()") {
			return reply{Hostname: host, Version: version}, nil
		}
	}
	return reply{}, fmt.Errorf("unexpected reply %q: want \"hello from <hostname> (version <version>)\"", body)
}

// imageTag returns the tag of an image reference ("host:5000/web:2" or
// "host:5000/web:2@sha256:..." give "2"), or "" if it has none.
func imageTag(ref string) string {
	ref, _, _ = strings.Cut(ref, "@")
	i := strings.LastIndexByte(ref, ':')
	if i < 0 || strings.ContainsRune(ref[i:], '/') {
		return ""
	}
	return ref[i+1:]
}

// printTasks prints the service's tasks like docker service ps: the
// current task of each slot, then its history indented, with the image's
// tag and the container's address on its node's bridge.
func (d *demo) printTasks(ctx context.Context, svc string) error {
	ts, err := d.nodes[0].n.Client().ListTasks(ctx, shoal.TaskFilter{Service: svc})
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(d.out, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tIMAGE\tNODE\tDESIRED STATE\tCURRENT STATE\tCONTAINER ADDRESS")
	var prevSlot uint64
	for _, t := range ts {
		name := t.Name()
		if t.Slot == prevSlot {
			name = ` \_ ` + name
		}
		prevSlot = t.Slot
		addr := "-"
		if len(t.Endpoints) > 0 {
			addr = t.Endpoints[0].Addr.String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", short(t.ID), name, repo+":"+imageTag(t.Spec.Image),
			orDash(d.names[t.NodeID]), t.DesiredState, t.Status.State, addr)
	}
	return tw.Flush()
}

func step(out io.Writer, s string) { fmt.Fprintf(out, "\n== %s\n", s) }

// short is an ID as the tables print it, and as a container's hostname
// is made of its task ID: the first 12 characters.
func short(id string) string { return id[:min(12, len(id))] }

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
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
