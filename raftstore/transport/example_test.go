package transport_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"

	"github.com/shoalhq/shoal/raftstore"
	"github.com/shoalhq/shoal/raftstore/transport"
)

// list is a StateMachine that records entries.
type list struct{ items []string }

func (l *list) Apply(_ uint64, data []byte) any { l.items = append(l.items, string(data)); return nil }
func (l *list) Snapshot() ([]byte, error)       { return nil, nil }
func (l *list) Restore(uint64, []byte) error    { l.items = nil; return nil }

// Example runs a two-member raft group on loopback: each member has a gRPC server serving its
// transport, and a raftstore node sending through it.
func Example() {
	ctx := context.Background()
	ids := []uint64{1, 2}
	trs, addrs := map[uint64]*transport.Transport{}, map[uint64]string{}
	for _, id := range ids {
		cfg := transport.DefaultConfig()
		cfg.ID = id
		cfg.Insecure = true // loopback, for the example; a node sets cfg.Credentials (mTLS)
		tr, err := transport.New(cfg)
		if err != nil {
			panic(err)
		}
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			panic(err)
		}
		srv := grpc.NewServer(grpc.MaxRecvMsgSize(transport.MaxMessageBytes))
		tr.Register(srv)
		go func() { _ = srv.Serve(lis) }()
		defer srv.Stop()
		trs[id], addrs[id] = tr, lis.Addr().String()
	}
	nodes, sms := map[uint64]*raftstore.Node{}, map[uint64]*list{}
	for _, id := range ids {
		tr := trs[id]
		for _, peer := range ids {
			if peer != id {
				if err := tr.AddPeer(peer, addrs[peer]); err != nil {
					panic(err)
				}
			}
		}
		if err := tr.Start(ctx); err != nil {
			panic(err)
		}
		defer func() { _ = tr.Stop(ctx) }()

		dir, err := os.MkdirTemp("", "transport-example")
		if err != nil {
			panic(err)
		}
		defer os.RemoveAll(dir)
		cfg := raftstore.DefaultConfig()
		cfg.ID, cfg.Dir, cfg.Peers, cfg.Transport = id, dir, ids, tr
		sms[id] = &list{}
		cfg.StateMachine = sms[id]
		cfg.TickInterval = 20 * time.Millisecond
		n, err := raftstore.New(cfg)
		if err != nil {
			panic(err)
		}
		tr.SetLocal(n)
		if err := n.Start(ctx); err != nil {
			panic(err)
		}
		defer func() { _ = n.Stop(ctx) }()
		nodes[id] = n
	}
	<-nodes[1].Ready()
	leader := nodes[nodes[1].Leader()]
	follower := ids[0]
	if follower == leader.ID() {
		follower = ids[1]
	}
	// A write on the leader, and one forwarded from the follower.
	if _, err := leader.Propose(ctx, []byte("from the leader")); err != nil {
		panic(err)
	}
	if err := trs[follower].Forward(ctx, leader.ID(), []byte("forwarded")); err != nil {
		panic(err)
	}
	for nodes[follower].AppliedIndex() < leader.AppliedIndex() {
		time.Sleep(10 * time.Millisecond)
	}
	for _, n := range nodes {
		_ = n.Stop(ctx) // before reading the StateMachines
	}
	fmt.Println(sms[follower].items)
	// Output: [from the leader forwarded]
}
