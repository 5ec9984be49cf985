package raftstore

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
)

func TestConfigValidation(t *testing.T) {
	valid := func() Config {
		c := DefaultConfig()
		c.ID, c.Dir, c.StateMachine = 1, t.TempDir(), &listSM{}
		return c
	}
	_, err := New(valid())
	require.NoError(t, err)

	cases := []struct {
		field string
		mut   func(*Config)
	}{
		{"ID", func(c *Config) { c.ID = 0 }},
		{"ID", func(c *Config) { c.ID = ^uint64(0) }},
		{"Dir", func(c *Config) { c.Dir = "" }},
		{"StateMachine", func(c *Config) { c.StateMachine = nil }},
		{"Peers", func(c *Config) { c.Peers = []uint64{2, 3}; c.Transport = nopTransport{} }},
		{"Peers", func(c *Config) { c.Peers = []uint64{1, 1} }},
		{"Transport", func(c *Config) { c.Peers = []uint64{1, 2} }},
		{"Transport", func(c *Config) { c.Join = true }},
		{"TickInterval", func(c *Config) { c.TickInterval = 0 }},
		{"HeartbeatTick", func(c *Config) { c.HeartbeatTick = 0 }},
		{"ElectionTick", func(c *Config) { c.ElectionTick = c.HeartbeatTick }},
		{"SnapshotInterval", func(c *Config) { c.SnapshotInterval = 0 }},
		{"MaxSizePerMsg", func(c *Config) { c.MaxSizePerMsg = 0 }},
		{"MaxInflightMsgs", func(c *Config) { c.MaxInflightMsgs = 0 }},
		{"MaxProposalBatch", func(c *Config) { c.MaxProposalBatch = -1 }},
		{"MaxEntryBytes", func(c *Config) { c.MaxEntryBytes = 0 }},
	}
	for _, tc := range cases {
		t.Run(tc.field, func(t *testing.T) {
			c := valid()
			tc.mut(&c)
			before := c
			_, err := New(c)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.field+" ")
			assert.Equal(t, before.ID, c.ID, "New must not mutate the caller's Config")
			_, statErr := os.Stat(filepath.Join(c.Dir, DBFileName))
			assert.True(t, c.Dir == "" || os.IsNotExist(statErr), "New must not create files")
		})
	}
}

func TestDefaultConfigIsValidOnceRequiredFieldsSet(t *testing.T) {
	c := DefaultConfig()
	_, err := New(c)
	require.Error(t, err)
	for _, f := range []string{"ID", "Dir", "StateMachine"} {
		assert.Contains(t, err.Error(), f)
	}
	assert.NotContains(t, err.Error(), "TickInterval")
}

type nopTransport struct{}

func (nopTransport) Send([]*pbMessage) {}

func TestSingleMemberProposeApply(t *testing.T) {
	sm := &listSM{}
	cfg := testConfig(t, t.TempDir(), sm)
	cfg.TickInterval = time.Hour // readiness must not depend on ticks
	n := startNode(t, cfg)

	assert.True(t, n.IsLeader())
	assert.Equal(t, uint64(1), n.Leader())

	ctx := context.Background()
	for i := 1; i <= 10; i++ {
		res, err := n.Propose(ctx, payloadOf(i))
		require.NoError(t, err)
		assert.Equal(t, i, res, "Propose returns the StateMachine's Apply result")
	}
	assert.Equal(t, 10, sm.len())
	assert.Equal(t, payloadOf(3), sm.items[2])
	// Index 1 is the bootstrap configuration entry, 2 the leader's empty entry.
	assert.Equal(t, uint64(12), n.AppliedIndex())
	require.NoError(t, sm.checkErr())

	ch, cancel := n.LeadershipChanges()
	select {
	case v := <-ch:
		assert.True(t, v, "a subscriber on the leader gets true at once")
	case <-time.After(waitFor):
		t.Fatal("no leadership value")
	}
	cancel()
	cancel()
	_, open := <-ch
	assert.False(t, open, "cancel closes the channel")
}

