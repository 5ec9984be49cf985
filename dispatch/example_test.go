package dispatch_test

import (
	"context"
	"fmt"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/shoalhq/shoal/dispatch"
	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/state"
	"github.com/shoalhq/shoal/internal/state/statetest"
	"github.com/shoalhq/shoal/pki"
	"github.com/shoalhq/shoal/runtime/runtimetest"
)

// A manager serves the dispatcher on its gRPC server, and a worker's agent
// connects to it and runs the task assigned to its node.
func Example() {
	ctx := context.Background()
	store := statetest.NewStore(state.Config{})
	defer store.Close()
	_ = store.Update(ctx, func(tx state.WriteTx) error {
		if err := tx.CreateNode(&api.Node{Id: "worker1"}); err != nil {
			return err
		}
		return tx.CreateTask(&api.Task{Id: "task1", NodeId: "worker1",
			Spec:         &api.TaskSpec{Command: []string{"sleep", "60"}},
			DesiredState: api.TaskState_TASK_STATE_RUNNING,
			Status:       &api.TaskStatus{State: api.TaskState_TASK_STATE_ASSIGNED}})
	})

	// Manager side.
	d, err := dispatch.NewDispatcher(store, dispatch.DefaultDispatcherConfig())
	if err != nil {
		panic(err)
	}
	_ = d.Start(ctx)
	lis, _ := net.Listen("tcp", "127.0.0.1:0")
	srv := grpc.NewServer()
	api.RegisterDispatcherServer(srv, d)
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()
	defer func() { _ = d.Stop(ctx) }()

	// Worker side.
	rt := runtimetest.New()
	cfg := dispatch.DefaultAgentConfig()
	cfg.NodeID = "worker1"
	cfg.Managers = func() []string { return []string{lis.Addr().String()} }
	cfg.Runtime = rt
	cfg.Insecure = true // this example's server has no TLS; a node passes its mTLS credentials
	agent, err := dispatch.NewAgent(cfg)
	if err != nil {
		panic(err)
	}
	_ = agent.Start(ctx)
	defer func() { _ = agent.Stop(ctx) }()

	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_ = rt.WaitStarted(wctx, "task1")
	for wctx.Err() == nil {
		var st api.TaskState
		store.View(func(tx state.ReadTx) { st = tx.GetTask("task1").GetStatus().GetState() })
		if st == api.TaskState_TASK_STATE_RUNNING {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	fmt.Println("task1 running on worker1")
	// Output: task1 running on worker1
}

func ExampleNewDispatcher() {
	store := statetest.NewStore(state.Config{})
	cfg := dispatch.DefaultDispatcherConfig()
	cfg.HeartbeatPeriod = time.Second // nodes DOWN after 3s of silence
	cfg.Managers = func() []string { return []string{"10.0.0.1:4242", "10.0.0.2:4242"} }
	d, err := dispatch.NewDispatcher(store, cfg)
	fmt.Println(d != nil, err)
	// Output: true <nil>
}

// A worker's agent dials the managers with the node's mutual TLS
// credentials; an agent without credentials is refused.
func ExampleNewAgent() {
	const cluster = "c0123456789abcdefghijklmn"
	ca, _ := pki.NewRootCA(cluster, 0)
	signer, _ := pki.NewLocalSigner(ca, nil)
	keyPEM, csrPEM, _ := pki.NewKeyAndCSR("worker1")
	chain, err := signer.Sign(context.Background(), pki.SignRequest{
		CSR:      csrPEM,
		Subject:  pki.Subject{NodeID: "worker1", Role: pki.OUWorker, ClusterID: cluster},
		Validity: pki.DefaultCertValidity,
	})
	if err != nil {
		panic(err)
	}
	creds, err := pki.NewCredentials(pki.KeyPair{CertPEM: chain, KeyPEM: keyPEM, RootPEM: ca.CertPEM})
	if err != nil {
		panic(err)
	}

	cfg := dispatch.DefaultAgentConfig()
	cfg.NodeID = "worker1"
	cfg.Managers = func() []string { return []string{"10.0.0.1:4242"} }
	cfg.Runtime = runtimetest.New()
	cfg.TransportCredentials = credentials.NewTLS(creds.ClientTLS(pki.ManagerServerName))
	a, err := dispatch.NewAgent(cfg)
	fmt.Println(a != nil, err)

	_, err = dispatch.NewAgent(dispatch.AgentConfig{NodeID: "worker1"})
	fmt.Println(err)
	// Output:
	// true <nil>
	// dispatch: AgentConfig.Managers: must not be nil
	// AgentConfig.Runtime: must not be nil
	// AgentConfig.TransportCredentials: must not be nil (set AgentConfig.Insecure for plaintext, in tests only)
}

// A worker that stops gracefully leaves: its node is DOWN with
// NodeLeftMessage as soon as Stop returns, and its task's final status is
// recorded, without waiting for the heartbeat deadline.
func ExampleAgent_Stop() {
	ctx := context.Background()
	store := statetest.NewStore(state.Config{})
	defer store.Close()
	_ = store.Update(ctx, func(tx state.WriteTx) error {
		if err := tx.CreateNode(&api.Node{Id: "worker1"}); err != nil {
			return err
		}
		return tx.CreateTask(&api.Task{Id: "task1", NodeId: "worker1",
			Spec:         &api.TaskSpec{Command: []string{"sleep", "60"}},
			DesiredState: api.TaskState_TASK_STATE_RUNNING,
			Status:       &api.TaskStatus{State: api.TaskState_TASK_STATE_ASSIGNED}})
	})
	d, err := dispatch.NewDispatcher(store, dispatch.DefaultDispatcherConfig())
	if err != nil {
		panic(err)
	}
	_ = d.Start(ctx)
	lis, _ := net.Listen("tcp", "127.0.0.1:0")
	srv := grpc.NewServer()
	api.RegisterDispatcherServer(srv, d)
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()
	defer func() { _ = d.Stop(ctx) }()

	rt := runtimetest.New()
	cfg := dispatch.DefaultAgentConfig()
	cfg.NodeID = "worker1"
	cfg.Managers = func() []string { return []string{lis.Addr().String()} }
	cfg.Runtime = rt
	cfg.Insecure = true // this example's server has no TLS; a node passes its mTLS credentials
	agent, err := dispatch.NewAgent(cfg)
	if err != nil {
		panic(err)
	}
	_ = agent.Start(ctx)
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_ = rt.WaitStarted(wctx, "task1")

	if err := agent.Stop(wctx); err != nil {
		panic(err)
	}
	store.View(func(tx state.ReadTx) {
		n, t := tx.GetNode("worker1"), tx.GetTask("task1")
		fmt.Println(n.GetStatus().GetState(), n.GetStatus().GetMessage() == dispatch.NodeLeftMessage)
		fmt.Println(t.GetStatus().GetState())
	})
	// Output:
	// NODE_STATE_DOWN true
	// TASK_STATE_SHUTDOWN
}

// The host learns which ports its node publishes in the routing mesh: the
// ingress port of the running task, not its host-mode port. When the agent
// stops, the task's endpoint is withdrawn before the task is shut down.
func ExampleAgentConfig_onEndpoints() {
	ctx := context.Background()
	store := statetest.NewStore(state.Config{})
	defer store.Close()
	_ = store.Update(ctx, func(tx state.WriteTx) error {
		if err := tx.CreateNode(&api.Node{Id: "worker1"}); err != nil {
			return err
		}
		return tx.CreateTask(&api.Task{Id: "web.1", ServiceId: "web", NodeId: "worker1",
			Spec: &api.TaskSpec{Command: []string{"httpd"}, Ports: []*api.PortConfig{
				{TargetPort: 80, PublishedPort: 30080, Mode: api.PublishMode_PUBLISH_MODE_INGRESS},
				{TargetPort: 9090, PublishedPort: 9090, Mode: api.PublishMode_PUBLISH_MODE_HOST},
			}},
			DesiredState: api.TaskState_TASK_STATE_RUNNING,
			Status:       &api.TaskStatus{State: api.TaskState_TASK_STATE_ASSIGNED}})
	})
	d, err := dispatch.NewDispatcher(store, dispatch.DefaultDispatcherConfig())
	if err != nil {
		panic(err)
	}
	_ = d.Start(ctx)
	lis, _ := net.Listen("tcp", "127.0.0.1:0")
	srv := grpc.NewServer()
	api.RegisterDispatcherServer(srv, d)
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()
	defer func() { _ = d.Stop(ctx) }()

	sets := make(chan []dispatch.PublishedEndpoint, 16)
	cfg := dispatch.DefaultAgentConfig()
	cfg.NodeID = "worker1"
	cfg.Managers = func() []string { return []string{lis.Addr().String()} }
	cfg.Runtime = runtimetest.New()
	cfg.Insecure = true              // this example's server has no TLS; a node passes its mTLS credentials
	cfg.DrainDelay = 5 * time.Second // applies when a task is stopped by the manager
	cfg.OnEndpoints = func(eps []dispatch.PublishedEndpoint) { sets <- eps }
	agent, err := dispatch.NewAgent(cfg)
	if err != nil {
		panic(err)
	}
	_ = agent.Start(ctx)
	for _, e := range <-sets {
		fmt.Println(e.TaskID, e.Protocol, e.PublishedPort, "->", e.Addr)
	}
	_ = agent.Stop(ctx)
	fmt.Println("after stop:", len(<-sets), "endpoints")
	// Output:
	// web.1 tcp 30080 -> 0.0.0.0:40000
	// after stop: 0 endpoints
}
