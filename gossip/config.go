package gossip

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/serf"
)

// KeySize is the size of a cluster gossip key: AES-256.
const KeySize = 32

// Config configures a Node. Start from DefaultConfig; New validates it and
// never modifies the caller's copy.
type Config struct {
	// NodeID names this member; it must be unique in the cluster and is the
	// Node of every endpoint this node publishes. Required.
	NodeID string

	// BindAddr is host:port where serf's memberlist listens, on both TCP and
	// UDP. Ignored when Transport is set.
	BindAddr string

	// AdvertiseAddr is host:port other members use to reach this node; empty
	// means the bound address (with a wildcard bind, memberlist picks a
	// private interface address).
	AdvertiseAddr string

	// Keys are the cluster's 32-byte AES keys; the first is the primary,
	// used to encrypt, and all are tried to decrypt. Managers distribute
	// them and RotateKeys changes them. Empty is refused unless AllowInsecure.
	Keys [][]byte

	// AllowInsecure permits running with no Keys: gossip in clear text and
	// any host that can reach the port may join. For tests only.
	AllowInsecure bool

	// Logger receives this node's logs, serf's and memberlist's included;
	// nil discards them.
	Logger *slog.Logger

	// GossipInterval is how often a member sends queued messages (endpoint
	// deltas, membership changes) to GossipNodes random peers.
	GossipInterval time.Duration
	// GossipNodes is the fan-out of each gossip round.
	GossipNodes int
	// RetransmitMult: each message is sent RetransmitMult*log10(N+1) times.
	RetransmitMult int

	// PushPullInterval is how often a member exchanges full state with one
	// random peer: serf's membership and, separately, the endpoint table.
	// This is the anti-entropy that repairs lost gossip.
	PushPullInterval time.Duration

	// PullDelay is how long a node that sees a gap in another node's
	// versions waits for gossip in flight to fill it before pulling that
	// node's set from it directly.
	PullDelay time.Duration

	// DigestInterval is how often a member sends a version digest (its own
	// version, the most recently changed members' and a rotating share of the
	// rest) to GossipNodes random peers in one packet each. A member that
	// missed a delta learns from it within a round or two that it is behind
	// and pulls the set after PullDelay, instead of waiting for anti-entropy.
	DigestInterval time.Duration

	// MaxDeltaChunks bounds how many gossip messages one SetLocal change may
	// take; larger changes are announced as "node X is at version V" and
	// peers pull the set over a stream instead.
	MaxDeltaChunks int

	// ProbeInterval, ProbeTimeout, SuspicionMult and SuspicionMaxTimeoutMult
	// are memberlist's failure detector settings.
	ProbeInterval           time.Duration
	ProbeTimeout            time.Duration
	SuspicionMult           int
	SuspicionMaxTimeoutMult int

	// ReapInterval is how often serf forgets members that failed or left
	// longer ago than ReconnectTimeout; their endpoints are dropped as soon
	// as they fail, this only frees the bookkeeping.
	ReapInterval time.Duration
	// ReconnectTimeout is how long serf keeps trying to reconnect to a
	// failed member before reaping it.
	ReconnectTimeout time.Duration
	// ReconnectInterval is how often serf tries to reconnect to one failed
	// member (by a push-pull stream). It is how members that failed each
	// other (a partition, or a member that missed a key change and then got
	// it with SetKeys) find each other again without a new Join.
	ReconnectInterval time.Duration
	// LeavePropagateDelay is how long Stop keeps the member running after
	// broadcasting its leave, so the leave reaches the others (and they drop
	// its endpoints at once) before it stops answering.
	LeavePropagateDelay time.Duration
	// LeaveTimeout bounds each of the leave's broadcasts (serf's intent,
	// memberlist's dead-self message): when no peer is left to take them,
	// Stop does not wait longer than this for them.
	LeaveTimeout time.Duration

	// StreamTimeout bounds each table sync stream (dial, exchange).
	StreamTimeout time.Duration

	// Transport, when set, replaces the UDP/TCP network transport (test
	// harnesses run many members in one process over gossiptest.MemNetwork).
	// Ownership passes to the Node, which shuts it down on Stop.
	Transport memberlist.Transport

	// Clock drives this node's own loops (version digests, anti-entropy,
	// pulls, answering have queries) and seeds its version counter at New,
	// so a restarted node outranks its previous incarnation; nil means
	// RealClock. Serf's and memberlist's timers are not driven by it.
	Clock Clock

	// dropEvent, for tests, discards the serf events it returns true for
	// before the node handles them (lost gossip, a member running an older
	// build). It is called from the event loop only.
	dropEvent func(serf.Event) bool
	// tableSyncInterval, for tests, overrides PushPullInterval for the
	// table's anti-entropy only (serf's membership push-pull keeps it).
	tableSyncInterval time.Duration
}

