package manager

import (
	"context"
	"time"

	"github.com/shoalhq/shoal/dispatch"
	"github.com/shoalhq/shoal/internal/orchestrator"
	"github.com/shoalhq/shoal/internal/schedule"
	"github.com/shoalhq/shoal/internal/state"
)

// leaderTerm holds the components that run only on the Raft leader, in
// the order they start.
type leaderTerm struct {
	orch  *orchestrator.Orchestrator
	sched *schedule.Driver
	disp  *dispatch.Dispatcher
	loops []component
}

// component is a leader-only loop with the project's lifecycle.
type component interface {
	Start(ctx context.Context) error
	Stop(ctx context.Context) error
}

// leadershipLoop runs the leader-only components while this manager leads.
func (mg *Manager) leadershipLoop(ctx context.Context) {
	defer mg.bg.Done()
	ch, cancel := mg.raft.LeadershipChanges()
	defer cancel()
	defer mg.stopTerm()
	for {
		select {
		case <-ctx.Done():
			return
		case leader, ok := <-ch:
			if !ok {
				return
			}
			if leader {
				if err := mg.startTerm(ctx); err != nil {
					mg.log.Error("cannot start leader components", "err", err)
				}
			} else {
				mg.stopTerm()
			}
		}
	}
}

// heartbeatPeriod is the cluster's heartbeat period (the configured default
// when the cluster object sets none).
func (mg *Manager) heartbeatPeriod() time.Duration {
	heartbeat := mg.cfg.HeartbeatPeriod
	mg.store.ViewShared(func(tx state.ReadTx) {
		if c := tx.GetCluster(mg.cfg.ClusterID); c != nil && c.GetSpec().GetHeartbeatPeriod() > 0 {
			heartbeat = time.Duration(c.Spec.HeartbeatPeriod)
		}
	})
	return heartbeat
}

func (mg *Manager) startTerm(ctx context.Context) (err error) {
	mg.termMu.Lock()
	defer mg.termMu.Unlock()
	if mg.term != nil {
		return nil
	}
	t := &leaderTerm{}
	ocfg := orchestrator.DefaultConfig()
	ocfg.Logger = mg.log.With("component", "orchestrator")
	ocfg.Clock = mg.clock
	if mg.cfg.RestartDelay > 0 {
		ocfg.DefaultRestartDelay = mg.cfg.RestartDelay
	}
	if t.orch, err = orchestrator.New(mg.store, ocfg); err != nil {
		return err
	}
	if t.sched, err = schedule.New(mg.store, schedule.Config{Logger: mg.log.With("component", "scheduler"), Clock: mg.clock}); err != nil {
		return err
	}
	dcfg := dispatch.DefaultDispatcherConfig()
	dcfg.HeartbeatPeriod = mg.heartbeatPeriod()
	dcfg.Managers = mg.ManagerAddrs
	dcfg.Logger = mg.log
	dcfg.Registerer = mg.cfg.Metrics
	dcfg.Clock = mg.clock
	if t.disp, err = dispatch.NewDispatcher(mg.store, dcfg); err != nil {
		return err
	}
	loops, err := mg.leaderLoops()
	if err != nil {
		return err
	}
	var started []component
	defer func() {
		if err != nil {
			for i := len(started) - 1; i >= 0; i-- {
				_ = started[i].Stop(context.Background())
			}
		}
	}()
	for _, c := range append([]component{t.disp, t.sched, t.orch}, loops...) {
		if err := c.Start(ctx); err != nil {
			return err
		}
		started = append(started, c)
	}
	t.loops = loops
	mg.cfg.Services.Dispatcher.Set(t.disp)
	mg.term = t
	return nil
}

func (mg *Manager) stopTerm() {
	mg.termMu.Lock()
	defer mg.termMu.Unlock()
	t := mg.term
	if t == nil {
		return
	}
	mg.term = nil
	mg.cfg.Services.Dispatcher.Set(nil)
	ctx := context.Background()
	for i := len(t.loops) - 1; i >= 0; i-- {
		_ = t.loops[i].Stop(ctx)
	}
	_ = t.orch.Stop(ctx)
	_ = t.sched.Stop(ctx)
	_ = t.disp.Stop(ctx)
}
