package node

import (
	"context"
	"net"
	"path/filepath"

	"github.com/shoalhq/shoal/dispatch"
	"github.com/shoalhq/shoal/gossip"
	"github.com/shoalhq/shoal/internal/mesh"
	"github.com/shoalhq/shoal/runtime/process"
)

// This file wires the node's mesh part and agent.

// startMesh starts the node's routing-mesh part.
func (n *Node) startMesh(ctx context.Context, nodeID string) error {
	mc := n.cfg.Mesh
	if mc.Disabled {
		return nil
	}
	c := mc.Mesh
	c.NodeID = nodeID
	c.NodeAddr = n.Addr()
	if _, lp, err := net.SplitHostPort(n.cfg.ListenAddr); err == nil && lp == "0" && n.cfg.Listener == nil {
		c.AnyPort = true
	}
	c.Source = func() ([][]byte, []string, bool) {
		mg := n.mgr.Load()
		if mg == nil {
			return nil, nil, false
		}
		keys, peers := mg.MeshState()
		return keys, peers, true
	}
	c.Clock = n.clock
	c.Logger = n.log
	c.Metrics = n.cfg.Metrics
	m, err := mesh.Start(ctx, c)
	if err != nil {
		return err
	}
	n.mesh = m
	return nil
}

// MeshTable returns this node's view of the routing mesh's endpoint table
// (nil without a mesh).
func (n *Node) MeshTable() []gossip.Endpoint {
	if n.mesh == nil {
		return nil
	}
	return n.mesh.Table()
}

func (n *Node) startAgent(ctx context.Context) error {
	if n.Role() == Manager && n.cfg.DisableAgent {
		return nil
	}
	rt := n.cfg.Runtime
	if rt == nil {
		prt, err := process.New(process.Config{Dir: filepath.Join(n.cfg.StateDir, "tasks"), Logger: n.log, KeepLogs: true})
		if err != nil {
			return err
		}
		rt = prt
	}
	ident := n.Identity()
	acfg := dispatch.DefaultAgentConfig()
	acfg.NodeID = ident.NodeID
	acfg.Managers = n.managerAddrs
	acfg.OnSession = n.onSession
	acfg.Dial = n.cfg.Dial
	acfg.TransportCredentials = n.sec.ClientCreds()
	acfg.Runtime = rt
	acfg.LiveRestore = n.cfg.LiveRestore
	acfg.Description = n.description()
	acfg.Addr = n.Addr()
	acfg.Logger = n.log
	acfg.Clock = n.clock
	if m := n.mesh; m != nil {
		acfg.OnEndpoints = m.OnEndpoints
		acfg.DrainDelay = n.cfg.Mesh.DrainDelay
		acfg.ConfirmWithdrawal = m.ConfirmWithdrawal
		acfg.DrainTimeout = n.cfg.Mesh.DrainTimeout
	}
	a, err := dispatch.NewAgent(acfg)
	if err != nil {
		return err
	}
	if err := a.Start(ctx); err != nil {
		return err
	}
	n.agent = a
	return nil
}
