package shoal_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/shoalhq/shoal"
	"github.com/shoalhq/shoal/runtime/runtimetest"
)

// exampleDir makes a state directory for an example.
func exampleDir() string {
	dir, err := os.MkdirTemp("", "shoal-example-")
	if err != nil {
		panic(err)
	}
	return dir
}

// waitRunning polls until n tasks of the service run.
func waitRunning(ctx context.Context, c *shoal.Client, service string, n int) error {
	for {
		tasks, err := c.ListTasks(ctx, shoal.TaskFilter{Service: service, DesiredStates: []shoal.TaskState{shoal.TaskRunning}})
		if err != nil {
			return err
		}
		running := 0
		for _, t := range tasks {
			if t.Status.State == shoal.TaskRunning {
				running++
			}
		}
		if running == n {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Init creates a cluster whose first manager also runs tasks; here with the
// fake runtime, so the example needs no programs.
func ExampleInit() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := exampleDir()
	defer os.RemoveAll(dir)

	mgr, err := shoal.Init(ctx, shoal.Config{StateDir: dir, ListenAddr: "127.0.0.1:0", Runtime: runtimetest.New()})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer mgr.Stop(context.Background())
	c := mgr.Client()
	svc, err := c.CreateService(ctx, shoal.ServiceSpec{Name: "web", Replicas: 3,
		Task: shoal.TaskSpec{Command: []string{"web-server"}}})
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := waitRunning(ctx, c, svc.ID, 3); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(mgr.Role(), svc.Spec.Name, "is running 3 tasks")
	// Output: manager web is running 3 tasks
}

// Join adds a worker with the token the manager's cluster hands out.
func ExampleJoin() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := exampleDir()
	defer os.RemoveAll(dir)

	mgr, err := shoal.Init(ctx, shoal.Config{StateDir: dir + "/m", ListenAddr: "127.0.0.1:0", DisableAgent: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer mgr.Stop(context.Background())
	info, err := mgr.Client().Cluster(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	w, err := shoal.Join(ctx, shoal.Config{StateDir: dir + "/w", ListenAddr: "127.0.0.1:0", Runtime: runtimetest.New()},
		mgr.Addr(), info.WorkerToken)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer w.Stop(context.Background())
	node, err := mgr.Client().GetNode(ctx, w.ID())
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("joined as", node.Role)
	// Output: joined as worker
}

// Dial reaches a manager's control API from anywhere, here to watch a
// service's tasks start.
func ExampleDial() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := exampleDir()
	defer os.RemoveAll(dir)
	mgr, err := shoal.Init(ctx, shoal.Config{StateDir: dir, ListenAddr: "127.0.0.1:0", Runtime: runtimetest.New()})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer mgr.Stop(context.Background())

	// Operator credentials: a key made here, certified by the cluster's CA.
	// A program would Save them and LoadClientCredentials later.
	creds, err := mgr.Client().IssueClientCredentials(ctx, "example-operator", 0)
	if err != nil {
		fmt.Println(err)
		return
	}
	c, err := shoal.Dial(ctx, mgr.Addr(), shoal.WithCredentials(creds))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	events, err := c.Watch(wctx, shoal.WatchFilter{Kinds: []shoal.ObjectKind{shoal.KindTask}})
	if err != nil {
		fmt.Println(err)
		return
	}
	if _, err := c.CreateService(ctx, shoal.ServiceSpec{Name: "job", Replicas: 1,
		Task: shoal.TaskSpec{Command: []string{"job"}}}); err != nil {
		fmt.Println(err)
		return
	}
	for e := range events {
		if e.Task.Status.State == shoal.TaskRunning {
			fmt.Println(e.Task.Name(), "is", e.Task.Status.State)
			break
		}
	}
	// Output: job.1 is running
}

// Invalid specs are refused before anything is written, with the field and
// the rule named.
func ExampleClient_CreateService_invalid() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := exampleDir()
	defer os.RemoveAll(dir)
	mgr, err := shoal.Init(ctx, shoal.Config{StateDir: dir, ListenAddr: "127.0.0.1:0", Runtime: runtimetest.New()})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer mgr.Stop(context.Background())
	_, err = mgr.Client().CreateService(ctx, shoal.ServiceSpec{Name: "web", Replicas: 2,
		Task: shoal.TaskSpec{Command: []string{"web"}, Constraints: []string{"node.labels.zone=a"}}})
	fmt.Println(err)
	// Output: ServiceSpec.Task.Constraints: constraint "node.labels.zone=a": operator must be == or !=: invalid spec
}
