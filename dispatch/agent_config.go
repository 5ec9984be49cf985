package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/runtime"
)

// AgentConfig configures an Agent.
type AgentConfig struct {
	// NodeID is this node's ID; the node must exist in the cluster store
	// (the join path creates it). Required.
	NodeID string
	// Managers returns the dispatcher addresses to try; the agent rotates
	// through them on failure. Required. The agent tries the manager list the
	// last dispatcher sent first (leader first), then these. It is called
	// from the agent's session loop, one call at a time, before each
	// connection attempt, and must return promptly.
	Managers func() []string
	// Dial opens a connection to a manager address, giving up when ctx ends.
	// gRPC calls it from its own goroutines, so it must be safe for
	// concurrent use. Default: a TCP net.Dialer; test harnesses inject a
	// dialer that can cut connections.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// TransportCredentials secure the connection to the dispatcher: the
	// node's mutual TLS 1.3 credentials (pki.Credentials.ClientTLS), whose
	// certificate identifies the node to the manager. Required unless
	// Insecure is set.
	TransportCredentials credentials.TransportCredentials
	// Insecure, when TransportCredentials is nil, connects in plaintext,
	// without authenticating either side. It is for tests only: a dispatcher
	// served by a node accepts nothing but mutual TLS. Default false: an
	// agent without TransportCredentials is refused.
	Insecure bool
	// DialOptions are extra gRPC dial options, applied after the agent's own.
	DialOptions []grpc.DialOption
	// Runtime runs the tasks. Required.
	Runtime runtime.Runtime
	// Description is what the node reports about itself on each session.
	// Default nil: the manager keeps the description it has.
	Description *api.NodeDescription
	// Addr is the address the node advertises; empty lets the manager use
	// the address it sees the connection come from.
	Addr string
	// Logger receives the agent's logs. Default: discard, because a library
	// must not write to the host's logs unless asked.
	Logger *slog.Logger
	// Clock is the time source of every wait of the agent (heartbeats and
	// the bound on each heartbeat RPC, back-off, RPCTimeout, status
	// batching, drains) and of status timestamps. Default: the wall clock.
	Clock Clock
	// BackoffMin is the delay before the first reconnection attempt.
	// Default 100ms: a manager restart or leader change is retried almost at
	// once.
	BackoffMin time.Duration
	// BackoffMax caps the delay between attempts (which doubles on each
	// failure, with jitter). Default 5s: one heartbeat period, so a worker
	// finds a new leader well within the 15s before it would be marked down.
	BackoffMax time.Duration
	// StatusBatchInterval is how long the agent collects task status changes
	// before it sends them in one RPC. Default 10ms: a task's quick
	// ACCEPTED→…→RUNNING sequence travels in one or two messages.
	StatusBatchInterval time.Duration
	// OnSession, if set, is called with every message of the session stream
	// (the first one included): the node learns from it that it was promoted
	// or demoted. It runs on the session's receiving goroutine and must not
	// block. Default nil.
	OnSession func(*api.SessionMessage)
	// RPCTimeout bounds opening a session, each status report, Leave, and
	// Stop's wait for the final statuses to be acknowledged; measured on
	// Clock. Default 10s: generous for a loaded manager, short enough to
	// fail over.
	RPCTimeout time.Duration
	// OnEndpoints, if set, is called with the complete set of endpoints this
	// node publishes in the routing mesh (sorted by service, task, published
	// port, protocol) each time the set changes: a task publishes its
	// ingress-mode ports with a published port while it is RUNNING and
	// desired RUNNING. Calls come from one goroutine of the agent, never
	// concurrently; changes in quick succession may be coalesced into one
	// call. It must return promptly: a task being stopped waits for the call
	// that withdraws its endpoints before it drains, and Stop waits for the
	// last call (with the set its stopped tasks left). Default nil.
	OnEndpoints func([]PublishedEndpoint)
	// DrainDelay is how long a running task that published endpoints keeps
	// running after they were withdrawn (OnEndpoints called without them)
	// and before it is stopped, so that the routing mesh of every node stops
	// sending it new connections and those in flight finish. Tasks without
	// published endpoints, and tasks stopped because the agent stops, are not
	// delayed. Measured on Clock. Default 0: an agent alone has no mesh to
	// drain; the node sets it to its gossip propagation time.
	DrainDelay time.Duration
	// ConfirmWithdrawal, if set, is called once a stopping task's endpoints
	// were withdrawn (after the OnEndpoints call without them) and returns
	// nil once every node of the mesh has stopped routing to them (the
	// routing mesh asks every gossip member). The drain then lasts at least
	// DrainDelay and until the withdrawal is confirmed, at most DrainTimeout:
	// on a loaded cluster, where the change spreads slowly, the task keeps
	// running until no node can still send it a connection. Its context is
	// canceled when the drain ends. An error ends the wait for confirmation
	// (the drain then lasts DrainDelay). Default nil: DrainDelay alone.
	ConfirmWithdrawal func(context.Context) error
	// DrainTimeout bounds a drain that waits for ConfirmWithdrawal; a
	// value below DrainDelay counts as DrainDelay. Measured on Clock.
	// Default 0: the drain lasts DrainDelay, confirmed or not.
	DrainTimeout time.Duration
	// LiveRestore makes Stop leave the tasks running (docker's
	// live-restore): Stop does not leave the cluster, it detaches every task
	// whose controller can be detached (runtime.Detacher) and closes the
	// session, so the managers see the node go quiet as after a crash. An
	// agent started again on the same runtime state re-adopts the tasks its
	// assignments still hold (runtime.Restorer) and discards the others. A
	// node that stays away past the heartbeat grace is marked DOWN and its
	// tasks are replaced elsewhere; the ones it still runs are discarded
	// when it returns. Requires a Runtime that is a runtime.Restorer.
	// Default false: Stop shuts the tasks down.
	LiveRestore bool
}

