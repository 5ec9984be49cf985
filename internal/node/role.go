package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/clock"
	"github.com/shoalhq/shoal/pki"
)

// roleWant is the role a node was told it has.
type roleWant struct {
	manager bool
	raftID  uint64
	peers   map[uint64]string
}

// onSession is the agent's view of its dispatcher session: the gossip keys
// and peers, the trust bundle, and the role the managers record for this
// node. It must not block for long.
func (n *Node) onSession(m *api.SessionMessage) {
	if n.mesh != nil {
		n.mesh.Update(m.GetGossipKeys(), m.GetGossipPeers())
	}
	if len(m.GetRootCaPem()) > 0 && n.mgr.Load() == nil {
		n.sec.FollowRoots(m.GetRootCaPem())
	}
	isManager := n.Role() == Manager
	switch {
	case m.GetRole() == api.NodeRole_NODE_ROLE_MANAGER && m.GetRaftId() != 0 && !isManager:
		peers := make(map[uint64]string, len(m.GetPeers()))
		for _, p := range m.GetPeers() {
			peers[p.GetRaftId()] = p.GetAddr()
		}
		n.wantRole(roleWant{manager: true, raftID: m.GetRaftId(), peers: peers})
	case m.GetRole() == api.NodeRole_NODE_ROLE_WORKER && isManager && len(m.GetManagers()) > 0:
		n.wantRole(roleWant{manager: false})
	}
}

// wantRole records the role the node was told it has and wakes the role
// loop. It does not block.
func (n *Node) wantRole(w roleWant) { n.roles.set(w) }

// roleChanger applies the role a node was told it has, one change at a
// time: a promotion or a demotion runs to its end before the next is
// looked at, a demotion cancels a promotion in progress, and a failed
// change is tried again after retry on the clock (unless a newer wish
// replaced it).
type roleChanger struct {
	clock clock.Clock
	retry time.Duration
	log   *slog.Logger
	// isManager reports whether the node runs its manager part now;
	// promote and demote change that. They are called from run's goroutine
	// only.
	isManager func() bool
	promote   func(ctx context.Context, w *roleWant) error
	demote    func(ctx context.Context) error

	mu     sync.Mutex
	want   *roleWant          // mu: the newest wish not yet applied
	cancel context.CancelFunc // mu: cancels a promotion in progress
	kick   chan struct{}
}

func newRoleChanger(c clock.Clock, retry time.Duration, log *slog.Logger) *roleChanger {
	return &roleChanger{clock: c, retry: retry, log: log, kick: make(chan struct{}, 1)}
}

// set records w as the newest wish and wakes run; a demotion cancels a
// promotion in progress. It does not block.
func (r *roleChanger) set(w roleWant) {
	r.mu.Lock()
	r.want = &w
	if !w.manager && r.cancel != nil {
		r.cancel()
	}
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// run applies wishes until ctx ends.
func (r *roleChanger) run(ctx context.Context) {
	retry := r.clock.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.kick:
		case <-retry.C():
		}
		retry.Stop()
		r.mu.Lock()
		w := r.want
		r.want = nil
		var opCtx context.Context
		var cancel context.CancelFunc
		if w != nil && w.manager {
			opCtx, cancel = context.WithCancel(ctx)
			r.cancel = cancel
		}
		r.mu.Unlock()
		if w == nil {
			continue
		}
		isManager := r.isManager()
		var err error
		switch {
		case w.manager && !isManager:
			err = r.promote(opCtx, w)
		case !w.manager && isManager:
			err = r.demote(ctx)
		}
		if cancel != nil {
			r.mu.Lock()
			r.cancel = nil
			r.mu.Unlock()
			cancel()
		}
		if err != nil && ctx.Err() == nil {
			r.log.Error("role change failed; retrying", "manager", w.manager, "in", r.retry, "err", err)
			r.mu.Lock()
			if r.want == nil {
				r.want = w
			}
			r.mu.Unlock()
			retry.Reset(r.retry)
		}
	}
}

