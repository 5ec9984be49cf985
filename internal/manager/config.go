package manager

import (
	"context"
	"log/slog"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/clock"
	"github.com/shoalhq/shoal/raftstore"
)

// Setter switches a gRPC service's implementation; nil switches it off
// (the node's server then answers that the service is down). Set is safe
// for concurrent use and does not block.
type Setter interface{ Set(impl any) }

// Services are the node's switchable manager services, which the manager
// part switches on while it runs (and the dispatcher while it leads).
type Services struct {
	Raft, Control, Join, CA, Dispatcher Setter
}

// RaftConfig tunes the Raft member.
type RaftConfig struct {
	TickInterval     time.Duration
	ElectionTicks    int
	SnapshotInterval uint64
	// Fault, if set, is asked about every Raft message this member sends:
	// drop it, or deliver it after delay (fault-injection tests).
	Fault func(from, to uint64) (drop bool, delay time.Duration)
}

// ElectionTimeout is ElectionTicks ticks.
func (c RaftConfig) ElectionTimeout() time.Duration {
	return c.TickInterval * time.Duration(c.ElectionTicks)
}

// InitCluster is what Init gives the first manager to create the cluster
// object with.
type InitCluster struct {
	// RootCA is the cluster's root CA (with its key, unless external).
	RootCA *api.RootCA
	// RootDigest is the root certificate's digest, for the join tokens.
	RootDigest string
	// HeartbeatPeriod, CertValidity, TaskHistoryLimit and AutoLock are the
	// cluster settings given at Init.
	HeartbeatPeriod  time.Duration
	CertValidity     time.Duration
	TaskHistoryLimit int
	AutoLock         bool
}

// Config configures a node's manager part. Every field is required unless
// it says otherwise; the node fills them all.
type Config struct {
	NodeID, ClusterID string
	RaftID            uint64
	// BootPeers are the Raft members a joining manager starts with (nil on
	// a restart: the store's manager objects say where the members are).
	BootPeers map[uint64]string
	// Addr is the node's advertised address.
	Addr string
	// RaftDir holds the Raft log.
	RaftDir string
	// Init, set on the first manager at Init, creates the cluster object.
	Init *InitCluster
	// Joined: the member was added to an existing group and starts with an
	// empty log.
	Joined          bool
	ForceNewCluster bool
	// DisableAgent: the node runs no agent, so no dispatcher session marks
	// it READY; its node object is marked READY by the manager itself.
	DisableAgent bool
	Labels       map[string]string
	// InsecureRegistries are the registries reached over plain HTTP when
	// service images are pinned to digests.
	InsecureRegistries []string
	// Description returns the node's description (resources, platform,
	// gossip address). Called at start; must not block.
	Description func() *api.NodeDescription

	// DialOptions are the options (credentials included) of a connection to
	// another manager; TransportCredentials those of the Raft transport.
	DialOptions          func() []grpc.DialOption
	TransportCredentials credentials.TransportCredentials
	// Dial, if set, opens connections to other nodes instead of TCP.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// Encryptor encrypts the Raft log at rest.
	Encryptor raftstore.Encryptor
	// DataKeyPath is the data key file; Wrapped the unlock key it is wrapped
	// with now (nil: plain). The autolock component keeps it as the cluster
	// says from then on.
	DataKeyPath string
	Wrapped     []byte

	Raft RaftConfig
	// HeartbeatPeriod is the default heartbeat period of the dispatcher when
	// the cluster object sets none; RestartDelay the orchestrator's default
	// restart delay (0: the orchestrator's default).
	HeartbeatPeriod time.Duration
	RestartDelay    time.Duration
	// KeyRotationGrace is how long each phase of a gossip key rotation lasts.
	KeyRotationGrace time.Duration

	Services Services
	// OnDemoted is called (from a manager goroutine; it must not block) when
	// the manager finds it is no longer a member: demoted or removed.
	OnDemoted func()
	// Publish, if set, is called once from Start when the store and the
	// Raft member exist, before the log is loaded: the node makes the
	// manager visible to its server's authorizer and its mesh then. The
	// manager's methods are safe to call from that moment.
	Publish func(*Manager)
	// OnTrustBundle is called with the cluster's trust bundle whenever the
	// cluster object may have changed it; it must not block.
	OnTrustBundle func(bundle []byte)

	// Clock times every loop; nil means clock.Real().
	Clock   clock.Clock
	Logger  *slog.Logger
	Metrics prometheus.Registerer
}
