package gossip

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/serf"
)

// bindAttempts bounds how often Start retries a port-0 bind whose
// kernel-chosen TCP port turned out to be taken for UDP.
const bindAttempts = 10

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
