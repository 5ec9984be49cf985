package raftstore

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// Start opens (or creates) the database under Config.Dir, restores the latest snapshot into the
// StateMachine, bootstraps a new cluster if the database is new, and starts the raft loop, which
// replays committed entries after the snapshot. It returns once the loop runs; wait on Ready for
// replay and leader election. Start may be called once; ctx bounds opening only.
func (n *Node) Start(ctx context.Context) (err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.started {
		return errors.New("raftstore: Start called twice")
	}
	if n.stopping {
		return ErrStopped
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	n.started = true
	defer func() {
		if err != nil {
			// Leave the node stopped so later calls see ErrStopped rather than hang.
			n.stopping = true
			n.err = err
			close(n.stopc)
			n.closeSubs()
			close(n.donec)
		}
	}()
	var base [8]byte
	if _, err := rand.Read(base[:]); err != nil {
		return fmt.Errorf("raftstore: request ID seed: %w", err)
	}
	// Request IDs start at a random point so that entries proposed by an earlier incarnation of
	// this member (still in the log) do not match this incarnation's waiters.
	n.reqSeq.Store(binary.BigEndian.Uint64(base[:]))

	if n.cfg.ForceNewCluster {
		// Checked before opening, which would create the file.
		path := filepath.Join(n.cfg.Dir, DBFileName)
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("raftstore: invalid config: ForceNewCluster needs an existing database, and %s cannot be used: %w", path, err)
		}
	}
	disk, st, err := openDisk(n.cfg.Dir, n.cfg.ID, n.cfg.UnsafeNoFsync, n.cfg.Encryptor)
	if err != nil {
		return err
	}
	disk.committed = func(synced bool) {
		n.ctr.dbCommits.Add(1)
		if synced {
			n.ctr.fsyncs.Add(1)
		}
	}
	n.disk = disk
	if n.cfg.ForceNewCluster {
		if st.fresh {
			_ = disk.close()
			return fmt.Errorf("raftstore: invalid config: ForceNewCluster needs an existing database, and %s holds no raft state yet", disk.path)
		}
		changed, err := disk.forceNewCluster(n.cfg.ID, st)
		if err != nil {
			_ = disk.close()
			return err
		}
		if changed {
			n.logger.Warn("forced a new one-member cluster from the existing state", "path", disk.path,
				"commit", st.hard.GetCommit())
		}
	}
	if err := n.restore(ctx, st); err != nil {
		_ = disk.close()
		return err
	}
	m, err := newMetrics(n, n.cfg.Registerer)
	if err != nil {
		_ = disk.close()
		return err
	}
	n.metrics = m
	n.logger.Info("raft log opened", "path", disk.path, "new", st.fresh, "snapshot_index", n.snapIndex,
		"commit", n.startCommit, "entries", len(st.entries))
	n.startedAt = n.cfg.Clock.Now()
	go n.run()
	return nil
}

