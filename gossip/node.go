package gossip

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/serf"
)

// eventName is the serf user event that carries endpoint deltas.
const eventName = "shoal.ep"

// userEventLimit is serf's UserEventSizeLimit for this package's events:
// with serf's and memberlist's headers and AES-GCM overhead an event still
// fits one 1400-byte UDP packet.
const userEventLimit = 1024

// maxDeltaPayload is the budget for a delta message inside a user event,
// leaving room for serf's encoding of the event (LTime, name, flags).
const maxDeltaPayload = userEventLimit - 96

// digestBudget bounds a digest packet's payload; with the magic byte and
// AES-GCM's 29 bytes it stays well inside one 1400-byte UDP packet. With
// short node IDs it holds ~50 versions.
const digestBudget = 1024

// digestHot is how many of the most recently changed members every digest
// names besides its rotating share: a change that gossip missed somewhere is
// then in nearly every digest while it is fresh.
const digestHot = 8

// pullWorkers bounds concurrent pulls per node.
const pullWorkers = 4

// maxPullAttempts bounds retries of a failing pull; anti-entropy repairs
// whatever is left.
const maxPullAttempts = 5

// Errors returned by Node methods.
var (
	ErrNotStarted  = errors.New("gossip: node not started")
	ErrStopped     = errors.New("gossip: node stopped")
	ErrStarted     = errors.New("gossip: node already started")
	ErrNoKeyring   = errors.New("gossip: cluster is not encrypted")
	ErrInvalidKeys = errors.New("gossip: invalid keys")
)

// bindAttempts bounds how often Start retries a port-0 bind whose
// kernel-chosen TCP port turned out to be taken for UDP.
const bindAttempts = 10

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

type pullReq struct {
	node     string
	via      string // a member that reported holding a newer set; "" means node itself
	due      time.Time
	force    bool
	attempts int
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

// Start creates the serf member and starts gossiping. It does not join
// anyone: call Join.
func (n *Node) Start(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.stopped {
		return ErrStopped
	}
	if n.started {
		return ErrStarted
	}
	cfg := n.cfg
	std := newStdLogger(n.log)

	ml := memberlist.DefaultLANConfig()
	ml.Name = cfg.NodeID
	ml.Logger = std
	ml.LogOutput = nil
	ml.GossipInterval = cfg.GossipInterval
	ml.GossipNodes = cfg.GossipNodes
	ml.RetransmitMult = cfg.RetransmitMult
	ml.PushPullInterval = cfg.PushPullInterval
	ml.ProbeInterval = cfg.ProbeInterval
	ml.ProbeTimeout = cfg.ProbeTimeout
	ml.SuspicionMult = cfg.SuspicionMult
	ml.SuspicionMaxTimeoutMult = cfg.SuspicionMaxTimeoutMult
	ml.TCPTimeout = cfg.StreamTimeout
	// memberlist's LZW compression allocates a fresh dictionary per packet and
	// dominated CPU at 200 members; gossip packets are small and LAN
	// bandwidth is cheap, so send them as they are.
	ml.EnableCompression = false
	if len(cfg.Keys) > 0 {
		kr, err := memberlist.NewKeyring(cfg.Keys, cfg.Keys[0])
		if err != nil {
			return fmt.Errorf("gossip: keyring: %w", err)
		}
		ml.Keyring = kr
		n.keyring = kr
	}
	if cfg.AdvertiseAddr != "" {
		h, p, _ := splitHostPort(cfg.AdvertiseAddr)
		ml.AdvertiseAddr, ml.AdvertisePort = h, p
	}

	inner := cfg.Transport
	if inner == nil {
		host, port, _ := splitHostPort(cfg.BindAddr)
		nt, err := bindNet(host, port, std)
		if err != nil {
			return fmt.Errorf("gossip: bind %s: %w", cfg.BindAddr, err)
		}
		bound := nt.GetAutoBindPort()
		ml.BindAddr, ml.BindPort = host, bound
		if cfg.AdvertiseAddr == "" {
			if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
				ml.AdvertiseAddr = host
			}
			ml.AdvertisePort = bound
		} else if ml.AdvertisePort == 0 {
			ml.AdvertisePort = bound // "host:0": advertise the port the kernel chose
		}
		inner = nt
	}
	n.mux = newMuxTransport(inner, cfg.StreamTimeout, n.serveTracked, n.handleDigest)
	ml.Transport = n.mux

	sc := serf.DefaultConfig()
	sc.NodeName = cfg.NodeID
	sc.MemberlistConfig = ml
	sc.Logger = std
	sc.LogOutput = nil
	sc.EventCh = n.eventCh
	sc.ReapInterval = cfg.ReapInterval
	sc.ReconnectTimeout = cfg.ReconnectTimeout
	sc.ReconnectInterval = cfg.ReconnectInterval
	sc.LeavePropagateDelay = cfg.LeavePropagateDelay
	sc.BroadcastTimeout = cfg.LeaveTimeout
	sc.TombstoneTimeout = cfg.ReconnectTimeout
	sc.UserEventSizeLimit = userEventLimit
	sc.CoalescePeriod = 0
	sc.UserCoalescePeriod = 0
	sc.DisableCoordinates = true
	s, err := serf.Create(sc)
	if err != nil {
		_ = inner.Shutdown()
		n.mux.close()
		return fmt.Errorf("gossip: serf: %w", err)
	}
	n.serf = s
	n.started = true

	n.wg.Add(5 + pullWorkers)
	go n.eventLoop()
	go n.confirmLoop()
	go n.digestLoop()
	go n.pullLoop()
	go n.antiEntropyLoop()
	for range pullWorkers {
		go n.pullWorker()
	}
	n.log.Info("gossip: started", "addr", memberAddr(s.LocalMember()))
	return nil
}

