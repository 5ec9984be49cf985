package raftstore

import (
	"errors"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Stats are counters since Start, read with Node.Stats. They exist so callers (and tests) can see
// batching at work: Proposals over DBCommits is the average number of writes sharing one fsync.
type Stats struct {
	// Proposals is the number of proposals handed to raft by this node.
	Proposals uint64
	// Readies is the number of raft Ready batches processed.
	Readies uint64
	// DBCommits is the number of write transactions committed to the database.
	DBCommits uint64
	// Fsyncs is the number of those transactions that were fsynced: all but the ones that only
	// advance the commit index, and none with Config.UnsafeNoFsync.
	Fsyncs uint64
	// AppliedEntries is the number of committed entries applied (including empty and
	// configuration entries), counting replay at Start.
	AppliedEntries uint64
	// Snapshots is the number of snapshots taken locally: created and durably saved.
	Snapshots uint64
	// SnapshotFailures is the number of snapshot encodings (SnapshotCapturer encoders) that
	// returned an error; each is retried later.
	SnapshotFailures uint64
	// SnapshotsDiscarded is the number of background snapshots thrown away when they were
	// ready because a newer snapshot (received from the leader) had been applied meanwhile.
	SnapshotsDiscarded uint64
	// SnapshotEncodeTime is the total time spent encoding snapshots: in StateMachine.Snapshot
	// on the raft loop, or in SnapshotCapturer encoders in the background.
	SnapshotEncodeTime time.Duration
	// Forwarded is the number of Propose calls this member forwarded to the leader.
	Forwarded uint64
	// ReadBarriers is the number of ReadBarrier calls; ReadRounds the number of raft ReadIndex
	// rounds they needed (concurrent calls share a round), retries not counted.
	ReadBarriers uint64
	ReadRounds   uint64
}

type counters struct {
	proposals, readies, dbCommits, fsyncs, applied, snapshots, forwarded atomic.Uint64
	readBarriers, readRounds                                             atomic.Uint64
	snapFailures, snapDiscarded, snapEncodeNanos                         atomic.Uint64
}

func (c *counters) stats() Stats {
	return Stats{
		Proposals:          c.proposals.Load(),
		Readies:            c.readies.Load(),
		DBCommits:          c.dbCommits.Load(),
		Fsyncs:             c.fsyncs.Load(),
		AppliedEntries:     c.applied.Load(),
		Snapshots:          c.snapshots.Load(),
		SnapshotFailures:   c.snapFailures.Load(),
		SnapshotsDiscarded: c.snapDiscarded.Load(),
		SnapshotEncodeTime: time.Duration(c.snapEncodeNanos.Load()),
		Forwarded:          c.forwarded.Load(),
		ReadBarriers:       c.readBarriers.Load(),
		ReadRounds:         c.readRounds.Load(),
	}
}

// metrics exposes the node's counters and state to Prometheus. Collection reads atomics, so it
// never waits for the raft loop.
type metrics struct {
	collectors []prometheus.Collector
	reg        prometheus.Registerer
}

func newMetrics(n *Node, reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{reg: reg}
	if reg == nil {
		return m, nil
	}
	labels := prometheus.Labels{"raft_id": strconv.FormatUint(n.cfg.ID, 10)}
	counter := func(name, help string, v *atomic.Uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "shoal", Subsystem: "raft", Name: name, Help: help, ConstLabels: labels,
		}, func() float64 { return float64(v.Load()) })
	}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "shoal", Subsystem: "raft", Name: name, Help: help, ConstLabels: labels,
		}, f)
	}
	m.collectors = []prometheus.Collector{
		counter("proposals_total", "Proposals handed to raft by this member.", &n.ctr.proposals),
		counter("db_commits_total", "Write transactions committed to the raft database.", &n.ctr.dbCommits),
		counter("fsyncs_total", "Write transactions to the raft database that were fsynced.", &n.ctr.fsyncs),
		counter("readies_total", "Raft Ready batches processed.", &n.ctr.readies),
		counter("applied_entries_total", "Committed entries applied.", &n.ctr.applied),
		counter("snapshots_total", "Snapshots taken by this member.", &n.ctr.snapshots),
		counter("snapshot_failures_total", "Snapshot encodings that failed (retried later).", &n.ctr.snapFailures),
		counter("snapshots_discarded_total", "Background snapshots discarded because a newer received snapshot was applied.", &n.ctr.snapDiscarded),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "shoal", Subsystem: "raft", Name: "snapshot_encode_seconds_total", ConstLabels: labels,
			Help: "Time spent encoding snapshots (on the raft loop or in the background).",
		}, func() float64 { return time.Duration(n.ctr.snapEncodeNanos.Load()).Seconds() }),
		counter("read_barriers_total", "ReadBarrier calls (linearizable reads) on this member.", &n.ctr.readBarriers),
		counter("read_rounds_total", "Raft ReadIndex rounds started for ReadBarrier calls.", &n.ctr.readRounds),
		gauge("applied_index", "Index of the last applied log entry.", func() float64 { return float64(n.applied.Load()) }),
		gauge("is_leader", "1 if this member is the raft leader, else 0.", func() float64 {
			if n.IsLeader() {
				return 1
			}
			return 0
		}),
	}
	for i, c := range m.collectors {
		if err := reg.Register(c); err != nil {
			for _, done := range m.collectors[:i] {
				reg.Unregister(done)
			}
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, errors.New("raftstore: Registerer already has metrics for this raft_id; is another node with the same ID running?")
			}
			return nil, err
		}
	}
	return m, nil
}

func (m *metrics) unregister() {
	if m == nil || m.reg == nil {
		return
	}
	for _, c := range m.collectors {
		m.reg.Unregister(c)
	}
}
