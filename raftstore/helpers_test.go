package raftstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	pb "go.etcd.io/raft/v3/raftpb"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// listSM is an append-only list: the simplest state machine whose whole history is checkable.
type listSM struct {
	mu       sync.Mutex
	items    [][]byte
	lastIdx  uint64
	restores []uint64
	applies  int
	err      error // first ordering violation seen
	// block, if set, is waited on by Apply (to hold the apply loop); Apply sends on entered
	// (if set) first.
	block   chan struct{}
	entered chan struct{}
}

var _ StateMachine = (*listSM)(nil)

func (s *listSM) Apply(idx uint64, data []byte) any {
	s.mu.Lock()
	block, entered := s.block, s.entered
	s.mu.Unlock()
	if block != nil {
		if entered != nil {
			entered <- struct{}{}
		}
		<-block
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if idx <= s.lastIdx && s.err == nil {
		s.err = fmt.Errorf("Apply(%d) after index %d", idx, s.lastIdx)
	}
	s.lastIdx = idx
	s.applies++
	s.items = append(s.items, append([]byte(nil), data...))
	return len(s.items)
}

func (s *listSM) Snapshot() ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return encodeList(s.lastIdx, s.items), nil
}

// encodeList is listSM's snapshot format: the last applied index, then the items.
func encodeList(lastIdx uint64, items [][]byte) []byte {
	var out []byte
	out = binary.BigEndian.AppendUint64(out, lastIdx)
	for _, it := range items {
		out = binary.AppendUvarint(out, uint64(len(it)))
		out = append(out, it...)
	}
	return out
}

func (s *listSM) Restore(idx uint64, data []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(data) < 8 {
		return errors.New("short snapshot")
	}
	if got := binary.BigEndian.Uint64(data); got != idx {
		return fmt.Errorf("snapshot taken at %d restored as %d", got, idx)
	}
	data = data[8:]
	var items [][]byte
	for len(data) > 0 {
		n, k := binary.Uvarint(data)
		if k <= 0 || uint64(len(data)-k) < n {
			return errors.New("bad snapshot")
		}
		items = append(items, append([]byte(nil), data[k:k+int(n)]...))
		data = data[k+int(n):]
	}
	s.items, s.lastIdx = items, idx
	s.restores = append(s.restores, idx)
	return nil
}

func (s *listSM) hash() [32]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := sha256.New()
	for _, it := range s.items {
		h.Write(binary.AppendUvarint(nil, uint64(len(it))))
		h.Write(it)
	}
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}

func (s *listSM) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.items)
}

func (s *listSM) checkErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func testConfig(t testing.TB, dir string, sm StateMachine) Config {
	t.Helper()
	cfg := DefaultConfig()
	cfg.ID = 1
	cfg.Dir = dir
	cfg.StateMachine = sm
	// Short ticks keep multi-member elections quick; single-member readiness does not depend on
	// them (the sole voter campaigns at once).
	cfg.TickInterval = 10 * time.Millisecond
	if raceEnabled {
		cfg.TickInterval = 25 * time.Millisecond
	}
	return cfg
}

// waitFor bounds every wait in these tests. It is generous: CI runs them
// under the race detector next to other packages on 2 cores, where a
// learner's catch-up by snapshot once took longer than 20 s.
const waitFor = 60 * time.Second

// startNode creates and starts a node and waits for Ready.
func startNode(t testing.TB, cfg Config) *Node {
	t.Helper()
	n, err := New(cfg)
	require.NoError(t, err)
	require.NoError(t, n.Start(context.Background()))
	t.Cleanup(func() { stopNode(t, n) })
	select {
	case <-n.Ready():
	case <-n.Done():
		t.Fatalf("node stopped before Ready: %v", n.Err())
	case <-time.After(waitFor):
		t.Fatal("node not ready")
	}
	return n
}

func stopNode(t testing.TB, n *Node) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, n.Stop(ctx))
	require.NoError(t, n.Err())
}

func proposeN(t testing.TB, n *Node, count int, payload func(i int) []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	for i := range count {
		_, err := n.Propose(ctx, payload(i))
		require.NoError(t, err)
	}
}

// proposeConcurrently runs workers goroutines that together propose count entries.
func proposeConcurrently(t testing.TB, n *Node, workers, count int, payload func(i int) []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*waitFor)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := w; i < count; i += workers {
				if _, err := n.Propose(ctx, payload(i)); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
}

func payloadOf(i int) []byte { return fmt.Appendf(nil, "entry-%06d", i) }

type pbMessage = pb.Message

// chainSM keeps a fixed-size state (a hash chain over every applied entry and a count), so its
// snapshots do not grow and memory stays flat in long runs and benchmarks.
type chainSM struct {
	mu       sync.Mutex
	sum      [32]byte
	count    uint64
	restores int
}

var _ StateMachine = (*chainSM)(nil)

func (s *chainSM) Apply(idx uint64, data []byte) any {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := sha256.New()
	h.Write(s.sum[:])
	h.Write(data)
	copy(s.sum[:], h.Sum(nil))
	s.count++
	if msg, ok := bytes.CutPrefix(data, []byte("fail:")); ok {
		return errors.New(string(msg)) // a deterministic Apply error, for forwarding tests
	}
	return s.count
}

func (s *chainSM) Snapshot() ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return binary.BigEndian.AppendUint64(append([]byte(nil), s.sum[:]...), s.count), nil
}

func (s *chainSM) Restore(_ uint64, data []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(data) != 40 {
		return errors.New("bad snapshot")
	}
	copy(s.sum[:], data)
	s.count = binary.BigEndian.Uint64(data[32:])
	s.restores++
	return nil
}

func (s *chainSM) state() ([32]byte, uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sum, s.count
}

type pbConfState = pb.ConfState

const (
	pbMsgHeartbeatResp = pb.MsgHeartbeatResp
	pbMsgHup           = pb.MsgHup
)

func unmarshal(b []byte, m proto.Message) error { return proto.Unmarshal(b, m) }