// bindNet opens memberlist's TCP and UDP listeners on host:port. Port 0
// lets the kernel choose a free TCP port, which memberlist then binds for UDP
// too; if that UDP port happens to be taken the bind is retried with a fresh
// TCP port, up to bindAttempts times.
func bindNet(host string, port int, std *log.Logger) (*memberlist.NetTransport, error) {
	var err error
	for range bindAttempts {
		var nt *memberlist.NetTransport
		nt, err = memberlist.NewNetTransport(&memberlist.NetTransportConfig{
			BindAddrs: []string{host},
			BindPort:  port,
			Logger:    std,
		})
		if err == nil {
			return nt, nil
		}
		if port != 0 {
			break
		}
	}
	return nil, err
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

// Join contacts the members at peers (host:port) and returns how many
// answered. On success this node then copies the whole endpoint table from
// one of them before returning (bounded by ctx; if that sync fails the
// periodic anti-entropy completes it later). When ctx ends before the
// members answer, Join returns ctx.Err(); serf's join call cannot be
// interrupted, so it runs on in the background until it ends, within
// StreamTimeout per peer.
func (n *Node) Join(ctx context.Context, peers []string) (int, error) {
	s := n.serfOrNil()
	if s == nil {
		return 0, ErrNotStarted
	}
	if len(peers) == 0 {
		return 0, fmt.Errorf("gossip: Join: peers must not be empty")
	}
	type res struct {
		k   int
		err error
	}
	ch := make(chan res, 1)
	go func() {
		k, err := s.Join(peers, true)
		ch <- res{k, err}
	}()
	var r res
	select {
	case r = <-ch:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	if r.err != nil && r.k == 0 {
		return 0, fmt.Errorf("gossip: join: %w", r.err)
	}
	// Full anti-entropy with a contacted peer: the joiner gets the table
	// and hands over its own set.
	for _, p := range peers {
		if ctx.Err() != nil {
			break
		}
		if err := n.syncWith(p, nil); err != nil {
			n.log.Debug("gossip: join sync failed", "peer", p, "err", err)
			continue
		}
		break
	}
	return r.k, nil
}

// Stop leaves the cluster gracefully, so other members drop this node's
// endpoints at once, and shuts down; every goroutine Start started has
// ended when it returns. It is idempotent.
//
// ctx bounds the leave, which takes about LeavePropagateDelay, at most
// 2*LeaveTimeout + LeavePropagateDelay. When ctx ends first, Stop shuts the
// node down at once and returns ctx.Err(); serf's leave call cannot be
// interrupted, so it runs on in the background, doing nothing more, for
// at most LeaveTimeout + LeavePropagateDelay.
func (n *Node) Stop(ctx context.Context) error {
	return n.stop(ctx, true)
}

// Kill shuts down without leaving, as a crash would: no leave is broadcast,
// so the other members keep this node's endpoints until their failure
// detector declares it failed (about ProbeInterval * SuspicionMult *
// log10(members) later). It is meant for tests that simulate crashes; use
// Stop otherwise. Like Stop it is idempotent (a Kill after Stop, or the
// reverse, does nothing more) and no goroutine outlives it.
func (n *Node) Kill() error {
	return n.stop(context.Background(), false)
}

func (n *Node) stop(ctx context.Context, leave bool) error {
	n.stopOnce.Do(func() {
		n.mu.Lock()
		n.stopped = true
		started := n.started
		s := n.serf
		n.mu.Unlock()
		if !started {
			return
		}
		if leave {
			ch := make(chan error, 1)
			go func() { ch <- leaveSerf(s) }()
			select {
			case err := <-ch:
				if err != nil {
					n.log.Warn("gossip: leave", "err", err)
				}
			case <-ctx.Done():
				n.stopErr = ctx.Err()
			}
		}
		if err := s.Shutdown(); err != nil && n.stopErr == nil {
			n.stopErr = err
		}
		close(n.done)
		n.mu.Lock()
		for c := range n.conns {
			_ = c.Close()
		}
		n.mu.Unlock()
		n.mux.close()
		n.wg.Wait()
		n.log.Info("gossip: stopped")
	})
	return n.stopErr
}

// errLeaveCut reports a leave that Stop's shutdown overtook.
var errLeaveCut = errors.New("gossip: leave cut short by shutdown")

// leaveSerf runs s.Leave. When Stop's ctx ends while serf waits for its
// leave intent to go out, Stop shuts serf down and serf then hands the leave
// to memberlist, which panics ("leave after shutdown"): that panic, and only
// it, is turned into errLeaveCut.
func leaveSerf(s *serf.Serf) (err error) {
	defer func() {
		if r := recover(); r != nil {
			if msg, ok := r.(string); !ok || msg != "leave after shutdown" {
				panic(r)
			}
			err = errLeaveCut
		}
	}()
	return s.Leave()
}

// SetLocal replaces the set of endpoints this node publishes (its own
// running, healthy tasks); the change spreads by gossip. Each endpoint's
// Node is set to this node's ID; invalid endpoints are logged and skipped.
// Safe for concurrent use, before or after Start.
func (n *Node) SetLocal(eps []Endpoint) {
	n.pubMu.Lock()
	defer n.pubMu.Unlock()
	next := make(map[epKey]Endpoint, len(eps))
	for _, ep := range eps {
		ep.Node = n.cfg.NodeID
		if err := ep.validate(); err != nil {
			n.log.Warn("gossip: SetLocal: endpoint skipped", "endpoint", ep.String(), "err", err)
			continue
		}
		next[ep.key()] = ep
	}
	cur, epoch, version := n.tbl.local()
	var adds []Endpoint
	var removes []epKey
	for k, ep := range next {
		if old, ok := cur[k]; !ok || old != ep {
			adds = append(adds, ep)
		}
	}
	for k := range cur {
		if _, ok := next[k]; !ok {
			removes = append(removes, k)
		}
	}
	if len(adds) == 0 && len(removes) == 0 {
		return
	}
	slices.SortFunc(adds, compareEndpoints)
	msgs := n.deltaMessages(epoch, version, adds, removes)
	final := version + uint64(len(msgs))
	if len(msgs) > n.cfg.MaxDeltaChunks {
		final = version + 1
		msgs = [][]byte{encodeDelta(&delta{Kind: kindAnnounce, Node: n.cfg.NodeID, Epoch: epoch, From: version, To: final})}
	}
	n.tbl.setLocal(next, final)
	n.notify()
	s := n.serfOrNil()
	if s == nil {
		return // peers pull the set when this node joins
	}
	for _, m := range msgs {
		if err := s.UserEvent(eventName, m, false); err != nil {
			n.log.Warn("gossip: delta not gossiped; peers will pull", "err", err)
		}
	}
}

// deltaMessages splits a change into delta messages that each fit one
// gossip packet; message i moves the version from version+i to version+i+1.
func (n *Node) deltaMessages(epoch, version uint64, adds []Endpoint, removes []epKey) [][]byte {
	budget := maxDeltaPayload - deltaHeaderSize(n.cfg.NodeID)
	var out [][]byte
	cur := &delta{Kind: kindDelta, Node: n.cfg.NodeID, Epoch: epoch}
	used := 0
	flush := func() {
		cur.From = version + uint64(len(out))
		cur.To = cur.From + 1
		out = append(out, encodeDelta(cur))
		cur = &delta{Kind: kindDelta, Node: n.cfg.NodeID, Epoch: epoch}
		used = 0
	}
	for _, k := range removes {
		sz := keySize(k)
		if used+sz > budget {
			flush()
		}
		cur.Removes = append(cur.Removes, k)
		used += sz
	}
	for _, ep := range adds {
		sz := endpointSize(ep)
		if used+sz > budget {
			flush()
		}
		cur.Adds = append(cur.Adds, ep)
		used += sz
	}
	if used > 0 {
		flush()
	}
	return out
}

// Table returns the current table of all endpoints known, this node's
// included, sorted by service, port, protocol, node and task. The slice is
// a copy the caller owns.
func (n *Node) Table() []Endpoint { return n.tbl.endpoints() }

// Watch returns a channel that receives a signal after each change to the
// table and a function that cancels the watch. Signals are coalesced (the
// channel holds at most one) and never block the gossip: read Table after
// each. The channel is closed by cancel.
func (n *Node) Watch() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	n.mu.Lock()
	id := n.nextW
	n.nextW++
	n.watchers[id] = ch
	n.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			n.mu.Lock()
			delete(n.watchers, id)
			n.mu.Unlock()
			close(ch)
		})
	}
}

