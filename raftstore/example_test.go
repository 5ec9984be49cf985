package raftstore_test

import (
	"context"
	"fmt"
	"os"
	"strconv"

	"github.com/shoalhq/shoal/raftstore"
)

// counter is a StateMachine that adds numbers.
type counter struct{ total int }

func (c *counter) Apply(_ uint64, data []byte) any {
	v, _ := strconv.Atoi(string(data))
	c.total += v
	return c.total
}

func (c *counter) Snapshot() ([]byte, error) { return []byte(strconv.Itoa(c.total)), nil }

func (c *counter) Restore(_ uint64, data []byte) error {
	v, err := strconv.Atoi(string(data))
	c.total = v
	return err
}

func Example() {
	dir, err := os.MkdirTemp("", "raftstore-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()

	run := func(values ...string) {
		cfg := raftstore.DefaultConfig()
		cfg.ID = 1
		cfg.Dir = dir
		sm := &counter{}
		cfg.StateMachine = sm
		n, err := raftstore.New(cfg)
		if err != nil {
			panic(err)
		}
		if err := n.Start(ctx); err != nil {
			panic(err)
		}
		defer n.Stop(ctx)
		<-n.Ready()
		fmt.Println("after replay:", sm.total)
		for _, v := range values {
			res, err := n.Propose(ctx, []byte(v))
			if err != nil {
				panic(err)
			}
			fmt.Println("total:", res)
		}
	}
	run("2", "3")
	run("10") // a restart replays the log: the total survives
	// Output:
	// after replay: 0
	// total: 2
	// total: 5
	// after replay: 5
	// total: 15
}

func ExampleNode_LeadershipChanges() {
	dir, err := os.MkdirTemp("", "raftstore-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	cfg := raftstore.DefaultConfig()
	cfg.ID, cfg.Dir, cfg.StateMachine = 1, dir, &counter{}
	n, err := raftstore.New(cfg)
	if err != nil {
		panic(err)
	}
	changes, cancel := n.LeadershipChanges()
	defer cancel()
	if err := n.Start(context.Background()); err != nil {
		panic(err)
	}
	fmt.Println("leader:", <-changes)
	if err := n.Stop(context.Background()); err != nil {
		panic(err)
	}
	_, open := <-changes
	fmt.Println("channel open after Stop:", open)
	// Output:
	// leader: true
	// channel open after Stop: false
}

func ExampleNew() {
	cfg := raftstore.DefaultConfig()
	cfg.Dir = "/var/lib/shoal/raft"
	_, err := raftstore.New(cfg)
	fmt.Println(err)
	// Output:
	// raftstore: invalid config: ID must be nonzero
	// raftstore: invalid config: StateMachine must be set
}
