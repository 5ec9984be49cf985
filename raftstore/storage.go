package raftstore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// DBFileName is the name of the database file inside Config.Dir.
const DBFileName = "raft.db"

// formatVersion is the on-disk layout version written to the meta bucket. Bump it (and add a
// migration) whenever the meaning of any key changes.
const formatVersion uint32 = 1

// lockTimeout bounds how long opening waits for another process's lock on the file: a second is
// plenty for a previous process to finish exiting, and short enough that running two members on
// one directory fails promptly with a clear error rather than hanging.
const lockTimeout = time.Second

var (
	bucketMeta     = []byte("meta")     // format version, member ID, encryption key check
	bucketState    = []byte("state")    // hard state, conf state
	bucketEntries  = []byte("entries")  // big-endian index -> marshalled raftpb.Entry
	bucketSnapshot = []byte("snapshot") // metadata -> marshalled SnapshotMetadata, data -> bytes
	// bucketMembers maps a big-endian member ID to the context given when it was added (e.g.
	// its address). It holds only current members; files from before it existed get it on open.
	bucketMembers = []byte("members")

	// keyEncryption (encrypt.go) records whether entries and snapshot data are sealed.
	keyVersion  = []byte("version")
	keyMemberID = []byte("member_id")
	keyHard     = []byte("hard_state")
	keyConf     = []byte("conf_state")
	keySnapMeta = []byte("metadata")
	keySnapData = []byte("data")
)

// diskStore is the bbolt file. It is used only from the raft loop (after open).
type diskStore struct {
	path string
	db   *bolt.DB
	// lastIndex is the highest entry index stored, 0 if none.
	lastIndex uint64
	// noSync disables every fsync (Config.UnsafeNoFsync).
	noSync bool
	// committed is called after each write transaction with whether it was fsynced.
	committed func(synced bool)
	// enc seals entries and snapshot data (Config.Encryptor); nil: stored in the clear.
	enc Encryptor
}

// loadedState is everything read back from disk at open.
type loadedState struct {
	fresh    bool // nothing raft wrote is stored: bootstrap
	hard     *pb.HardState
	conf     *pb.ConfState
	snapshot *pb.Snapshot // nil if none
	entries  []*pb.Entry  // after the snapshot, in order
	members  map[uint64][]byte
}

func indexKey(i uint64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], i)
	return k[:]
}

func decodeIndex(k []byte) uint64 { return binary.BigEndian.Uint64(k) }

func corrupt(path string, format string, args ...any) error {
	return fmt.Errorf("raftstore: %s: %w: %s", path, ErrCorrupt, fmt.Sprintf(format, args...))
}

// openDisk opens (creating if needed) the database in dir and loads its state. A new file is
// initialised with the format version, member ID and whether it is encrypted (enc non-nil).
func openDisk(dir string, id uint64, noSync bool, enc Encryptor) (*diskStore, *loadedState, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("raftstore: creating Dir %s: %w", dir, err)
	}
	path := filepath.Join(dir, DBFileName)
	if err := precheckFile(path); err != nil {
		return nil, nil, err
	}
	db, err := openBolt(path, noSync)
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, nil, fmt.Errorf("raftstore: %s: locked by another process: %w", path, err)
		}
		if errors.Is(err, ErrCorrupt) {
			return nil, nil, err
		}
		return nil, nil, fmt.Errorf("raftstore: %s: %w: cannot open database: %w", path, ErrCorrupt, err)
	}
	ds := &diskStore{path: path, db: db, noSync: noSync, enc: enc}
	st, err := ds.init(id)
	if err != nil {
		_ = db.Close()
		return nil, nil, err
	}
	return ds, st, nil
}

