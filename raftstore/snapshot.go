package raftstore

import (
	"errors"
	"fmt"
	"time"

	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// snapResult is a background snapshot encoder's outcome for the state captured at index, with
// the configuration as of that index.
type snapResult struct {
	index     uint64
	conf      *pb.ConfState
	data      []byte
	err       error
	forMember bool
}

// maybeSnapshot snapshots the StateMachine every SnapshotInterval applied entries and compacts
// the log, keeping SnapshotCatchUpEntries entries before the snapshot.
//
// It also snapshots right after a member was added while the log is compacted: raft sends the
// latest snapshot to a member that needs one, and a member refuses a snapshot whose
// configuration does not include it, so the snapshot must postdate the addition.
//
// A StateMachine that is a SnapshotCapturer is snapshotted in the background (see
// startSnapshotIfDue); any other is encoded here, on the loop.
func (n *Node) maybeSnapshot() error {
	if n.capturer != nil {
		select {
		case r := <-n.snapc:
			if err := n.landSnapshot(r); err != nil {
				return err
			}
		default:
		}
		n.startSnapshotIfDue()
		return nil
	}
	due := n.appliedIdx-n.snapIndex >= n.cfg.SnapshotInterval
	if n.snapForNewMember && n.appliedIdx > n.snapIndex {
		due = true
	}
	if !due {
		return nil
	}
	n.snapForNewMember = false
	start := time.Now()
	data, err := n.cfg.StateMachine.Snapshot()
	n.ctr.snapEncodeNanos.Add(uint64(time.Since(start)))
	if err != nil {
		return fmt.Errorf("raftstore: StateMachine.Snapshot at index %d: %w", n.appliedIdx, err)
	}
	return n.saveSnapshot(n.appliedIdx, n.confState, data)
}

// startSnapshotIfDue starts a background snapshot of a SnapshotCapturer when one is due and
// none is running: it captures the state at the applied index on the loop and encodes it on
// another goroutine, whose result the loop stores with landSnapshot.
//
// After a failed encoding, the periodic snapshot is due again SnapshotInterval entries after
// the failed one's index, and a new member's snapshot is retried from the next tick on (the
// member needs it to join; raft holds snapshots back for it meanwhile, see raftStorage).
func (n *Node) startSnapshotIfDue() {
	if n.capturer == nil || n.snapRunning {
		return
	}
	due := n.appliedIdx-max(n.snapIndex, n.snapFailIdx) >= n.cfg.SnapshotInterval
	forMember := n.snapForNewMember && n.appliedIdx > n.snapIndex
	if forMember && n.ticks >= n.snapRetryTick {
		due = true
	}
	if !due {
		return
	}
	n.snapForNewMember = false
	r := snapResult{index: n.appliedIdx, conf: proto.Clone(n.confState).(*pb.ConfState), forMember: forMember}
	encode := n.capturer.CaptureSnapshot()
	if encode == nil {
		r.err = errors.New("CaptureSnapshot returned a nil encoder")
		n.snapRunning, n.snapRunningForMember = true, forMember
		n.snapc <- r // buffered and empty: no encoder is running
		return
	}
	n.snapRunning, n.snapRunningForMember = true, forMember
	n.logger.Debug("snapshot captured; encoding in the background", "index", r.index, "for_new_member", forMember)
	n.snapWG.Go(func() {
		start := time.Now()
		r.data, r.err = runEncoder(encode)
		n.ctr.snapEncodeNanos.Add(uint64(time.Since(start)))
		n.snapc <- r
	})
}

// runEncoder calls a SnapshotCapturer's encoder, turning a panic into an error: the encoder
// runs off the loop, where a panic would take the whole process down.
func runEncoder(encode func() ([]byte, error)) (data []byte, err error) {
	defer func() {
		if p := recover(); p != nil {
			data, err = nil, fmt.Errorf("snapshot encoder panicked: %v", p)
		}
	}()
	return encode()
}

// landSnapshot stores a background snapshot's result, on the loop: as the raft snapshot at its
// captured index, unless the encoder failed (logged, counted, retried later) or a newer
// snapshot, received from the leader, was applied while it was encoding (discarded).
func (n *Node) landSnapshot(r snapResult) error {
	n.snapRunning, n.snapRunningForMember = false, false
	if r.err != nil {
		n.ctr.snapFailures.Add(1)
		n.snapFailIdx = max(n.snapFailIdx, r.index)
		n.snapRetryTick = n.ticks + 1
		if r.forMember {
			n.snapForNewMember = true
		}
		n.logger.Error("snapshot encoding failed; will retry", "index", r.index, "err", r.err)
		return nil
	}
	if r.index <= n.snapIndex {
		// The state machine was restored from a newer snapshot meanwhile (whose configuration
		// includes any member added before r.index).
		n.ctr.snapDiscarded.Add(1)
		n.logger.Debug("background snapshot discarded: a newer snapshot was applied while it was encoding",
			"index", r.index, "snapshot_index", n.snapIndex)
		return nil
	}
	return n.saveSnapshot(r.index, r.conf, r.data)
}

// saveSnapshot makes data, the state at applied index idx with configuration cs, the raft
// snapshot, saves it durably and compacts the log to SnapshotCatchUpEntries before idx.
func (n *Node) saveSnapshot(idx uint64, cs *pb.ConfState, data []byte) error {
	snap, err := n.ms.CreateSnapshot(idx, cs, data)
	if err != nil {
		return fmt.Errorf("raftstore: creating snapshot at index %d: %w", idx, err)
	}
	var compact uint64
	if idx > n.cfg.SnapshotCatchUpEntries {
		compact = idx - n.cfg.SnapshotCatchUpEntries
	}
	if err := n.disk.saveSnapshot(snap, compact); err != nil {
		return err
	}
	first, err := n.ms.FirstIndex()
	if err != nil {
		return err
	}
	if compact >= first {
		if err := n.ms.Compact(compact); err != nil {
			return fmt.Errorf("raftstore: compacting log to %d: %w", compact, err)
		}
	}
	n.snapIndex = idx
	n.ctr.snapshots.Add(1)
	n.logger.Debug("snapshot taken", "index", idx, "compacted_to", compact, "bytes", len(data))
	return nil
}

// raftStorage is the raft.Storage the RawNode reads: the MemoryStorage, except that while a
// member added after the latest snapshot waits for a newer one (being encoded in the
// background), Snapshot says it is temporarily unavailable. Raft then retries later instead of
// sending the old snapshot, which the new member would refuse since its configuration does not
// include it. Raft calls it only from the loop goroutine.
type raftStorage struct {
	*raft.MemoryStorage
	n *Node
}

func (s raftStorage) Snapshot() (*pb.Snapshot, error) {
	if s.n.capturer != nil && (s.n.snapForNewMember || s.n.snapRunningForMember) {
		s.n.snapHeld++
		return nil, raft.ErrSnapshotTemporarilyUnavailable
	}
	return s.MemoryStorage.Snapshot()
}