func TestRestartReplaysToSameState(t *testing.T) {
	dir := t.TempDir()
	sm := &listSM{}
	n := startNode(t, testConfig(t, dir, sm))
	proposeConcurrently(t, n, 8, 300, payloadOf)
	want, wantIdx := sm.hash(), n.AppliedIndex()
	stopNode(t, n)

	sm2 := &listSM{}
	n2 := startNode(t, testConfig(t, dir, sm2))
	assert.GreaterOrEqual(t, n2.AppliedIndex(), wantIdx, "Ready means everything committed before Start is applied")
	assert.Equal(t, want, sm2.hash())
	assert.Equal(t, 300, sm2.len())
	assert.Empty(t, sm2.restores, "no snapshot yet")
	require.NoError(t, sm2.checkErr())

	// Still writable, and the next restart sees the new entry too.
	res, err := n2.Propose(context.Background(), []byte("after restart"))
	require.NoError(t, err)
	assert.Equal(t, 301, res)
	want = sm2.hash()
	stopNode(t, n2)

	sm3 := &listSM{}
	startNode(t, testConfig(t, dir, sm3))
	assert.Equal(t, want, sm3.hash())
}

func TestSnapshotCompactionAndRestart(t *testing.T) {
	dir := t.TempDir()
	sm := &listSM{}
	cfg := testConfig(t, dir, sm)
	cfg.SnapshotInterval = 100
	cfg.SnapshotCatchUpEntries = 30
	cfg.UnsafeNoFsync = true
	n := startNode(t, cfg)
	proposeN(t, n, 1050, payloadOf)
	st := n.Stats()
	assert.GreaterOrEqual(t, st.Snapshots, uint64(10))
	want, applied := sm.hash(), n.AppliedIndex()
	stopNode(t, n)

	// On disk: one snapshot, and only the entries after the compaction point.
	first, last, count := diskEntries(t, dir)
	assert.LessOrEqual(t, count, int(cfg.SnapshotInterval+cfg.SnapshotCatchUpEntries))
	assert.Equal(t, applied, last)
	assert.Greater(t, first, uint64(900))

	sm2 := &listSM{}
	n2 := startNode(t, testConfig(t, dir, sm2))
	require.Len(t, sm2.restores, 1, "restart restores the snapshot")
	snapIdx := sm2.restores[0]
	assert.Greater(t, snapIdx, applied-cfg.SnapshotInterval)
	assert.Equal(t, int(applied-snapIdx), sm2.applies, "then applies only the entries after it")
	assert.Equal(t, want, sm2.hash())
	assert.Equal(t, 1050, sm2.len())
	require.NoError(t, sm2.checkErr())
	_, err := n2.Propose(context.Background(), []byte("x"))
	require.NoError(t, err)
}

func diskEntries(t *testing.T, dir string) (first, last uint64, count int) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, DBFileName), 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	require.NoError(t, err)
	defer db.Close()
	require.NoError(t, db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketEntries).Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			idx := decodeIndex(k)
			if count == 0 {
				first = idx
			}
			last = idx
			count++
		}
		return nil
	}))
	return first, last, count
}

func TestDBSizeBoundedUnderChurn(t *testing.T) {
	if testing.Short() {
		t.Skip("50k proposals")
	}
	dir := t.TempDir()
	sm := &chainSM{} // fixed-size state: the log, not the state, is what must not grow
	cfg := testConfig(t, dir, sm)
	cfg.SnapshotInterval = 1000
	cfg.SnapshotCatchUpEntries = 500
	cfg.UnsafeNoFsync = true // size, not durability, is under test
	n := startNode(t, cfg)
	proposeConcurrently(t, n, 32, 10_000, payloadOf)
	size10k := fileSize(t, n.Path())
	proposeConcurrently(t, n, 32, 40_000, payloadOf)
	size50k := fileSize(t, n.Path())
	sum, count := sm.state()
	require.Equal(t, uint64(50_000), count)
	stopNode(t, n)
	_, _, kept := diskEntries(t, dir)
	t.Logf("db size after 10k: %d bytes, after 50k: %d bytes, entries kept: %d", size10k, size50k, kept)
	assert.LessOrEqual(t, kept, 1500+1)
	// Uncompacted, 50k entries of ~30 bytes (plus bbolt's per-key overhead) need several MB;
	// compacted, the file stops growing once bbolt reuses the freed pages.
	assert.Less(t, size50k, int64(1<<20))
	assert.LessOrEqual(t, size50k, 2*size10k)

	sm2 := &chainSM{}
	startNode(t, testConfig(t, dir, sm2))
	sum2, count2 := sm2.state()
	assert.Equal(t, sum, sum2)
	assert.Equal(t, count, count2)
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	require.NoError(t, err)
	return fi.Size()
}

