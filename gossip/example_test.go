package gossip_test

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/shoalhq/shoal/gossip"
	"github.com/shoalhq/shoal/gossip/gossiptest"
)

// Two members on an in-memory network: one publishes an endpoint, the
// other sees it in its table.
func ExampleNew() {
	netw := gossiptest.NewMemNetwork(1)
	key := make([]byte, gossip.KeySize) // managers distribute a random key
	start := func(id string) (*gossip.Node, *gossiptest.MemTransport) {
		tr := netw.NewTransport()
		cfg := gossip.DefaultConfig()
		cfg.NodeID, cfg.Transport, cfg.Keys = id, tr, [][]byte{key}
		n, err := gossip.New(cfg)
		if err != nil {
			panic(err)
		}
		if err := n.Start(context.Background()); err != nil {
			panic(err)
		}
		return n, tr
	}
	a, aTr := start("worker-a")
	b, _ := start("worker-b")
	defer a.Stop(context.Background())
	defer b.Stop(context.Background())

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := b.Join(ctx, []string{aTr.Addr()}); err != nil {
		panic(err)
	}
	changed, stop := b.Watch()
	defer stop()
	a.SetLocal([]gossip.Endpoint{{
		Service: "web", Task: "web.1", Port: 80, Protocol: "tcp",
		Addr: netip.MustParseAddrPort("10.0.0.1:31000"),
	}})
	for len(b.Table()) == 0 {
		<-changed
	}
	fmt.Println(b.Table()[0])
	fmt.Println(b.Members())
	// Output:
	// web/web.1@worker-a 80/tcp -> 10.0.0.1:31000
	// [worker-a worker-b]
}

// A manager moves every member from key A to key B with SetKeys in three
// phases, each done on every member before the next: install B, use B,
// retire A. Members in adjacent phases understand each other throughout.
func ExampleNode_SetKeys() {
	netw := gossiptest.NewMemNetwork(1)
	keyA := make([]byte, gossip.KeySize)
	keyB := make([]byte, gossip.KeySize)
	keyB[0] = 1 // managers use random keys
	var members []*gossip.Node
	var addrs []string
	for _, id := range []string{"m1", "w1"} {
		tr := netw.NewTransport()
		cfg := gossip.DefaultConfig()
		cfg.NodeID, cfg.Transport, cfg.Keys = id, tr, [][]byte{keyA}
		n, err := gossip.New(cfg)
		if err != nil {
			panic(err)
		}
		if err := n.Start(context.Background()); err != nil {
			panic(err)
		}
		defer n.Stop(context.Background())
		members = append(members, n)
		addrs = append(addrs, tr.Addr())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, n := range members[1:] {
		if _, err := n.Join(ctx, addrs[:1]); err != nil {
			panic(err)
		}
	}

	for _, phase := range [][][]byte{{keyA, keyB}, {keyB, keyA}, {keyB}} {
		for _, n := range members {
			if err := n.SetKeys(phase); err != nil {
				panic(err)
			}
		}
	}
	fmt.Println(len(members[1].Keys()), members[1].Keys()[0][0])
	fmt.Println(members[0].Members())
	// Output:
	// 1 1
	// [m1 w1]
}

// A worker drains a task: it withdraws the task's endpoint, and Confirm
// returns once every other member's table no longer lists it, so no
// balancer sends the task new connections and it can be stopped.
func ExampleNode_Confirm() {
	netw := gossiptest.NewMemNetwork(1)
	key := make([]byte, gossip.KeySize) // managers distribute a random key
	var members []*gossip.Node
	var addrs []string
	for _, id := range []string{"worker-a", "worker-b"} {
		tr := netw.NewTransport()
		cfg := gossip.DefaultConfig()
		cfg.NodeID, cfg.Transport, cfg.Keys = id, tr, [][]byte{key}
		n, err := gossip.New(cfg)
		if err != nil {
			panic(err)
		}
		if err := n.Start(context.Background()); err != nil {
			panic(err)
		}
		defer n.Stop(context.Background())
		members = append(members, n)
		addrs = append(addrs, tr.Addr())
	}
	a, b := members[0], members[1]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := b.Join(ctx, addrs[:1]); err != nil {
		panic(err)
	}

	task := gossip.Endpoint{
		Service: "web", Task: "web.1", Port: 80, Protocol: "tcp",
		Addr: netip.MustParseAddrPort("10.0.0.2:31000"),
	}
	b.SetLocal([]gossip.Endpoint{task})
	if err := b.Confirm(ctx); err != nil {
		panic(err)
	}
	fmt.Println(a.Table()) // no waiting: a's table already holds it

	b.SetLocal(nil) // drain
	if err := b.Confirm(ctx); err != nil {
		panic(err) // ctx ended: some member may still list the task
	}
	fmt.Println(a.Table())
	// Output:
	// [web/web.1@worker-b 80/tcp -> 10.0.0.2:31000]
	// []
}
