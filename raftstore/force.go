package raftstore

import (
	"fmt"
	"maps"
	"slices"

	bolt "go.etcd.io/bbolt"
	"go.etcd.io/raft/v3/confchange"
	pb "go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"
	"google.golang.org/protobuf/proto"
)

// forceNewCluster rewrites the loaded state so that member id is the only voter of a
// one-member cluster (Config.ForceNewCluster), keeping every entry of its log.
//
// It appends configuration changes after the last entry: leave a joint configuration if the
// log ends in one, make id a voter if it is not, and remove every other voter and learner.
// The hard state's commit index moves to the last of them, so every entry in the log, the
// appended changes included, is committed; raft then applies them at Start like any other
// committed entries, and a restart without the flag replays them again. Entries this member
// had not yet seen committed are kept and committed too: the old cluster may have committed
// them (a follower learns the commit index only with the leader's next message), and dropping
// them could lose an acknowledged write.
//
// Everything is written in one fsynced transaction before raft starts; st is updated to
// match. It reports whether anything changed (nothing does for a one-member cluster of id).
func (d *diskStore) forceNewCluster(id uint64, st *loadedState) (bool, error) {
	var snapConf *pb.ConfState
	var snapIndex, term uint64
	if st.snapshot != nil {
		md := st.snapshot.GetMetadata()
		snapConf, snapIndex, term = md.GetConfState(), md.GetIndex(), md.GetTerm()
	}
	trk, err := confAfterLog(snapConf, snapIndex, st.entries)
	if err != nil {
		return false, corrupt(d.path, "ForceNewCluster: replaying the configuration: %v", err)
	}
	last := snapIndex
	if n := len(st.entries); n > 0 {
		last = st.entries[n-1].GetIndex()
		term = max(term, st.entries[n-1].GetTerm())
	}
	term = max(term, st.hard.GetTerm())

	var changes []*pb.ConfChangeV2
	// add applies cc to the simulated configuration (so raft will accept it at replay) and
	// queues it.
	add := func(cc *pb.ConfChangeV2) error {
		chg := confchange.Changer{Tracker: trk, LastIndex: last + uint64(len(changes)) + 1}
		var cfg tracker.Config
		var prs tracker.ProgressMap
		var err error
		if cc.LeaveJoint() {
			cfg, prs, err = chg.LeaveJoint()
		} else {
			cfg, prs, err = chg.Simple(cc.GetChanges()...)
		}
		if err != nil {
			return fmt.Errorf("raftstore: %s: ForceNewCluster: %s: %w", d.path, confchange.Describe(cc.GetChanges()...), err)
		}
		trk.Config, trk.Progress = cfg, prs
		changes = append(changes, cc)
		return nil
	}
	single := func(typ pb.ConfChangeType, member uint64) *pb.ConfChangeV2 {
		return &pb.ConfChangeV2{Changes: []*pb.ConfChangeSingle{{Type: typ.Enum(), NodeId: new(member)}}}
	}
	if cs := trk.ConfState(); len(cs.GetVotersOutgoing()) > 0 {
		if err := add(&pb.ConfChangeV2{}); err != nil { // an empty change leaves a joint configuration
			return false, err
		}
	}
	if !slices.Contains(trk.ConfState().GetVoters(), id) {
		if err := add(single(pb.ConfChangeAddNode, id)); err != nil {
			return false, err
		}
	}
	for _, m := range slices.Sorted(maps.Keys(memberSet(trk.ConfState()))) {
		if m == id {
			continue
		}
		if err := add(single(pb.ConfChangeRemoveNode, m)); err != nil {
			return false, err
		}
	}
	if len(changes) == 0 {
		return false, nil
	}
	ents := make([]*pb.Entry, len(changes))
	for i, cc := range changes {
		data, err := proto.Marshal(cc)
		if err != nil {
			return false, err
		}
		ents[i] = &pb.Entry{Type: pb.EntryConfChangeV2.Enum(), Term: new(term), Index: new(last + uint64(i) + 1), Data: data}
	}
	newLast := last + uint64(len(ents))
	hard := &pb.HardState{Term: new(term), Vote: new(st.hard.GetVote()), Commit: new(newLast)}
	if st.hard.GetTerm() != term {
		hard.Vote = new(uint64(0)) // a vote belongs to a term
	}
	conf := &pb.ConfState{Voters: []uint64{id}}
	err = d.update(true, func(tx *bolt.Tx) error {
		eb := tx.Bucket(bucketEntries)
		// Anything stored after the loaded log (there is nothing in a consistent file) would
		// conflict with the new entries.
		if err := deleteRange(eb, last+1, max(d.lastIndex, last)); err != nil {
			return err
		}
		for _, e := range ents {
			if err := d.putEntry(eb, e); err != nil {
				return err
			}
		}
		b, err := proto.Marshal(hard)
		if err != nil {
			return err
		}
		if err := tx.Bucket(bucketState).Put(keyHard, b); err != nil {
			return err
		}
		// The persisted configuration (and so the member contexts kept) is the one the
		// appended changes reach; replay confirms it.
		return putConfState(tx, conf, nil)
	})
	if err != nil {
		return false, fmt.Errorf("raftstore: %s: ForceNewCluster: saving the new configuration: %w", d.path, err)
	}
	d.lastIndex = newLast
	st.entries = append(st.entries, ents...)
	st.hard = hard
	st.conf = conf
	for m := range st.members {
		if m != id {
			delete(st.members, m)
		}
	}
	return true, nil
}

// confAfterLog replays the configuration changes in ents on top of the snapshot's
// configuration (nil: none) exactly as raft will, and returns the resulting tracker.
func confAfterLog(snapConf *pb.ConfState, snapIndex uint64, ents []*pb.Entry) (tracker.ProgressTracker, error) {
	trk := tracker.MakeProgressTracker(1, 0)
	if snapConf == nil {
		snapConf = &pb.ConfState{}
	}
	cfg, prs, err := confchange.Restore(confchange.Changer{Tracker: trk, LastIndex: snapIndex}, snapConf)
	if err != nil {
		return trk, fmt.Errorf("snapshot configuration: %w", err)
	}
	trk.Config, trk.Progress = cfg, prs
	for _, e := range ents {
		var cc pb.ConfChangeI
		switch e.GetType() {
		case pb.EntryConfChange:
			v1 := &pb.ConfChange{}
			if err := proto.Unmarshal(e.GetData(), v1); err != nil {
				return trk, fmt.Errorf("conf change at entry %d: %w", e.GetIndex(), err)
			}
			cc = v1
		case pb.EntryConfChangeV2:
			v2 := &pb.ConfChangeV2{}
			if err := proto.Unmarshal(e.GetData(), v2); err != nil {
				return trk, fmt.Errorf("conf change at entry %d: %w", e.GetIndex(), err)
			}
			cc = v2
		default:
			continue
		}
		v2 := cc.AsV2()
		chg := confchange.Changer{Tracker: trk, LastIndex: e.GetIndex()}
		if v2.LeaveJoint() {
			cfg, prs, err = chg.LeaveJoint()
		} else if autoLeave, ok := v2.EnterJoint(); ok {
			cfg, prs, err = chg.EnterJoint(autoLeave, v2.GetChanges()...)
		} else {
			cfg, prs, err = chg.Simple(v2.GetChanges()...)
		}
		if err != nil {
			return trk, fmt.Errorf("conf change at entry %d (%s): %w", e.GetIndex(), confchange.Describe(v2.GetChanges()...), err)
		}
		trk.Config, trk.Progress = cfg, prs
	}
	return trk, nil
}