func TestProposalsShareFsyncs(t *testing.T) {
	sm := &listSM{}
	n := startNode(t, testConfig(t, t.TempDir(), sm)) // fsync on
	before := n.Stats()
	const proposers, each = 64, 20
	proposeConcurrently(t, n, proposers, proposers*each, payloadOf)
	after := n.Stats()
	proposals := after.Proposals - before.Proposals
	fsyncs := after.Fsyncs - before.Fsyncs
	commits := after.DBCommits - before.DBCommits
	t.Logf("%d proposals, %d db commits, %d fsyncs (%.1f proposals per fsync)", proposals, commits, fsyncs, float64(proposals)/float64(fsyncs))
	assert.Equal(t, uint64(proposers*each), proposals)
	assert.Less(t, fsyncs*4, proposals, "concurrent proposals must share fsyncs")
	assert.Less(t, commits*2, proposals, "and database transactions")
	assert.Equal(t, proposers*each, sm.len())
}

func TestStopIdempotentAndErrStopped(t *testing.T) {
	sm := &listSM{}
	n, err := New(testConfig(t, t.TempDir(), sm))
	require.NoError(t, err)

	_, err = n.Propose(context.Background(), []byte("x"))
	assert.ErrorIs(t, err, ErrStopped, "Propose before Start")

	require.NoError(t, n.Start(context.Background()))
	assert.Error(t, n.Start(context.Background()), "second Start")
	<-n.Ready()
	_, err = n.Propose(context.Background(), []byte("x"))
	require.NoError(t, err)

	ch, _ := n.LeadershipChanges()
	ctx := context.Background()
	require.NoError(t, n.Stop(ctx))
	require.NoError(t, n.Stop(ctx))
	require.NoError(t, n.Err())
	<-n.Done()
	for range ch { // closed on stop
	}

	_, err = n.Propose(ctx, []byte("y"))
	assert.ErrorIs(t, err, ErrStopped)
	assert.ErrorIs(t, n.Step(ctx, &pbMessage{}), ErrStopped)
	_, err = n.Status(ctx)
	assert.ErrorIs(t, err, ErrStopped)
	assert.False(t, n.IsLeader())

	// Stop before Start: the node never starts.
	n2, err := New(testConfig(t, t.TempDir(), &listSM{}))
	require.NoError(t, err)
	require.NoError(t, n2.Stop(ctx))
	assert.ErrorIs(t, n2.Start(ctx), ErrStopped)
}

func TestProposeContextCancel(t *testing.T) {
	sm := &listSM{}
	n := startNode(t, testConfig(t, t.TempDir(), sm))

	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := n.Propose(cancelled, []byte("x"))
	assert.ErrorIs(t, err, context.Canceled)

	// Hold the apply loop inside Apply so the next proposal cannot finish.
	release := make(chan struct{})
	sm.mu.Lock()
	sm.block = release
	sm.mu.Unlock()
	ctx, cancel2 := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := n.Propose(ctx, []byte("held"))
		errc <- err
	}()
	require.Eventually(t, func() bool { return n.Stats().Proposals >= 1 }, waitFor, time.Millisecond)
	cancel2()
	select {
	case err := <-errc:
		assert.ErrorIs(t, err, context.Canceled)
	case <-time.After(waitFor):
		t.Fatal("Propose did not return on cancel")
	}
	close(release)
	// As documented, the cancelled entry still commits and is applied.
	require.Eventually(t, func() bool { return sm.len() == 1 }, waitFor, time.Millisecond)
	sm.mu.Lock()
	sm.block = nil
	sm.mu.Unlock()
	res, err := n.Propose(context.Background(), []byte("next"))
	require.NoError(t, err)
	assert.Equal(t, 2, res)
}

