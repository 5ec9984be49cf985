package raftstore_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

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

// Membership changes are made on the leader and return once applied. A new member joins as a
// learner (it gets the log but does not vote), and is promoted once CaughtUp says so.
func ExampleNode_AddLearner() {
	dir, err := os.MkdirTemp("", "raftstore-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()

	cfg := raftstore.DefaultConfig()
	cfg.ID, cfg.Dir, cfg.StateMachine = 1, dir, &counter{}
	cfg.OnMembershipChange = func(members []uint64) { fmt.Println("members:", members) }
	n, err := raftstore.New(cfg)
	if err != nil {
		panic(err)
	}
	if err := n.Start(ctx); err != nil {
		panic(err)
	}
	defer n.Stop(ctx)
	<-n.Ready()

	// The context is stored with the member: the lead keeps the member's address there.
	if err := n.AddLearner(ctx, 2, []byte("10.0.0.2:4242")); err != nil {
		panic(err)
	}
	ms, err := n.Members(ctx)
	if err != nil {
		panic(err)
	}
	for _, m := range ms {
		fmt.Printf("member %d voter=%v learner=%v context=%q\n", m.ID, m.Voter, m.Learner, m.Context)
	}
	fmt.Println(n.RemoveMember(ctx, 1))
	if err := n.RemoveMember(ctx, 2); err != nil {
		panic(err)
	}
	// Output:
	// members: [1]
	// members: [1 2]
	// member 1 voter=true learner=false context=""
	// member 2 voter=false learner=true context="10.0.0.2:4242"
	// raftstore: removing member 1 refused: it is the last voter, and a group without voters cannot elect a leader
	// members: [1]
}

// ReadBarrier makes a read of the StateMachine linearizable: once it returns, the member
// (leader or follower) has applied every write acknowledged before the call.
func ExampleNode_ReadBarrier() {
	dir, err := os.MkdirTemp("", "raftstore-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()

	sm := &counter{}
	cfg := raftstore.DefaultConfig()
	cfg.ID, cfg.Dir, cfg.StateMachine = 1, dir, sm
	n, err := raftstore.New(cfg)
	if err != nil {
		panic(err)
	}
	if err := n.Start(ctx); err != nil {
		panic(err)
	}
	defer n.Stop(ctx)
	if _, err := n.Propose(ctx, []byte("7")); err != nil {
		panic(err)
	}
	idx, err := n.ReadBarrier(ctx)
	if err != nil {
		panic(err)
	}
	// The StateMachine is only written by the raft loop; a host serialises its reads with
	// its own lock. Here nothing else writes.
	fmt.Println("applied up to the read index:", n.AppliedIndex() >= idx, "total:", sm.total)
	// Output:
	// applied up to the read index: true total: 7
}

// ForceNewCluster recovers from losing the quorum for good: the member restarts as the only
// voter of a new cluster that keeps its state, and grows again with AddLearner.
func ExampleConfig_forceNewCluster() {
	dir, err := os.MkdirTemp("", "raftstore-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()

	start := func(force bool) (*raftstore.Node, *counter) {
		sm := &counter{}
		cfg := raftstore.DefaultConfig()
		cfg.ID, cfg.Dir, cfg.StateMachine = 1, dir, sm
		cfg.ForceNewCluster = force
		n, err := raftstore.New(cfg)
		if err != nil {
			panic(err)
		}
		if err := n.Start(ctx); err != nil {
			panic(err)
		}
		<-n.Ready()
		return n, sm
	}
	n, _ := start(false)
	if _, err := n.Propose(ctx, []byte("42")); err != nil {
		panic(err)
	}
	// Member 2 is added but never comes: with two voters, 1 alone has no quorum.
	if err := n.AddLearner(ctx, 2, nil); err != nil {
		panic(err)
	}
	if err := n.PromoteLearner(ctx, 2); err != nil {
		panic(err)
	}
	if err := n.Stop(ctx); err != nil {
		panic(err)
	}

	n, sm := start(true)
	defer n.Stop(ctx)
	ms, err := n.Members(ctx)
	if err != nil {
		panic(err)
	}
	fmt.Println("members:", len(ms), "voter:", ms[0].ID, "total:", sm.total)
	// Output:
	// members: 1 voter: 1 total: 42
}

// kv is a StateMachine whose state is an immutable map, replaced (copied) on every write, so
// CaptureSnapshot only keeps a reference; encoding happens off the raft loop.
type kv struct {
	mu    sync.Mutex
	state map[string]string // never modified once published; Apply publishes a new map
}

func (s *kv) Apply(_ uint64, data []byte) any {
	k, v, _ := strings.Cut(string(data), "=")
	s.mu.Lock()
	defer s.mu.Unlock()
	next := maps.Clone(s.state)
	if next == nil {
		next = map[string]string{}
	}
	next[k] = v
	s.state = next
	return nil
}

func (s *kv) Snapshot() ([]byte, error) { return s.CaptureSnapshot()() }

// CaptureSnapshot takes a reference to the current map: O(1) on the raft loop.
func (s *kv) CaptureSnapshot() func() ([]byte, error) {
	s.mu.Lock()
	state := s.state
	s.mu.Unlock()
	return func() ([]byte, error) { return json.Marshal(state) } // runs in the background
}

func (s *kv) Restore(_ uint64, data []byte) error {
	state := map[string]string{}
	if err := json.Unmarshal(data, &state); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.state = state
	return nil
}

var _ raftstore.SnapshotCapturer = (*kv)(nil)

// A StateMachine that implements SnapshotCapturer is snapshotted in the background: the raft
// loop goes on committing while a large state is encoded.
func ExampleSnapshotCapturer() {
	dir, err := os.MkdirTemp("", "raftstore-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()
	cfg := raftstore.DefaultConfig()
	cfg.ID, cfg.Dir, cfg.StateMachine = 1, dir, &kv{}
	cfg.SnapshotInterval = 100
	n, err := raftstore.New(cfg)
	if err != nil {
		panic(err)
	}
	if err := n.Start(ctx); err != nil {
		panic(err)
	}
	defer n.Stop(ctx)
	<-n.Ready()
	for i := range 250 {
		if _, err := n.Propose(ctx, fmt.Appendf(nil, "key%d=%d", i%10, i)); err != nil {
			panic(err)
		}
	}
	for n.Stats().Snapshots < 2 { // background snapshots land shortly after they are due
		time.Sleep(time.Millisecond)
	}
	fmt.Println("snapshots taken:", n.Stats().Snapshots >= 2)
	// Output:
	// snapshots taken: true
}