// restore builds the in-memory raft state from what was read from disk.
func (n *Node) restore(ctx context.Context, st *loadedState) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("raftstore: %s: %w: restoring raft state: %v", n.disk.path, ErrCorrupt, r)
		}
	}()
	n.ms = raft.NewMemoryStorage()
	n.confState = &pb.ConfState{}
	n.memberCtx = st.members
	n.lastHeard = map[uint64]uint64{}
	n.readPending = map[string]*readRound{}
	if st.snapshot != nil {
		if err := n.ms.ApplySnapshot(st.snapshot); err != nil {
			return fmt.Errorf("raftstore: %s: %w: snapshot: %w", n.disk.path, ErrCorrupt, err)
		}
		md := st.snapshot.GetMetadata()
		if err := n.cfg.StateMachine.Restore(md.GetIndex(), st.snapshot.GetData()); err != nil {
			return fmt.Errorf("raftstore: restoring snapshot at index %d into StateMachine: %w", md.GetIndex(), err)
		}
		n.snapIndex, n.appliedIdx = md.GetIndex(), md.GetIndex()
		n.applied.Store(n.appliedIdx)
		n.confState = proto.Clone(md.GetConfState()).(*pb.ConfState)
	}
	if st.hard != nil {
		if err := n.ms.SetHardState(st.hard); err != nil {
			return err
		}
	}
	if err := n.ms.Append(st.entries); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	n.rn, err = raft.NewRawNode(&raft.Config{
		ID:              n.cfg.ID,
		ElectionTick:    n.cfg.ElectionTick,
		HeartbeatTick:   n.cfg.HeartbeatTick,
		Storage:         raftStorage{MemoryStorage: n.ms, n: n},
		Applied:         n.appliedIdx,
		MaxSizePerMsg:   n.cfg.MaxSizePerMsg,
		MaxInflightMsgs: n.cfg.MaxInflightMsgs,
		// A leader that cannot hear from a quorum steps down, so a partitioned leader stops
		// accepting writes that can never commit.
		CheckQuorum: true,
		// A member rejoining after a partition cannot disrupt the cluster with a higher term.
		PreVote: true,
		// Forwarding is done by Propose through Config.Forwarder, which returns the leader's
		// Apply result; raft's own forwarding would lose it, so followers refuse proposals.
		DisableProposalForwarding: true,
		StepDownOnRemoval:         true,
		Logger:                    raftLogger{l: n.logger},
	})
	if err != nil {
		return fmt.Errorf("raftstore: creating raft node: %w", err)
	}
	n.startCommit = st.hard.GetCommit()
	if st.fresh && !n.cfg.Join {
		peers := n.cfg.Peers
		if len(peers) == 0 {
			peers = []uint64{n.cfg.ID}
		}
		rp := make([]raft.Peer, len(peers))
		for i, id := range peers {
			rp[i] = raft.Peer{ID: id}
		}
		if err := n.rn.Bootstrap(rp); err != nil {
			return fmt.Errorf("raftstore: bootstrapping cluster: %w", err)
		}
		n.startCommit = uint64(len(rp))
		st.conf = &pb.ConfState{Voters: slices.Clone(peers)}
	}
	if n.cfg.Join && len(memberSet(n.confState)) == 0 && len(memberSet(st.conf)) == 0 {
		n.catchUp = true
	}
	n.startConf = st.conf
	return nil
}

// waitReady returns nil once Ready is closed, or ErrStopped or ctx.Err().
func (n *Node) waitReady(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err // never act under a context that is already done
	}
	if !n.running() {
		return ErrStopped
	}
	select {
	case <-n.readyc:
		return nil
	case <-n.donec:
		return ErrStopped
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (n *Node) running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.started && !n.stopping
}

// Stop stops the raft loop and closes the database. It is idempotent and safe to call before
// Start (the node then never starts). On the leader of a group with other voters, Stop first
// hands leadership to the most up-to-date reachable voter, so the group does not wait an
// election timeout for a new leader; that is best effort and takes at most two election
// timeouts (or until ctx ends). Stop then waits for the loop to exit, bounded by ctx; if ctx
// ends first (a StateMachine call is stuck), Stop returns ctx.Err() and the loop closes the
// database when that call returns. A background snapshot encoder (SnapshotCapturer) that is
// running is waited for the same way: Done is closed only after it returned, and its result is
// dropped. Pending Propose calls return ErrStopped.
func (n *Node) Stop(ctx context.Context) error {
	n.mu.Lock()
	if !n.started {
		if !n.stopping {
			n.stopRequested = true
			n.stopping = true
			close(n.stopc)
			n.closeSubs()
			close(n.donec)
		}
		n.mu.Unlock()
		return nil
	}
	first := !n.stopRequested
	n.stopRequested = true
	n.mu.Unlock()
	if first && n.isLeader.Load() {
		tctx, cancel := context.WithTimeout(ctx, 2*n.electionTimeout())
		err := n.transferLeadership(tctx, raft.None, true)
		cancel()
		if err != nil {
			n.logger.Debug("no leadership transfer before stopping", "err", err)
		}
	}
	n.mu.Lock()
	if !n.stopping {
		n.stopping = true
		close(n.stopc)
	}
	n.mu.Unlock()
	select {
	case <-n.donec:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// finish runs on the loop goroutine as it exits.
func (n *Node) finish(loopErr error) {
	if loopErr != nil {
		n.logger.Error("raft loop stopped", "err", loopErr)
	}
	n.isLeader.Store(false)
	n.leader.Store(raft.None)
	n.failWaiters(ErrStopped)
	n.failReads(ErrStopped)
	n.metrics.unregister()
	if err := n.disk.close(); err != nil && loopErr == nil {
		loopErr = err
	}
	if n.snapRunning {
		n.logger.Info("waiting for the background snapshot encoder to return")
	}
	// An encoder still running is waited for (Stop returns only after it): no goroutine
	// outlives the node. Its result is dropped.
	n.snapWG.Wait()
	n.mu.Lock()
	n.stopping = true
	if n.err == nil {
		n.err = loopErr
	}
	n.mu.Unlock()
	n.closeSubs()
	close(n.donec)
}