func TestStopBoundedByContextWhileApplyIsStuck(t *testing.T) {
	sm := &listSM{}
	n, err := New(testConfig(t, t.TempDir(), sm))
	require.NoError(t, err)
	require.NoError(t, n.Start(context.Background()))
	<-n.Ready()
	release, entered := make(chan struct{}), make(chan struct{}, 1)
	sm.mu.Lock()
	sm.block, sm.entered = release, entered
	sm.mu.Unlock()
	errc := make(chan error, 1)
	go func() {
		_, err := n.Propose(context.Background(), []byte("stuck"))
		errc <- err
	}()
	<-entered // the loop is inside Apply
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	assert.ErrorIs(t, n.Stop(ctx), context.DeadlineExceeded)
	close(release)
	require.NoError(t, n.Stop(context.Background()))
	// The entry was applied before the loop saw Stop, or the proposer got ErrStopped.
	if err := <-errc; err != nil {
		assert.ErrorIs(t, err, ErrStopped)
	}
}

func TestCorruptDatabaseNamesFile(t *testing.T) {
	newDir := func(t *testing.T) string {
		dir := t.TempDir()
		n := startNode(t, testConfig(t, dir, &listSM{}))
		proposeN(t, n, 5, payloadOf)
		stopNode(t, n)
		return dir
	}
	startErr := func(t *testing.T, dir string, id uint64) error {
		cfg := testConfig(t, dir, &listSM{})
		cfg.ID = id
		n, err := New(cfg)
		require.NoError(t, err)
		err = n.Start(context.Background())
		require.Error(t, err)
		require.NoError(t, n.Stop(context.Background()))
		assert.Equal(t, err, n.Err(), "Err reports why the node stopped")
		assert.Contains(t, err.Error(), filepath.Join(dir, DBFileName))
		return err
	}

	t.Run("garbage header", func(t *testing.T) {
		dir := newDir(t)
		path := filepath.Join(dir, DBFileName)
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		require.NoError(t, err)
		garbage := make([]byte, 64<<10)
		for i := range garbage {
			garbage[i] = byte(i*7 + 3)
		}
		_, err = f.WriteAt(garbage, 0)
		require.NoError(t, err)
		require.NoError(t, f.Close())
		assert.ErrorIs(t, startErr(t, dir, 1), ErrCorrupt)
	})
	t.Run("not a database", func(t *testing.T) {
		dir := t.TempDir()
		require.NoError(t, os.WriteFile(filepath.Join(dir, DBFileName), []byte("hello, this is not bbolt"), 0o600))
		assert.ErrorIs(t, startErr(t, dir, 1), ErrCorrupt)
	})
	t.Run("someone else's bbolt file", func(t *testing.T) {
		dir := t.TempDir()
		db, err := bolt.Open(filepath.Join(dir, DBFileName), 0o600, nil)
		require.NoError(t, err)
		require.NoError(t, db.Update(func(tx *bolt.Tx) error {
			_, err := tx.CreateBucket([]byte("users"))
			return err
		}))
		require.NoError(t, db.Close())
		err = startErr(t, dir, 1)
		assert.ErrorIs(t, err, ErrCorrupt)
		assert.Contains(t, err.Error(), "not a raftstore database")
	})
	t.Run("future format version", func(t *testing.T) {
		dir := newDir(t)
		db, err := bolt.Open(filepath.Join(dir, DBFileName), 0o600, nil)
		require.NoError(t, err)
		require.NoError(t, db.Update(func(tx *bolt.Tx) error {
			return tx.Bucket(bucketMeta).Put(keyVersion, []byte{0, 0, 0, 9})
		}))
		require.NoError(t, db.Close())
		assert.Contains(t, startErr(t, dir, 1).Error(), "unsupported format version 9")
	})
	t.Run("damaged entry", func(t *testing.T) {
		dir := newDir(t)
		db, err := bolt.Open(filepath.Join(dir, DBFileName), 0o600, nil)
		require.NoError(t, err)
		require.NoError(t, db.Update(func(tx *bolt.Tx) error {
			return tx.Bucket(bucketEntries).Put(indexKey(3), []byte{0xff, 0xff, 0xff})
		}))
		require.NoError(t, db.Close())
		assert.ErrorIs(t, startErr(t, dir, 1), ErrCorrupt)
	})
	t.Run("wrong member ID", func(t *testing.T) {
		dir := newDir(t)
		assert.Contains(t, startErr(t, dir, 7).Error(), "belongs to member 1")
	})
}

