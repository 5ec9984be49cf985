// Package shoal embeds a swarm orchestrator in a Go program: the program
// becomes a cluster node that runs declared services across many machines
// and keeps them running, the way Docker swarm mode does, without a daemon.
//
// # Usage
//
// The first node creates the cluster with Init; others join it with a token:
//
//	mgr, err := shoal.Init(ctx, shoal.Config{StateDir: "/var/lib/app/shoal", ListenAddr: "10.0.0.1:4242"})
//	cluster, err := mgr.Client().Cluster(ctx)          // cluster.WorkerToken admits workers
//	w, err := shoal.Join(ctx, shoal.Config{StateDir: dir, ListenAddr: "10.0.0.2:4242"}, mgr.Addr(), cluster.WorkerToken)
//
// Services are declared through a Client (Node.Client on a manager, or Dial
// from anywhere):
//
//	svc, err := c.CreateService(ctx, shoal.ServiceSpec{Name: "web", Replicas: 6,
//		Task: shoal.TaskSpec{Command: []string{"/usr/bin/my-server", "--port", "8080"}}})
//	c.ScaleService(ctx, svc.ID, 9)
//	tasks, err := c.ListTasks(ctx, shoal.TaskFilter{Service: svc.ID})
//	events, err := c.Watch(ctx, shoal.WatchFilter{Services: []string{svc.ID}})
//
// A node restarts from its StateDir with New(cfg) and Start. Every call takes
// a context; Stop is bounded by its context and leaves no goroutine behind.
//
// # Roles
//
// Managers hold the cluster state in a Raft log persisted under StateDir,
// and run the orchestrators (keep N replicas, one task per node for global
// services, replace tasks of failed or drained nodes, roll out spec
// changes), the scheduler (spread over the emptiest suitable nodes) and the
// dispatcher (hands tasks to workers and watches their heartbeats). Workers
// run tasks through a Runtime (by default plain processes; see
// runtime/process) and report their status. Managers run tasks too unless
// Config.DisableAgent is set.
//
// # Security
//
// Every connection between nodes, and from clients to managers, is mutual
// TLS 1.3: each node has a key and a certificate from the cluster's root CA
// (created at Init, or an external cfssl CA), whose subject names the node,
// its role and its cluster, and every RPC is authorized by the caller's
// certificate role (workers reach only the dispatcher and the CA, for their
// own node; the control API takes managers and operators). A join token
// (SHLTKN-1-<root CA digest>-<secret>) admits a new node: the digest pins
// the root CA, so a joining node refuses a manager of another cluster, and
// the secret authorizes the certificate it receives. Its private key never
// leaves it. Certificates renew by themselves; the root CA, the join tokens,
// the gossip keys and the unlock key rotate on request (UpdateCluster).
// Managers encrypt their Raft log at rest; with AutoLock, a restarted
// manager waits for the unlock key. Operators reach a cluster with Dial and
// credentials from Client.IssueClientCredentials.
//
// # High availability
//
// Join with the cluster's manager token adds a manager: it joins the Raft
// group as a learner, catches up, and becomes a voter, so adding a manager
// never costs availability. 3, 5 or 7 managers tolerate 1, 2 or 3 failures.
// Every manager serves the whole API: reads are linearizable (they wait on a
// Raft read barrier), and writes are forwarded to the leader. Without a
// quorum, writes fail fast with ErrNoQuorum, whose message says how many
// managers are reachable and how many are needed, and reads still answer,
// from the manager's own state, marked stale (see WithReadInfo). Removing a
// manager (Client.RemoveNode) is refused when the rest could not reach a
// quorum.
//
// A node's role changes live with Client.UpdateNode (NodeUpdate.Role): a
// promoted worker joins the Raft group as a learner and starts serving the
// manager APIs; a demoted manager leaves the group (refused if the others
// could not keep a quorum) and goes on running tasks as a worker.
//
// # Caveats
//
// Tasks of the process runtime run as the host program's user; resource
// limits are not enforced by it.
package shoal

import (
	"context"
	"fmt"

	"google.golang.org/grpc"

	"github.com/shoalhq/shoal/internal/node"
	"github.com/shoalhq/shoal/internal/nodesec"
	"github.com/shoalhq/shoal/pki"
)

// Init creates a new cluster with this node as its first manager, and returns
// once the node serves. Its StateDir must not hold a node already (restart
// such a node with New and Start).
func Init(ctx context.Context, cfg Config) (*Node, error) {
	n, err := New(cfg)
	if err != nil {
		return nil, err
	}
	if err := n.n.Start(ctx, node.StartOptions{Mode: node.Init}); err != nil {
		return nil, err
	}
	return n, nil
}

// Join adds this node to the cluster of the manager at addr, in the role the
// token grants, and returns once the node serves. The token is checked
// before anything is written: a malformed token fails with ErrInvalidToken
// without contacting the manager.
func Join(ctx context.Context, cfg Config, addr, token string) (*Node, error) {
	if _, err := pki.ParseToken(token); err != nil {
		return nil, err
	}
	if addr == "" {
		return nil, fmt.Errorf("join: manager address is required: %w", ErrInvalidSpec)
	}
	n, err := New(cfg)
	if err != nil {
		return nil, err
	}
	if err := n.n.Start(ctx, node.StartOptions{Mode: node.Join, JoinAddr: addr, Token: token}); err != nil {
		return nil, err
	}
	return n, nil
}

// DialOption configures Dial.
type DialOption func(*dialOptions)

type dialOptions struct {
	creds *ClientCredentials
	grpc  []grpc.DialOption
}

// WithCredentials gives Dial the operator credentials to present (issued by
// Client.IssueClientCredentials). Every connection to a manager is mutual
// TLS, so Dial needs them.
func WithCredentials(c *ClientCredentials) DialOption {
	return func(o *dialOptions) { o.creds = c }
}

// WithGRPCDialOptions passes options to the underlying gRPC connection (for
// example a custom dialer).
func WithGRPCDialOptions(opts ...grpc.DialOption) DialOption {
	return func(o *dialOptions) { o.grpc = append(o.grpc, opts...) }
}

// Dial connects a Client to the manager at addr with operator credentials
// (WithCredentials): the connection is mutual TLS, the manager must present
// a manager certificate from the credentials' root CA. The connection is
// made lazily and kept up; Close the client when done. A program embedding
// a manager node uses Node.Client instead.
func Dial(ctx context.Context, addr string, opts ...DialOption) (*Client, error) {
	if addr == "" {
		return nil, fmt.Errorf("dial: address is required: %w", ErrInvalidSpec)
	}
	var o dialOptions
	for _, opt := range opts {
		opt(&o)
	}
	if o.creds == nil {
		return nil, fmt.Errorf("dial: credentials are required (WithCredentials): managers accept only mutual TLS; "+
			"issue operator credentials with Client.IssueClientCredentials: %w", ErrInvalidSpec)
	}
	tlsCreds, err := o.creds.transport()
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	gopts := append([]grpc.DialOption{grpc.WithTransportCredentials(tlsCreds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(nodesec.MaxResponseSize))}, o.grpc...)
	conn, err := grpc.NewClient(addr, gopts...)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	if err := ctx.Err(); err != nil {
		conn.Close()
		return nil, err
	}
	return newClient(conn, true), nil
}