// openBolt opens the file. bbolt reads the file through a memory mapping, and
// rebuilds its freelist at open by walking every page; a damaged page can make
// it panic or fault, which is reported as corruption of the file instead.
func openBolt(path string, noSync bool) (db *bolt.DB, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			db, err = nil, corrupt(path, "opening database: %v", r)
		}
	}()
	return bolt.Open(path, 0o600, &bolt.Options{
		Timeout: lockTimeout,
		NoSync:  noSync,
		// The freelist is rebuilt by scanning at open; not syncing it makes every commit
		// write fewer pages, which matters because a commit is on every write's path.
		NoFreelistSync: true,
		FreelistType:   bolt.FreelistMapType,
	})
}

func (d *diskStore) init(id uint64) (st *loadedState, err error) {
	// A damaged page can make bbolt panic while traversing; report it as corruption of this file.
	defer func() {
		if r := recover(); r != nil {
			st, err = nil, corrupt(d.path, "reading database: %v", r)
		}
	}()
	st = &loadedState{members: map[uint64][]byte{}}
	err = d.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			// A raftstore file always has the meta bucket; any other bucket means the file
			// belongs to something else.
			var other []byte
			_ = tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
				other = name
				return errors.New("stop")
			})
			if other != nil {
				return corrupt(d.path, "not a raftstore database (has bucket %q but no %q)", other, bucketMeta)
			}
			st.fresh = true
			for _, b := range [][]byte{bucketMeta, bucketState, bucketEntries, bucketSnapshot, bucketMembers} {
				if _, err := tx.CreateBucket(b); err != nil {
					return err
				}
			}
			meta = tx.Bucket(bucketMeta)
			var v [4]byte
			binary.BigEndian.PutUint32(v[:], formatVersion)
			if err := meta.Put(keyVersion, v[:]); err != nil {
				return err
			}
			if err := d.initEncryption(meta); err != nil {
				return err
			}
			return meta.Put(keyMemberID, indexKey(id))
		}
		v := meta.Get(keyVersion)
		if len(v) != 4 {
			return corrupt(d.path, "missing or malformed format version")
		}
		if got := binary.BigEndian.Uint32(v); got != formatVersion {
			return fmt.Errorf("raftstore: %s: unsupported format version %d (this build reads version %d)", d.path, got, formatVersion)
		}
		m := meta.Get(keyMemberID)
		if len(m) != 8 {
			return corrupt(d.path, "missing or malformed member ID")
		}
		if got := binary.BigEndian.Uint64(m); got != id {
			return fmt.Errorf("raftstore: %s: belongs to member %d, but Config.ID is %d", d.path, got, id)
		}
		if err := d.checkEncryption(meta); err != nil {
			return err
		}
		state, ents, snap := tx.Bucket(bucketState), tx.Bucket(bucketEntries), tx.Bucket(bucketSnapshot)
		if state == nil || ents == nil || snap == nil {
			return corrupt(d.path, "missing bucket")
		}
		mb, err := tx.CreateBucketIfNotExists(bucketMembers)
		if err != nil {
			return err
		}
		if err := mb.ForEach(func(k, v []byte) error {
			if len(k) != 8 {
				return corrupt(d.path, "member key of %d bytes", len(k))
			}
			st.members[decodeIndex(k)] = bytes.Clone(v)
			return nil
		}); err != nil {
			return err
		}
		if b := state.Get(keyHard); b != nil {
			st.hard = &pb.HardState{}
			if err := proto.Unmarshal(b, st.hard); err != nil {
				return corrupt(d.path, "hard state: %v", err)
			}
		}
		st.conf = &pb.ConfState{}
		if b := state.Get(keyConf); b != nil {
			if err := proto.Unmarshal(b, st.conf); err != nil {
				return corrupt(d.path, "conf state: %v", err)
			}
		}
		var snapIndex uint64
		if b := snap.Get(keySnapMeta); b != nil {
			md := &pb.SnapshotMetadata{}
			if err := proto.Unmarshal(b, md); err != nil {
				return corrupt(d.path, "snapshot metadata: %v", err)
			}
			data, err := d.decodeSnapshotData(md.GetIndex(), snap.Get(keySnapData))
			if err != nil {
				return err
			}
			st.snapshot = &pb.Snapshot{Metadata: md, Data: bytes.Clone(data)}
			st.snapshot = pb.EnsureSnapshot(st.snapshot)
			snapIndex = md.GetIndex()
		}
		c := ents.Cursor()
		for k, v := c.Seek(indexKey(snapIndex + 1)); k != nil; k, v = c.Next() {
			if len(k) != 8 {
				return corrupt(d.path, "entry key of %d bytes", len(k))
			}
			idx := binary.BigEndian.Uint64(k)
			e, err := d.decodeEntry(idx, v)
			if err != nil {
				return err
			}
			if e.GetIndex() != idx {
				return corrupt(d.path, "entry under key %d has index %d", idx, e.GetIndex())
			}
			want := snapIndex + 1
			if n := len(st.entries); n > 0 {
				want = st.entries[n-1].GetIndex() + 1
			}
			if idx != want {
				return corrupt(d.path, "log gap: expected entry %d, found %d", want, idx)
			}
			st.entries = append(st.entries, e)
		}
		if k, _ := c.Last(); k != nil {
			d.lastIndex = binary.BigEndian.Uint64(k)
		}
		if st.hard == nil && st.snapshot == nil && len(st.entries) == 0 {
			// Created, but the process stopped before raft's first write: still new.
			st.fresh = true
		}
		if commit := st.hard.GetCommit(); commit > snapIndex+uint64(len(st.entries)) {
			return corrupt(d.path, "hard state commit %d beyond last entry %d", commit, snapIndex+uint64(len(st.entries)))
		}
		return nil
	})
	if err != nil {
		var perr *os.PathError
		if errors.As(err, &perr) {
			return nil, fmt.Errorf("raftstore: %s: %w", d.path, err)
		}
		return nil, err
	}
	return st, nil
}