func TestMetricsRegistered(t *testing.T) {
	reg := prometheus.NewRegistry()
	cfg := testConfig(t, t.TempDir(), &listSM{})
	cfg.Registerer = reg
	n := startNode(t, cfg)
	proposeN(t, n, 3, payloadOf)
	_, err := n.ReadBarrier(context.Background())
	require.NoError(t, err)
	values := gather(t, reg)
	assert.Len(t, values, 13)
	assert.Contains(t, values, "shoal_raft_snapshot_failures_total")
	assert.Contains(t, values, "shoal_raft_snapshots_discarded_total")
	assert.Equal(t, 1.0, values["shoal_raft_read_barriers_total"])
	assert.Equal(t, 1.0, values["shoal_raft_read_rounds_total"])
	assert.Equal(t, 3.0, values["shoal_raft_proposals_total"])
	assert.Equal(t, 1.0, values["shoal_raft_is_leader"])
	assert.Equal(t, float64(n.AppliedIndex()), values["shoal_raft_applied_index"])

	// A second node with the same ID on the same registry is refused, naming the problem.
	cfg2 := testConfig(t, t.TempDir(), &listSM{})
	cfg2.Registerer = reg
	n2, err := New(cfg2)
	require.NoError(t, err)
	err = n2.Start(context.Background())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "raft_id")
	require.NoError(t, n2.Stop(context.Background()))

	stopNode(t, n)
	assert.Empty(t, gather(t, reg), "Stop unregisters")
}

func gather(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	out := map[string]float64{}
	for _, mf := range mfs {
		m := mf.GetMetric()[0]
		assert.Equal(t, "raft_id", m.GetLabel()[0].GetName())
		if c := m.GetCounter(); c != nil {
			out[mf.GetName()] = c.GetValue()
		} else {
			out[mf.GetName()] = m.GetGauge().GetValue()
		}
	}
	return out
}

func TestRaftLoggerPanicsStopNodeNotProcess(t *testing.T) {
	l := raftLogger{l: discardLogger()}
	assert.PanicsWithValue(t, raftPanic("boom 1"), func() { l.Panicf("boom %d", 1) })
	assert.Panics(t, func() { l.Fatal("x") })
	assert.NotPanics(t, func() { l.Infof("x %d", 1); l.Warning("w"); l.Error("e") })
	assert.True(t, errors.Is(ErrCorrupt, ErrCorrupt))
}

func TestDatabaseCreatedButNeverWrittenBootstraps(t *testing.T) {
	dir := t.TempDir()
	ds, st, err := openDisk(dir, 1, true, nil) // as if the process died right after creating the file
	require.NoError(t, err)
	require.True(t, st.fresh)
	require.NoError(t, ds.close())

	sm := &listSM{}
	n := startNode(t, testConfig(t, dir, sm))
	res, err := n.Propose(context.Background(), []byte("x"))
	require.NoError(t, err)
	assert.Equal(t, 1, res)
}

func TestConfStatePersisted(t *testing.T) {
	dir := t.TempDir()
	n := startNode(t, testConfig(t, dir, &listSM{}))
	stopNode(t, n)
	db, err := bolt.Open(filepath.Join(dir, DBFileName), 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	require.NoError(t, err)
	defer db.Close()
	cs := &pbConfState{}
	require.NoError(t, db.View(func(tx *bolt.Tx) error {
		return unmarshal(tx.Bucket(bucketState).Get(keyConf), cs)
	}))
	assert.Equal(t, []uint64{1}, cs.GetVoters())
}

func TestStartWithDoneContextAndStrayMessages(t *testing.T) {
	n, err := New(testConfig(t, t.TempDir(), &listSM{}))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	assert.ErrorIs(t, n.Start(ctx), context.Canceled)
	require.NoError(t, n.Stop(context.Background()))

	n2 := startNode(t, testConfig(t, t.TempDir(), &listSM{}))
	// Messages from members that do not exist are dropped by raft; the node keeps working.
	require.NoError(t, n2.Step(context.Background(), &pbMessage{Type: pbMsgHeartbeatResp.Enum(), From: new(uint64(9)), To: new(uint64(1))}))
	require.NoError(t, n2.Step(context.Background(), &pbMessage{Type: pbMsgHup.Enum(), From: new(uint64(9)), To: new(uint64(1))}))
	assert.Error(t, n2.Step(context.Background(), nil))
	_, err = n2.Propose(context.Background(), []byte("still fine"))
	require.NoError(t, err)
	assert.True(t, n2.IsLeader())
}