func (n *Node) notify() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, ch := range n.watchers {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
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

// RotateKeys installs newKey as the cluster's primary key everywhere and
// removes every other key: serf's KeyManager installs it on all members,
// switches them to it, then removes the old keys. Each step is a serf query
// bounded by serf's query timeout; ctx is checked between steps. A step
// that some member fails leaves the cluster working on the keys it had, and
// RotateKeys can be retried.
func (n *Node) RotateKeys(ctx context.Context, newKey []byte) error {
	s := n.serfOrNil()
	if s == nil {
		return ErrNotStarted
	}
	if n.keyring == nil {
		return ErrNoKeyring
	}
	if len(newKey) != KeySize {
		return fmt.Errorf("gossip: RotateKeys: newKey must be %d bytes, got %d", KeySize, len(newKey))
	}
	km := s.KeyManager()
	enc := base64.StdEncoding.EncodeToString(newKey)
	steps := []struct {
		name string
		do   func(string) (*serf.KeyResponse, error)
	}{
		{"install", km.InstallKey},
		{"use", km.UseKey},
	}
	for _, st := range steps {
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, err := st.do(enc); err != nil {
			return fmt.Errorf("gossip: RotateKeys: %s: %w", st.name, err)
		}
	}
	for _, k := range n.keyring.GetKeys() {
		if slices.Equal(k, newKey) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, err := km.RemoveKey(base64.StdEncoding.EncodeToString(k)); err != nil {
			return fmt.Errorf("gossip: RotateKeys: remove old key: %w", err)
		}
	}
	return nil
}

// eventLoop applies serf's membership and user events in order.
func (n *Node) eventLoop() {
	defer n.wg.Done()
	for {
		select {
		case <-n.done:
			return
		case e := <-n.eventCh:
			n.handleEvent(e)
		}
	}
}

func (n *Node) handleEvent(e serf.Event) {
	if n.cfg.dropEvent != nil && n.cfg.dropEvent(e) {
		return
	}
	switch ev := e.(type) {
	case *serf.Query:
		if ev.Name == haveQueryName {
			n.handleHaveQuery(ev)
		}
	case serf.MemberEvent:
		defer n.membersChanged()
		for _, m := range ev.Members {
			if m.Name == n.cfg.NodeID {
				continue
			}
			switch ev.Type {
			case serf.EventMemberJoin:
				n.mu.Lock()
				n.addrs[m.Name] = memberAddr(m)
				n.mu.Unlock()
				n.tbl.revive(m.Name)
				n.schedulePull(m.Name, n.cfg.PullDelay, true)
			case serf.EventMemberLeave, serf.EventMemberFailed:
				n.mu.Lock()
				delete(n.addrs, m.Name)
				n.mu.Unlock()
				n.cancelPull(m.Name)
				n.stats.drops.Add(1)
				if n.tbl.drop(m.Name) {
					n.log.Info("gossip: member gone, endpoints dropped", "member", m.Name, "event", ev.Type.String())
					n.notify()
				}
			case serf.EventMemberReap:
				n.tbl.revive(m.Name) // clears the reaped member's tombstone
			}
		}
	case serf.UserEvent:
		if ev.Name != eventName {
			return
		}
		dl, err := decodeDelta(ev.Payload)
		if err != nil {
			n.log.Warn("gossip: bad delta", "err", err)
			return
		}
		if dl.Kind == kindAnnounce {
			n.stats.announces.Add(1)
		} else {
			n.stats.deltas.Add(1)
		}
		changed, now, later := n.tbl.applyDelta(dl)
		if changed {
			n.notify()
		}
		n.kickConfirm()
		switch {
		case now:
			n.schedulePull(dl.Node, 0, false)
		case later:
			n.schedulePull(dl.Node, n.cfg.PullDelay, false)
		}
	}
}

// schedulePull arranges to pull node's set from it after delay, unless an
// earlier pull is already due.
func (n *Node) schedulePull(node string, delay time.Duration, force bool) {
	n.schedulePullVia(node, "", delay, force)
}

// schedulePullVia is schedulePull from member via, which reported holding a
// newer set, rather than from node itself.
func (n *Node) schedulePullVia(node, via string, delay time.Duration, force bool) {
	due := n.clock.Now().Add(delay)
	n.pullMu.Lock()
	defer n.pullMu.Unlock()
	if old, ok := n.pullDue[node]; ok {
		if old.due.Before(due) {
			due = old.due
		}
		force = force || old.force
		if old.via != "" || via == "" {
			via = old.via
		}
	}
	n.pullDue[node] = pullReq{node: node, via: via, due: due, force: force}
}

func (n *Node) cancelPull(node string) {
	n.pullMu.Lock()
	defer n.pullMu.Unlock()
	delete(n.pullDue, node)
}

// pullLoop hands due pulls to the workers, checking every quarter of
// PullDelay (at most every 50 ms).
func (n *Node) pullLoop() {
	defer n.wg.Done()
	every := min(n.cfg.PullDelay/4, 50*time.Millisecond)
	tick := n.clock.NewTimer(every)
	defer tick.Stop()
	for {
		select {
		case <-n.done:
			return
		case now := <-tick.C():
			tick.Reset(every)
			n.pullMu.Lock()
			for id, r := range n.pullDue {
				if r.due.After(now) {
					continue
				}
				select {
				case n.pullCh <- r:
					delete(n.pullDue, id)
				default: // workers busy: stays due
				}
			}
			n.pullMu.Unlock()
		}
	}
}

func (n *Node) pullWorker() {
	defer n.wg.Done()
	for {
		select {
		case <-n.done:
			return
		case r := <-n.pullCh:
			if !r.force && !n.tbl.behind(r.node) {
				continue
			}
			n.mu.Lock()
			addr, ok := n.addrs[r.node]
			if viaAddr, live := n.addrs[r.via]; ok && live {
				addr = viaAddr // spread pulls of a fresh change over its holders
			}
			n.mu.Unlock()
			if !ok {
				continue // not a live member (yet): its join event schedules a pull
			}
			n.stats.pulls.Add(1)
			err := n.syncWith(addr, map[string]uint64{r.node: n.tbl.versionOf(r.node)})
			if err != nil {
				n.stats.pullErrs.Add(1)
				r.attempts++
				n.log.Debug("gossip: pull failed", "member", r.node, "attempt", r.attempts, "err", err)
				if r.attempts < maxPullAttempts {
					r.via = "" // retry from the author
					n.pullMu.Lock()
					if _, ok := n.pullDue[r.node]; !ok {
						r.due = n.clock.Now().Add(n.cfg.PullDelay << r.attempts)
						n.pullDue[r.node] = r
					}
					n.pullMu.Unlock()
				}
			}
		}
	}
}

// digestLoop sends a version digest to GossipNodes random live members
// every DigestInterval (jittered, so members do not send in lockstep).
func (n *Node) digestLoop() {
	defer n.wg.Done()
	for {
		d := n.cfg.DigestInterval*3/4 + rand.N(n.cfg.DigestInterval/2+1)
		t := n.clock.NewTimer(d)
		select {
		case <-n.done:
			t.Stop()
			return
		case <-t.C():
		}
		n.sendDigest()
	}
}

func (n *Node) sendDigest() {
	n.mu.Lock()
	if n.stopped || len(n.addrs) == 0 {
		n.mu.Unlock()
		return
	}
	// Pick GossipNodes distinct peers by partial shuffle.
	peers := slices.Collect(maps.Values(n.addrs))
	n.mu.Unlock()
	k := min(n.cfg.GossipNodes, len(peers))
	for i := range k {
		j := i + rand.N(len(peers)-i)
		peers[i], peers[j] = peers[j], peers[i]
	}
	vd := &versionDigest{From: n.cfg.NodeID, Versions: n.tbl.versionDigest(digestBudget-len(n.cfg.NodeID)-12, digestHot)}
	pkt, err := seal(n.keyring, digestAAD, []byte{packetMagic}, encodeVersionDigest(vd))
	if err != nil {
		n.log.Warn("gossip: digest not sealed", "err", err)
		return
	}
	for _, p := range peers[:k] {
		if _, err := n.mux.WriteTo(pkt, p); err != nil {
			n.log.Debug("gossip: digest not sent", "peer", p, "err", err)
			continue
		}
		n.stats.digestsSent.Add(1)
	}
}

// handleDigest handles a digest packet (the magic byte already removed):
// for every member the sender holds a newer set of, a pull from the sender
// is scheduled after PullDelay, which the delta most likely still in flight
// makes unnecessary if it lands first.
func (n *Node) handleDigest(b []byte) {
	pt, err := open(n.keyring, digestAAD, b)
	if err != nil {
		n.log.Debug("gossip: digest packet refused", "err", err)
		return
	}
	vd, err := decodeVersionDigest(pt)
	if err != nil {
		n.log.Warn("gossip: bad digest", "err", err)
		return
	}
	n.stats.digestsRecv.Add(1)
	for _, node := range n.tbl.noteVersions(vd.Versions) {
		n.stats.digestGaps.Add(1)
		n.schedulePullVia(node, vd.From, n.cfg.PullDelay, false)
	}
}

// antiEntropyLoop runs a full two-way sync with a random live member every
// PushPullInterval (jittered), repairing whatever gossip lost.
func (n *Node) antiEntropyLoop() {
	defer n.wg.Done()
	for {
		iv := n.cfg.PushPullInterval
		if n.cfg.tableSyncInterval > 0 {
			iv = n.cfg.tableSyncInterval
		}
		d := iv/2 + rand.N(iv)
		t := n.clock.NewTimer(d)
		select {
		case <-n.done:
			t.Stop()
			return
		case <-t.C():
		}
		n.mu.Lock()
		peers := slices.Collect(maps.Values(n.addrs))
		n.mu.Unlock()
		if len(peers) == 0 {
			continue
		}
		p := peers[rand.N(len(peers))]
		n.stats.syncs.Add(1)
		if err := n.syncWith(p, nil); err != nil {
			n.log.Debug("gossip: anti-entropy failed", "peer", p, "err", err)
		}
	}
}

func (n *Node) applyRecords(rs []*record) {
	changed := false
	for _, r := range rs {
		if n.tbl.applyRecord(r) {
			changed = true
		}
	}
	if changed {
		n.notify()
	}
	if len(rs) > 0 {
		n.kickConfirm()
	}
}

// track registers a live stream so stop can cut it; false once stopping.
func (n *Node) track(c net.Conn) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.stopped {
		return false
	}
	n.conns[c] = struct{}{}
	return true
}

func (n *Node) untrack(c net.Conn) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.conns, c)
}

func (n *Node) serveTracked(c net.Conn) {
	if !n.track(c) {
		_ = c.Close()
		return
	}
	defer n.untrack(c)
	n.serveSync(c)
}
