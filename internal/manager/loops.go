package manager

import (
	"context"

	"github.com/shoalhq/shoal/internal/gossipkeys"
	"github.com/shoalhq/shoal/internal/membership"
	"github.com/shoalhq/shoal/internal/rootrotation"
	"github.com/shoalhq/shoal/internal/state"
)

// leaderLoops returns the leader-only loops of a new term: membership
// (learner promotion, leader marking), root CA rotation and gossip key
// rotation.
func (mg *Manager) leaderLoops() ([]component, error) {
	mcfg := membership.DefaultConfig()
	mcfg.NodeID = mg.cfg.NodeID
	mcfg.Interval = 10 * mg.cfg.Raft.TickInterval
	mcfg.Clock = mg.clock
	mcfg.Logger = mg.log
	mem, err := membership.New(mg.store, mg.raft, mcfg)
	if err != nil {
		return nil, err
	}
	rcfg := rootrotation.DefaultConfig()
	rcfg.Clock = mg.clock
	rcfg.Logger = mg.log
	rot, err := rootrotation.New(mg.store, rcfg)
	if err != nil {
		return nil, err
	}
	gcfg := gossipkeys.DefaultRotatorConfig()
	gcfg.ClusterID = mg.cfg.ClusterID
	gcfg.Grace = mg.cfg.KeyRotationGrace
	gcfg.Clock = mg.clock
	gcfg.Logger = mg.log
	keys, err := gossipkeys.NewRotator(mg.store, gcfg)
	if err != nil {
		return nil, err
	}
	return []component{mem, rot, keys}, nil
}

// trustLoop follows the cluster object's trust bundle on every manager
// (Config.OnTrustBundle).
func (mg *Manager) trustLoop(ctx context.Context) {
	defer mg.bg.Done()
	w := mg.store.Watch(state.KindIs(state.KindCluster))
	defer func() { w.Cancel() }()
	for {
		var bundle []byte
		mg.store.ViewShared(func(tx state.ReadTx) {
			if c := tx.GetCluster(mg.cfg.ClusterID); c != nil {
				bundle = c.GetRootCa().TrustBundle()
			}
		})
		mg.cfg.OnTrustBundle(bundle)
		select {
		case <-ctx.Done():
			return
		case _, ok := <-w.C:
			if !ok {
				if ctx.Err() != nil {
					return
				}
				w = mg.store.Watch(state.KindIs(state.KindCluster))
			}
		}
	}
}