// update runs f in a write transaction, fsynced unless sync is false (or fsync is disabled).
// Skipping fsync is safe only for writes raft can lose (a commit index advance): bbolt never
// exposes a torn transaction, and a later fsynced commit makes the earlier one durable too.
func (d *diskStore) update(sync bool, f func(tx *bolt.Tx) error) error {
	sync = sync && !d.noSync
	// Only the raft loop writes, so toggling the flag around one Update is race-free.
	d.db.NoSync = !sync
	if err := d.db.Update(f); err != nil {
		return err
	}
	d.committed(sync)
	return nil
}

// save persists one Ready's durable parts in a single transaction: a received snapshot, new
// entries (truncating any conflicting suffix) and the hard state. mustSync is raft's verdict
// (Ready.MustSync): false when only the commit index moved.
func (d *diskStore) save(hard *pb.HardState, ents []*pb.Entry, snap *pb.Snapshot, mustSync bool) error {
	if raft.IsEmptyHardState(hard) && len(ents) == 0 && raft.IsEmptySnap(snap) {
		return nil
	}
	last := d.lastIndex
	err := d.update(mustSync || !raft.IsEmptySnap(snap), func(tx *bolt.Tx) error {
		eb := tx.Bucket(bucketEntries)
		if !raft.IsEmptySnap(snap) {
			if err := d.putSnapshot(tx, snap); err != nil {
				return err
			}
			// Entries up to the snapshot are covered by it. Entries after it that came with
			// the snapshot's sender are not in this Ready, and raft discards our log on
			// receiving a snapshot, so drop everything.
			if err := deleteRange(eb, 0, last); err != nil {
				return err
			}
			last = snap.GetMetadata().GetIndex()
		}
		if len(ents) > 0 {
			first := ents[0].GetIndex()
			if first <= last {
				// raft is overwriting a conflicting suffix of our log.
				if err := deleteRange(eb, first, last); err != nil {
					return err
				}
			}
			for _, e := range ents {
				if err := d.putEntry(eb, e); err != nil {
					return err
				}
			}
			last = ents[len(ents)-1].GetIndex()
		}
		if !raft.IsEmptyHardState(hard) {
			b, err := proto.Marshal(hard)
			if err != nil {
				return err
			}
			if err := tx.Bucket(bucketState).Put(keyHard, b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("raftstore: %s: saving raft state: %w", d.path, err)
	}
	d.lastIndex = last
	return nil
}

// putSnapshot stores snap's metadata and (sealed, if encrypted) data, and its configuration.
func (d *diskStore) putSnapshot(tx *bolt.Tx, snap *pb.Snapshot) error {
	md, err := proto.Marshal(snap.GetMetadata())
	if err != nil {
		return err
	}
	sb := tx.Bucket(bucketSnapshot)
	if err := sb.Put(keySnapMeta, md); err != nil {
		return err
	}
	if err := sb.Put(keySnapData, d.encodeSnapshotData(snap.GetMetadata().GetIndex(), snap.GetData())); err != nil {
		return err
	}
	return putConfState(tx, snap.GetMetadata().GetConfState(), nil)
}

// putConfState stores cs, sets the member contexts in set, and deletes the contexts of IDs that
// are no longer members.
func putConfState(tx *bolt.Tx, cs *pb.ConfState, set map[uint64][]byte) error {
	b, err := proto.Marshal(cs)
	if err != nil {
		return err
	}
	if err := tx.Bucket(bucketState).Put(keyConf, b); err != nil {
		return err
	}
	mb := tx.Bucket(bucketMembers)
	for id, v := range set {
		if err := mb.Put(indexKey(id), v); err != nil {
			return err
		}
	}
	members := memberSet(cs)
	var gone [][]byte
	if err := mb.ForEach(func(k, _ []byte) error {
		if len(k) != 8 || !members[decodeIndex(k)] {
			gone = append(gone, bytes.Clone(k))
		}
		return nil
	}); err != nil {
		return err
	}
	for _, k := range gone {
		if err := mb.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// memberSet is every ID in cs: voters (incoming and outgoing) and learners.
func memberSet(cs *pb.ConfState) map[uint64]bool {
	m := map[uint64]bool{}
	for _, ids := range [][]uint64{cs.GetVoters(), cs.GetVotersOutgoing(), cs.GetLearners(), cs.GetLearnersNext()} {
		for _, id := range ids {
			m[id] = true
		}
	}
	return m
}

// deleteRange deletes entries with lo <= index <= hi.
func deleteRange(b *bolt.Bucket, lo, hi uint64) error {
	if hi < lo {
		return nil
	}
	c := b.Cursor()
	for k, _ := c.Seek(indexKey(lo)); k != nil && binary.BigEndian.Uint64(k) <= hi; k, _ = c.Seek(indexKey(lo)) {
		if err := c.Delete(); err != nil {
			return err
		}
	}
	return nil
}

// saveSnapshot stores a locally taken snapshot and deletes log entries up to compactIndex.
func (d *diskStore) saveSnapshot(snap *pb.Snapshot, compactIndex uint64) error {
	err := d.update(true, func(tx *bolt.Tx) error {
		if err := d.putSnapshot(tx, snap); err != nil {
			return err
		}
		return deleteRange(tx.Bucket(bucketEntries), 0, compactIndex)
	})
	if err != nil {
		return fmt.Errorf("raftstore: %s: saving snapshot: %w", d.path, err)
	}
	return nil
}

// saveConfState records the configuration after applying a conf change entry, with the member
// contexts the change set (see putConfState).
func (d *diskStore) saveConfState(cs *pb.ConfState, set map[uint64][]byte) error {
	err := d.update(true, func(tx *bolt.Tx) error {
		return putConfState(tx, cs, set)
	})
	if err != nil {
		return fmt.Errorf("raftstore: %s: saving conf state: %w", d.path, err)
	}
	return nil
}

func (d *diskStore) close() error {
	if err := d.db.Close(); err != nil {
		return fmt.Errorf("raftstore: %s: closing: %w", d.path, err)
	}
	return nil
}