// DefaultAgentConfig returns the configuration with every default set; the
// required fields (NodeID, Managers, Runtime, TransportCredentials) are left
// empty.
func DefaultAgentConfig() AgentConfig {
	return AgentConfig{
		Dial:                defaultDial,
		Logger:              slog.New(slog.DiscardHandler),
		Clock:               RealClock(),
		BackoffMin:          100 * time.Millisecond,
		BackoffMax:          5 * time.Second,
		StatusBatchInterval: 10 * time.Millisecond,
		RPCTimeout:          10 * time.Second,
		DrainDelay:          0,
	}
}

func defaultDial(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// withDefaults fills zero fields and validates; it works on a copy.
func (c AgentConfig) withDefaults() (AgentConfig, error) {
	d := DefaultAgentConfig()
	if c.Dial == nil {
		c.Dial = d.Dial
	}
	if c.Logger == nil {
		c.Logger = d.Logger
	}
	if c.Clock == nil {
		c.Clock = d.Clock
	}
	if c.BackoffMin == 0 {
		c.BackoffMin = d.BackoffMin
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = max(d.BackoffMax, c.BackoffMin)
	}
	if c.StatusBatchInterval == 0 {
		c.StatusBatchInterval = d.StatusBatchInterval
	}
	if c.RPCTimeout == 0 {
		c.RPCTimeout = d.RPCTimeout
	}
	var errs []error
	if c.NodeID == "" {
		errs = append(errs, errors.New("AgentConfig.NodeID: must not be empty"))
	}
	if c.Managers == nil {
		errs = append(errs, errors.New("AgentConfig.Managers: must not be nil"))
	}
	if c.Runtime == nil {
		errs = append(errs, errors.New("AgentConfig.Runtime: must not be nil"))
	}
	if _, ok := c.Runtime.(runtime.Restorer); c.LiveRestore && c.Runtime != nil && !ok {
		errs = append(errs, fmt.Errorf("AgentConfig.LiveRestore: the runtime (%T) cannot restore tasks: it is not a runtime.Restorer", c.Runtime))
	}
	if c.TransportCredentials == nil && !c.Insecure {
		errs = append(errs, errors.New("AgentConfig.TransportCredentials: must not be nil (set AgentConfig.Insecure for plaintext, in tests only)"))
	}
	if c.BackoffMin < 0 {
		errs = append(errs, fmt.Errorf("AgentConfig.BackoffMin: must not be negative, got %v", c.BackoffMin))
	}
	if c.BackoffMax < c.BackoffMin {
		errs = append(errs, fmt.Errorf("AgentConfig.BackoffMax: must be at least BackoffMin (%v), got %v", c.BackoffMin, c.BackoffMax))
	}
	if c.StatusBatchInterval < 0 {
		errs = append(errs, fmt.Errorf("AgentConfig.StatusBatchInterval: must not be negative, got %v", c.StatusBatchInterval))
	}
	if c.DrainDelay < 0 {
		errs = append(errs, fmt.Errorf("AgentConfig.DrainDelay: must not be negative, got %v", c.DrainDelay))
	}
	if c.DrainTimeout < 0 {
		errs = append(errs, fmt.Errorf("AgentConfig.DrainTimeout: must not be negative, got %v", c.DrainTimeout))
	}
	if c.RPCTimeout < 0 {
		errs = append(errs, fmt.Errorf("AgentConfig.RPCTimeout: must not be negative, got %v", c.RPCTimeout))
	}
	return c, errors.Join(errs...)
}