// promote turns this worker into a manager: its identity says manager first
// (a crash from here on restarts it as one, with the Raft ID it was given),
// then the manager part starts as a new member of the Raft group, which the
// leader has added as a learner.
func (n *Node) promote(ctx context.Context, w *roleWant) error {
	old := *n.Identity()
	n.log.Info("promoted to manager; starting the manager part", "raft_id", w.raftID)
	// Raft and the control API need a manager certificate: the CA issues one
	// now that the store records the node as a manager.
	if err := n.sec.EnsureRole(ctx, pki.OUManager); err != nil {
		return fmt.Errorf("promote: %w", err)
	}
	// A Raft log left from an earlier time as manager belongs to another
	// Raft ID: the new member starts empty, with a new data key.
	if err := os.RemoveAll(filepath.Join(n.cfg.StateDir, "raft")); err != nil {
		return fmt.Errorf("promote: %w", err)
	}
	if err := n.removeDataKey(); err != nil {
		return fmt.Errorf("promote: %w", err)
	}
	if err := n.openDataKey(nil); err != nil {
		return fmt.Errorf("promote: %w", err)
	}
	ident := old
	ident.Role, ident.RaftID, ident.RaftPeers = Manager, w.raftID, w.peers
	if err := SaveIdentity(n.cfg.StateDir, &ident); err != nil {
		return fmt.Errorf("promote: %w", err)
	}
	n.mu.Lock()
	n.ident = &ident
	n.mu.Unlock()
	if err := n.startManager(ctx, &ident, false, true); err != nil {
		n.mu.Lock()
		n.ident = &old
		n.mu.Unlock()
		return errors.Join(fmt.Errorf("promote: %w", err), SaveIdentity(n.cfg.StateDir, &old),
			os.RemoveAll(filepath.Join(n.cfg.StateDir, "raft")))
	}
	n.log.Info("now a manager", "raft_id", w.raftID)
	return nil
}

// demote turns this manager into a worker: the manager part stops, the
// identity says worker (keeping the managers' addresses for the agent), the
// Raft log is deleted, and an agent starts if the node had none.
func (n *Node) demote(ctx context.Context) error {
	mg := n.mgr.Load()
	n.log.Info("demoted to worker; stopping the manager part", "raft_id", n.Identity().RaftID)
	var managers []string
	for _, a := range mg.ManagerAddrs() {
		if a != n.Addr() {
			managers = append(managers, a)
		}
	}
	n.mgr.Store(nil)
	err := mg.Stop(ctx)
	if serr := n.saveAsWorker(managers); serr != nil {
		return errors.Join(err, serr)
	}
	// The manager certificate is replaced by a worker's (the managers
	// already refuse it for Raft and the control API); the renewal loop
	// retries if no manager answers now.
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	if rerr := n.sec.EnsureRole(rctx, pki.OUWorker); rerr != nil {
		n.log.Warn("demote: no worker certificate yet; the renewal loop will retry", "err", rerr)
		n.sec.Kick()
	}
	cancel()
	if n.agent == nil {
		if aerr := n.startAgent(ctx); aerr != nil {
			err = errors.Join(err, fmt.Errorf("demote: start the agent: %w", aerr))
		}
	}
	n.log.Info("now a worker")
	return err
}

// saveAsWorker records this node as a worker (which knows the managers'
// addresses, default the ones it knew) and deletes its Raft log, which
// belongs to a Raft ID that is no longer a member.
func (n *Node) saveAsWorker(managers []string) error {
	ident := *n.Identity()
	if len(managers) == 0 {
		managers = ident.Managers
		for _, addr := range ident.RaftPeers {
			if addr != n.Addr() && !slices.Contains(managers, addr) {
				managers = append(managers, addr)
			}
		}
	}
	ident.Role, ident.RaftID, ident.RaftPeers, ident.Managers = Worker, 0, nil, managers
	if err := SaveIdentity(n.cfg.StateDir, &ident); err != nil {
		return fmt.Errorf("demote: %w", err)
	}
	n.mu.Lock()
	n.ident = &ident
	n.mu.Unlock()
	if err := os.RemoveAll(filepath.Join(n.cfg.StateDir, "raft")); err != nil {
		return fmt.Errorf("demote: %w", err)
	}
	if err := n.removeDataKey(); err != nil {
		return fmt.Errorf("demote: %w", err)
	}
	return nil
}
