package raftstore

import (
	"encoding/binary"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// Encryption at rest (Config.Encryptor). Entries and snapshot data are sealed; each sealed blob's
// additional data names its purpose and log index, so a blob moved to another key (or from the
// snapshot to the log) no longer opens. The meta bucket records whether the file is encrypted
// under keyEncryption: absent means the file is in the clear; present, it holds keyCheckPlain
// sealed with keyCheckAD, which tells a wrong data key (the check does not open) apart from a
// damaged blob (the check opens, the blob does not).

var keyEncryption = []byte("encryption")

const (
	keyCheckPlain = "shoal raftstore data key check v1"
	keyCheckAD    = "shoal raftstore/keycheck"
	entryADPrefix = "shoal raftstore/entry\x00"
	snapADPrefix  = "shoal raftstore/snapshot\x00"
)

var (
	// errDataKeyMismatch is wrapped by the error for an encrypted file opened with a
	// different data key.
	errDataKeyMismatch = errors.New("the data key does not match the one the file was encrypted with")
	// errEncryptedNoKey and errClearWithKey are wrapped by the errors for a file whose
	// encryption does not match Config.Encryptor.
	errEncryptedNoKey = errors.New("the file is encrypted, but Config.Encryptor is nil")
	errClearWithKey   = errors.New("the file is stored in the clear, but Config.Encryptor is set (an existing clear log is not encrypted in place)")
)

func positionAD(prefix string, index uint64) []byte {
	ad := make([]byte, len(prefix)+8)
	copy(ad, prefix)
	binary.BigEndian.PutUint64(ad[len(prefix):], index)
	return ad
}

// initEncryption records, in a new file's meta bucket, whether it is encrypted.
func (d *diskStore) initEncryption(meta *bolt.Bucket) error {
	if d.enc == nil {
		return nil
	}
	return meta.Put(keyEncryption, d.enc.Seal([]byte(keyCheckPlain), []byte(keyCheckAD)))
}

// checkEncryption compares what the file's meta bucket records with d.enc.
func (d *diskStore) checkEncryption(meta *bolt.Bucket) error {
	check := meta.Get(keyEncryption)
	switch {
	case check == nil && d.enc == nil:
		return nil
	case check == nil:
		return fmt.Errorf("raftstore: %s: %w", d.path, errClearWithKey)
	case d.enc == nil:
		return fmt.Errorf("raftstore: %s: %w", d.path, errEncryptedNoKey)
	}
	pt, err := d.enc.Open(check, []byte(keyCheckAD))
	if err != nil {
		return fmt.Errorf("raftstore: %s: %w (Config.Encryptor cannot open the file's key check: %v)", d.path, errDataKeyMismatch, err)
	}
	if string(pt) != keyCheckPlain {
		return fmt.Errorf("raftstore: %s: %w (the key check opened to unexpected content)", d.path, errDataKeyMismatch)
	}
	return nil
}

// encodeEntry is the stored form of e: marshalled, then sealed when the file is encrypted.
func (d *diskStore) encodeEntry(e *pb.Entry) ([]byte, error) {
	b, err := proto.Marshal(e)
	if err != nil {
		return nil, err
	}
	if d.enc == nil {
		return b, nil
	}
	return d.enc.Seal(b, positionAD(entryADPrefix, e.GetIndex())), nil
}

// putEntry stores e under its index.
func (d *diskStore) putEntry(eb *bolt.Bucket, e *pb.Entry) error {
	b, err := d.encodeEntry(e)
	if err != nil {
		return err
	}
	return eb.Put(indexKey(e.GetIndex()), b)
}

// decodeEntry reads the entry stored under index idx.
func (d *diskStore) decodeEntry(idx uint64, v []byte) (*pb.Entry, error) {
	if d.enc != nil {
		pt, err := d.enc.Open(v, positionAD(entryADPrefix, idx))
		if err != nil {
			// The key check passed at open, so the key is right: the blob is damaged (or was
			// moved from another index).
			return nil, corrupt(d.path, "entry %d does not authenticate: %v", idx, err)
		}
		v = pt
	}
	e := &pb.Entry{}
	if err := proto.Unmarshal(v, e); err != nil {
		return nil, corrupt(d.path, "entry %d: %v", idx, err)
	}
	return e, nil
}

// encodeSnapshotData is the stored form of the data of the snapshot at index idx.
func (d *diskStore) encodeSnapshotData(idx uint64, data []byte) []byte {
	if d.enc == nil {
		return data
	}
	return d.enc.Seal(data, positionAD(snapADPrefix, idx))
}

// decodeSnapshotData opens the stored data of the snapshot at index idx.
func (d *diskStore) decodeSnapshotData(idx uint64, v []byte) ([]byte, error) {
	if d.enc == nil {
		return v, nil
	}
	pt, err := d.enc.Open(v, positionAD(snapADPrefix, idx))
	if err != nil {
		return nil, corrupt(d.path, "snapshot data at index %d does not authenticate: %v", idx, err)
	}
	return pt, nil
}
