package gossip

import (
	"errors"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/serf"
)

// Errors returned by Node methods.
var (
	ErrNotStarted  = errors.New("gossip: node not started")
	ErrStopped     = errors.New("gossip: node stopped")
	ErrStarted     = errors.New("gossip: node already started")
	ErrNoKeyring   = errors.New("gossip: cluster is not encrypted")
	ErrInvalidKeys = errors.New("gossip: invalid keys")
)

// Node is one serf member holding the cluster-wide endpoint table.
type Node struct {
	cfg   Config
	log   *slog.Logger
	clock Clock
	epoch uint64
	tbl   *table

	pubMu sync.Mutex // serialises SetLocal so deltas leave in version order
	keyMu sync.Mutex // serialises SetKeys so its install/use/remove steps do not interleave

	// mu guards started, stopped, addrs, watchers, nextW, conns, memberCh and
	// cfg.Keys; serf, keyring and mux are set under it by Start and only
	// read after.
	mu       sync.Mutex
	started  bool
	stopped  bool
	serf     *serf.Serf
	keyring  *memberlist.Keyring
	mux      *muxTransport
	addrs    map[string]string // live member -> address, from serf events
	watchers map[uint64]chan struct{}
	nextW    uint64
	conns    map[net.Conn]struct{} // open sync streams, cut by stop

	pullMu  sync.Mutex         // guards pullDue
	pullDue map[string]pullReq // node -> its scheduled pull
	pullCh  chan pullReq       // due pulls, from pullLoop to the workers

	memberCh  chan struct{}  // closed and replaced (under mu) at each membership change
	confMu    sync.Mutex     // guards confWaits
	confWaits []*confirmWait // have queries waiting for the table to catch up
	confKick  chan struct{}  // the table may have moved: recheck confWaits

	stats stats

	eventCh  chan serf.Event
	done     chan struct{}
	wg       sync.WaitGroup
	stopOnce sync.Once
	stopErr  error
}

// stats counts protocol activity, for tests and benchmarks.
type stats struct {
	deltas, announces, pulls, pullErrs, syncs, drops atomic.Int64
	digestsSent, digestsRecv, digestGaps             atomic.Int64
	// Confirm calls, and how they ended (the rest are still waiting).
	confirms, confirmsOK, confirmsCanceled atomic.Int64
	// have queries sent by Confirm; answered by this member; answered only
	// after a pull because this member was behind.
	confirmQueries, confirmAnswers, confirmDeferred atomic.Int64
}

// New validates cfg and returns an unstarted Node.
func New(cfg Config) (*Node, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	c := cfg
	c.Keys = cloneKeys(cfg.Keys)
	clk := c.Clock
	if clk == nil {
		clk = RealClock()
	}
	lg := c.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	lg = lg.With("node", c.NodeID)
	epoch := uint64(clk.Now().UnixNano())
	return &Node{
		cfg:      c,
		log:      lg,
		clock:    clk,
		epoch:    epoch,
		tbl:      newTable(c.NodeID, epoch),
		addrs:    make(map[string]string),
		watchers: make(map[uint64]chan struct{}),
		conns:    make(map[net.Conn]struct{}),
		pullDue:  make(map[string]pullReq),
		pullCh:   make(chan pullReq, 1024),
		memberCh: make(chan struct{}),
		confKick: make(chan struct{}, 1),
		eventCh:  make(chan serf.Event, 4096),
		done:     make(chan struct{}),
	}, nil
}

// Addr returns the address other members use to reach this node (for
// their Join), or "" before Start. With a BindAddr of port 0 it carries the
// port the kernel chose.
func (n *Node) Addr() string {
	s := n.serfOrNil()
	if s == nil {
		return ""
	}
	return memberAddr(s.LocalMember())
}

// memberAddr renders a serf member's address as host:port.
func memberAddr(m serf.Member) string {
	return net.JoinHostPort(m.Addr.String(), strconv.Itoa(int(m.Port)))
}

// serfOrNil returns the serf member while the node runs, else nil.
func (n *Node) serfOrNil() *serf.Serf {
	s, _ := n.runningSerf()
	return s
}

// Members returns the IDs of the live members, this node included, sorted.
func (n *Node) Members() []string {
	s := n.serfOrNil()
	if s == nil {
		return []string{n.cfg.NodeID}
	}
	var out []string
	for _, m := range s.Members() {
		if m.Status == serf.StatusAlive {
			out = append(out, m.Name)
		}
	}
	slices.Sort(out)
	return out
}
