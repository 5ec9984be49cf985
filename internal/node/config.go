package node

import (
	"context"
	"log/slog"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/shoalhq/shoal/internal/clock"
	"github.com/shoalhq/shoal/internal/manager"
	"github.com/shoalhq/shoal/internal/mesh"
	"github.com/shoalhq/shoal/internal/nodesec"
	"github.com/shoalhq/shoal/runtime"
)

// Config configures a node. The shoal package fills every field from
// shoal.Config, defaults applied and validated; see there for each field's
// meaning.
type Config struct {
	StateDir      string
	ListenAddr    string
	AdvertiseAddr string
	Listener      net.Listener
	Dial          func(ctx context.Context, addr string) (net.Conn, error)

	Hostname    string
	Labels      map[string]string
	NanoCPUs    int64
	MemoryBytes int64

	// Runtime runs the node's tasks; nil means the process runtime with its
	// files under StateDir/tasks.
	Runtime      runtime.Runtime
	DisableAgent bool
	// LiveRestore: Stop leaves the tasks running (dispatch.AgentConfig).
	LiveRestore bool
	// InsecureRegistries: registries a manager reaches over plain HTTP to
	// pin service images to digests.
	InsecureRegistries []string

	HeartbeatPeriod  time.Duration
	CertValidity     time.Duration
	ExternalCA       *nodesec.ExternalCA
	AutoLock         bool
	TaskHistoryLimit int
	RestartDelay     time.Duration

	Raft manager.RaftConfig
	Mesh MeshConfig

	ForceNewCluster bool

	// RoleRetry is the wait before a failed role change is tried again.
	RoleRetry time.Duration
	// StopGrace bounds how long Stop waits for client streams to end before
	// it closes them.
	StopGrace time.Duration

	Clock   clock.Clock
	Logger  *slog.Logger
	Metrics prometheus.Registerer
}

// MeshConfig is the node's routing-mesh part (Disabled: none).
type MeshConfig struct {
	Disabled bool
	// Mesh is the mesh part's configuration; the node fills NodeID,
	// NodeAddr, AnyPort, Source, Clock, Logger and Metrics.
	Mesh mesh.Config
	// DrainDelay and DrainTimeout are the agent's drain settings;
	// KeyRotationGrace the leader's gossip key rotation phase length.
	DrainDelay       time.Duration
	DrainTimeout     time.Duration
	KeyRotationGrace time.Duration
}