// DefaultConfig returns the recommended settings.
func DefaultConfig() Config {
	return Config{
		// 7946 is serf's well-known port; a wildcard bind serves every interface.
		BindAddr: "0.0.0.0:7946",
		// 200 ms: memberlist's LAN default. With fan-out 3 a change reaches 200
		// members in about 5 rounds, ~1 s.
		GossipInterval: 200 * time.Millisecond,
		// 3: memberlist's LAN default; more speeds spread at a bandwidth cost.
		GossipNodes: 3,
		// 4: memberlist's LAN default; ~9 sends per message at 200 members,
		// enough that losing one in five packets still reaches everyone.
		RetransmitMult: 4,
		// 10 s (memberlist's LAN default is 30 s): anti-entropy repairs lost
		// deltas within seconds; a full exchange is cheap at 10,000 endpoints.
		PushPullInterval: 10 * time.Second,
		// 500 ms: 2.5 gossip rounds, time for most deltas in flight to land
		// before falling back to a pull, but a small part of the 2 s target.
		PullDelay: 500 * time.Millisecond,
		// 250 ms: about one gossip round. Every member hears ~3 digests per
		// round, so a missed change is noticed within ~250-500 ms and pulled
		// after PullDelay: a change reaches all 200 members in under 2 s even
		// when gossip misses one. Each digest is one packet under 1.1 KiB, so
		// the cost is ~12 packets/s per member.
		DigestInterval: 250 * time.Millisecond,
		// 4 messages (~3.6 KiB, ~50 endpoints): larger changes (a node
		// starting with many tasks) are pulled by stream, cheaper than
		// flooding the gossip queue.
		MaxDeltaChunks: 4,
		// 500 ms probes with a 300 ms timeout and suspicion 3 * log10(N) *
		// interval (1.5 s at 10 members, 3.5 s at 200, sooner once a second
		// member confirms): a dead node is declared in about 2-4 s, before a
		// manager's heartbeat timeout.
		ProbeInterval:           500 * time.Millisecond,
		ProbeTimeout:            300 * time.Millisecond,
		SuspicionMult:           3,
		SuspicionMaxTimeoutMult: 3,
		// 15 s: serf's default; reaping only frees bookkeeping.
		ReapInterval: 15 * time.Second,
		// 1 h: a failed worker that comes back within the hour rejoins on its
		// own; serf's 24 h default keeps dead members around too long for a
		// cluster whose workers come and go.
		ReconnectTimeout: time.Hour,
		// 10 s (serf's default is 30 s): a member cut off by a partition or a
		// missed key change is back within seconds of being able to talk; one
		// stream every 10 s is negligible.
		ReconnectInterval: 10 * time.Second,
		// serf's default: a few gossip rounds for the leave to spread.
		LeavePropagateDelay: time.Second,
		// serf's default broadcast timeout.
		LeaveTimeout: 5 * time.Second,
		// 10 s: memberlist's TCP timeout; a sync of 10,000 endpoints is under
		// 1 MiB and takes milliseconds on a LAN.
		StreamTimeout: 10 * time.Second,
	}
}

// ErrInvalidConfig is wrapped by every configuration error.
var ErrInvalidConfig = errors.New("gossip: invalid config")

func configErr(field, rule string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalidConfig, field, fmt.Sprintf(rule, args...))
}

func (c *Config) validate() error {
	if c.NodeID == "" {
		return configErr("NodeID", "must not be empty")
	}
	if len(c.NodeID) > maxNodeIDLen {
		return configErr("NodeID", "must be at most %d bytes", maxNodeIDLen)
	}
	if c.Transport == nil {
		if _, _, err := splitHostPort(c.BindAddr); err != nil {
			return configErr("BindAddr", "must be host:port: %v", err)
		}
	}
	if c.AdvertiseAddr != "" {
		if _, _, err := splitHostPort(c.AdvertiseAddr); err != nil {
			return configErr("AdvertiseAddr", "must be host:port: %v", err)
		}
	}
	if len(c.Keys) == 0 && !c.AllowInsecure {
		return configErr("Keys", "must hold at least one key unless AllowInsecure is set")
	}
	if i, rule := keysProblem(c.Keys); i >= 0 {
		return configErr(fmt.Sprintf("Keys[%d]", i), "%s", rule)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"GossipInterval", c.GossipInterval},
		{"PushPullInterval", c.PushPullInterval},
		{"PullDelay", c.PullDelay},
		{"DigestInterval", c.DigestInterval},
		{"ProbeInterval", c.ProbeInterval},
		{"ProbeTimeout", c.ProbeTimeout},
		{"ReapInterval", c.ReapInterval},
		{"ReconnectTimeout", c.ReconnectTimeout},
		{"ReconnectInterval", c.ReconnectInterval},
		{"StreamTimeout", c.StreamTimeout},
		{"LeavePropagateDelay", c.LeavePropagateDelay},
		{"LeaveTimeout", c.LeaveTimeout},
	} {
		if d.v <= 0 {
			return configErr(d.name, "must be positive, got %v", d.v)
		}
	}
	if c.ProbeTimeout >= c.ProbeInterval {
		return configErr("ProbeTimeout", "must be shorter than ProbeInterval (%v)", c.ProbeInterval)
	}
	for _, n := range []struct {
		name string
		v    int
	}{
		{"GossipNodes", c.GossipNodes},
		{"RetransmitMult", c.RetransmitMult},
		{"MaxDeltaChunks", c.MaxDeltaChunks},
		{"SuspicionMult", c.SuspicionMult},
		{"SuspicionMaxTimeoutMult", c.SuspicionMaxTimeoutMult},
	} {
		if n.v <= 0 {
			return configErr(n.name, "must be positive, got %d", n.v)
		}
	}
	return nil
}

func splitHostPort(hp string) (string, int, error) {
	host, ps, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, err
	}
	p, err := strconv.Atoi(ps)
	if err != nil || p < 0 || p > 65535 {
		return "", 0, fmt.Errorf("port %q is not in 0-65535", ps)
	}
	return host, p, nil
}
