package raftstore

import (
	"testing"

	bolt "go.etcd.io/bbolt"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// FuzzOpenDisk feeds arbitrary bytes to the decoder of every stored record (an entry, the hard
// state, the conf state and the snapshot metadata) of an otherwise valid database. Opening must
// either succeed with a consistent state or fail with an error; it must never panic.
func FuzzOpenDisk(f *testing.F) {
	ent, _ := proto.Marshal(&pb.Entry{Index: new(uint64(2)), Term: new(uint64(1)), Data: []byte("x")})
	hs, _ := proto.Marshal(&pb.HardState{Term: new(uint64(1)), Commit: new(uint64(2))})
	cs, _ := proto.Marshal(&pb.ConfState{Voters: []uint64{1}})
	md, _ := proto.Marshal(&pb.SnapshotMetadata{Index: new(uint64(1)), Term: new(uint64(1)), ConfState: &pb.ConfState{Voters: []uint64{1}}})
	f.Add(ent, hs, cs, []byte(nil))
	f.Add(ent, hs, cs, md)
	f.Add([]byte{0xff}, []byte{0x08}, []byte{}, []byte{0x12, 0x80})
	f.Fuzz(func(t *testing.T, entry, hard, conf, snapMeta []byte) {
		dir := t.TempDir()
		ds, _, err := openDisk(dir, 1, true, nil)
		if err != nil {
			t.Fatal(err)
		}
		ds.committed = func(bool) {}
		if err := ds.db.Update(func(tx *bolt.Tx) error {
			if err := tx.Bucket(bucketEntries).Put(indexKey(2), entry); err != nil {
				return err
			}
			if err := tx.Bucket(bucketState).Put(keyHard, hard); err != nil {
				return err
			}
			if err := tx.Bucket(bucketState).Put(keyConf, conf); err != nil {
				return err
			}
			if snapMeta != nil {
				return tx.Bucket(bucketSnapshot).Put(keySnapMeta, snapMeta)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if err := ds.close(); err != nil {
			t.Fatal(err)
		}
		ds, st, err := openDisk(dir, 1, true, nil)
		if err != nil {
			if ds != nil {
				t.Fatal("diskStore returned with an error")
			}
			return
		}
		defer ds.close()
		snapIndex := st.snapshot.GetMetadata().GetIndex()
		for i, e := range st.entries {
			if e.GetIndex() != snapIndex+1+uint64(i) {
				t.Fatalf("entry %d has index %d after snapshot %d", i, e.GetIndex(), snapIndex)
			}
		}
		if st.hard.GetCommit() > snapIndex+uint64(len(st.entries)) {
			t.Fatalf("commit %d beyond log", st.hard.GetCommit())
		}
	})
}
