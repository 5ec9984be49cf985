package raftstore

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/shoalhq/shoal/internal/keys"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

var _ Encryptor = (*keys.Cipher)(nil)

func newTestEncryptor(t testing.TB) *keys.Cipher {
	t.Helper()
	dek, err := keys.NewDataKey()
	require.NoError(t, err)
	c, err := keys.NewCipher(dek)
	require.NoError(t, err)
	return c
}

const marker = "SHOAL-AT-REST-MARKER"

func markerPayload(i int) []byte { return fmt.Appendf(nil, "%s-%04d", marker, i) }

// writeMarked runs a single member that writes 60 marked entries with a snapshot every 20
// (keeping 5 behind it), so the file holds both a snapshot containing markers and marked log
// entries, then stops it. It returns the state machine's hash and length.
func writeMarked(t *testing.T, dir string, enc Encryptor) (snapIndex uint64, hash [32]byte, count int) {
	t.Helper()
	sm := &listSM{}
	cfg := testConfig(t, dir, sm)
	cfg.Encryptor = enc
	cfg.SnapshotInterval = 20
	cfg.SnapshotCatchUpEntries = 5
	n := startNode(t, cfg)
	proposeN(t, n, 60, markerPayload)
	require.Eventually(t, func() bool { return n.Stats().Snapshots >= 1 }, waitFor, 5*time.Millisecond)
	snapIndex = snapIndexOf(t, n)
	require.NotZero(t, snapIndex)
	hash, count = sm.hash(), sm.len()
	stopNode(t, n)
	_, last, entries := diskEntries(t, dir)
	require.Positive(t, entries, "the log still holds entries after the snapshot")
	require.Greater(t, last, snapIndex)
	return snapIndex, hash, count
}

func rawDB(t *testing.T, dir string) []byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, DBFileName))
	require.NoError(t, err)
	return raw
}

func TestEncryptionAtRest(t *testing.T) {
	// Control: without an Encryptor the markers are on disk, in the log and in the snapshot.
	clearDir := t.TempDir()
	writeMarked(t, clearDir, nil)
	raw := rawDB(t, clearDir)
	require.True(t, bytes.Contains(raw, markerPayload(59)), "control: the last entry is on disk in the clear")
	require.True(t, bytes.Contains(raw, markerPayload(0)), "control: the snapshot is on disk in the clear")

	dir := t.TempDir()
	enc := newTestEncryptor(t)
	snapIndex, hash, count := writeMarked(t, dir, enc)
	raw = rawDB(t, dir)
	assert.False(t, bytes.Contains(raw, []byte(marker)), "a marker is readable in the encrypted file")
	assert.False(t, bytes.Contains(raw, []byte("AT-REST")), "part of a marker is readable in the encrypted file")

	// Restart with the same key: the same state, restored from the (encrypted) snapshot and
	// the (encrypted) entries after it.
	sm := &listSM{}
	cfg := testConfig(t, dir, sm)
	cfg.Encryptor = enc
	n := startNode(t, cfg)
	assert.Equal(t, []uint64{snapIndex}, sm.restores)
	assert.Equal(t, count, sm.len())
	assert.Equal(t, hash, sm.hash())
	require.NoError(t, sm.checkErr())
	// It keeps working: a write after the restart survives the next one too.
	proposeN(t, n, 1, func(int) []byte { return markerPayload(60) })
	hash, count = sm.hash(), sm.len()
	stopNode(t, n)
	sm = &listSM{}
	cfg.StateMachine = sm
	startNode(t, cfg)
	assert.Equal(t, count, sm.len())
	assert.Equal(t, hash, sm.hash())
	assert.False(t, bytes.Contains(rawDB(t, dir), []byte(marker)))
}

func startErr(t *testing.T, cfg Config) error {
	t.Helper()
	n, err := New(cfg)
	require.NoError(t, err)
	err = n.Start(context.Background())
	if err == nil {
		stopNode(t, n)
	}
	return err
}

func TestEncryptionWrongKey(t *testing.T) {
	dir := t.TempDir()
	writeMarked(t, dir, newTestEncryptor(t))
	cfg := testConfig(t, dir, &listSM{})
	cfg.Encryptor = newTestEncryptor(t)
	err := startErr(t, cfg)
	require.Error(t, err)
	assert.ErrorIs(t, err, errDataKeyMismatch)
	assert.ErrorContains(t, err, filepath.Join(dir, DBFileName))
	assert.ErrorContains(t, err, "data key does not match")
	assert.NotErrorIs(t, err, ErrCorrupt, "a wrong key is not a damaged file")
}

func TestEncryptionMismatch(t *testing.T) {
	path := func(dir string) string { return filepath.Join(dir, DBFileName) }

	encDir := t.TempDir()
	writeMarked(t, encDir, newTestEncryptor(t))
	err := startErr(t, testConfig(t, encDir, &listSM{}))
	assert.ErrorIs(t, err, errEncryptedNoKey)
	assert.ErrorContains(t, err, path(encDir))
	assert.ErrorContains(t, err, "is encrypted, but Config.Encryptor is nil")

	clearDir := t.TempDir()
	writeMarked(t, clearDir, nil)
	cfg := testConfig(t, clearDir, &listSM{})
	cfg.Encryptor = newTestEncryptor(t)
	err = startErr(t, cfg)
	assert.ErrorIs(t, err, errClearWithKey)
	assert.ErrorContains(t, err, path(clearDir))
	assert.ErrorContains(t, err, "stored in the clear, but Config.Encryptor is set")

	// The choice is made when the file is created, even before raft writes anything.
	newDir := t.TempDir()
	ds, _, err := openDisk(newDir, 1, true, newTestEncryptor(t))
	require.NoError(t, err)
	require.NoError(t, ds.close())
	_, _, err = openDisk(newDir, 1, true, nil)
	assert.ErrorIs(t, err, errEncryptedNoKey)
}

// A blob that was damaged or moved is corruption (the key check passed), named by index.
func TestEncryptedBlobTampering(t *testing.T) {
	tests := []struct {
		name   string
		tamper func(t *testing.T, tx *bolt.Tx, snapIndex uint64)
		want   string
	}{
		{"entry byte flipped", func(t *testing.T, tx *bolt.Tx, snapIndex uint64) {
			eb := tx.Bucket(bucketEntries)
			k, v := eb.Cursor().Last()
			v = bytes.Clone(v)
			v[len(v)/2] ^= 1
			require.NoError(t, eb.Put(bytes.Clone(k), v))
		}, "does not authenticate"},
		{"entry moved to another index", func(t *testing.T, tx *bolt.Tx, snapIndex uint64) {
			eb := tx.Bucket(bucketEntries)
			c := eb.Cursor()
			k, v := c.Last()
			k, v = bytes.Clone(k), bytes.Clone(v)
			pk, _ := c.Prev()
			require.NoError(t, eb.Put(bytes.Clone(pk), v), "entry %d stored under %d", decodeIndex(k), decodeIndex(pk))
		}, "does not authenticate"},
		{"snapshot data replaced by an entry", func(t *testing.T, tx *bolt.Tx, snapIndex uint64) {
			_, v := tx.Bucket(bucketEntries).Cursor().First()
			require.NoError(t, tx.Bucket(bucketSnapshot).Put(keySnapData, bytes.Clone(v)))
		}, "snapshot data at index"},
		{"snapshot data truncated", func(t *testing.T, tx *bolt.Tx, snapIndex uint64) {
			sb := tx.Bucket(bucketSnapshot)
			v := bytes.Clone(sb.Get(keySnapData))
			require.NoError(t, sb.Put(keySnapData, v[:len(v)-1]))
		}, "snapshot data at index"},
	}
	enc := newTestEncryptor(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			snapIndex, _, _ := writeMarked(t, dir, enc)
			db, err := bolt.Open(filepath.Join(dir, DBFileName), 0o600, &bolt.Options{Timeout: time.Second})
			require.NoError(t, err)
			require.NoError(t, db.Update(func(tx *bolt.Tx) error { tt.tamper(t, tx, snapIndex); return nil }))
			require.NoError(t, db.Close())

			cfg := testConfig(t, dir, &listSM{})
			cfg.Encryptor = enc
			err = startErr(t, cfg)
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrCorrupt)
			assert.NotErrorIs(t, err, errDataKeyMismatch)
			assert.ErrorContains(t, err, tt.want)
			assert.ErrorContains(t, err, filepath.Join(dir, DBFileName))
		})
	}
}

// ForceNewCluster reads an encrypted member's log and snapshot and appends encrypted entries.
func TestForceNewClusterEncrypted(t *testing.T) {
	for _, compacted := range []bool{false, true} {
		t.Run(fmt.Sprintf("compacted=%t", compacted), func(t *testing.T) {
			enc := newTestEncryptor(t)
			tune := func(cfg *Config) {
				cfg.Encryptor = enc
				if compacted {
					cfg.SnapshotInterval, cfg.SnapshotCatchUpEntries = 20, 5
				}
			}
			c := newClusterOpts(t, 3, false, tune)
			lead := c.leader()
			proposeN(t, lead, 60, markerPayload)
			c.converged()
			wantSum, wantCount := c.sms[lead.ID()].state()
			survivor := c.follower(lead).ID()
			for _, n := range c.nodes {
				stopNode(t, n)
			}

			sm := &chainSM{}
			cfg := testConfig(t, c.dirs[survivor], sm)
			cfg.ID = survivor
			cfg.ForceNewCluster = true
			tune(&cfg)
			n := startNode(t, cfg)
			require.Eventually(t, n.IsLeader, waitFor, 5*time.Millisecond)
			sum, count := sm.state()
			assert.Equal(t, wantCount, count)
			assert.Equal(t, wantSum, sum)
			ms, err := n.Members(ctxFor(t))
			require.NoError(t, err)
			assert.Equal(t, []Member{{ID: survivor, Voter: true}}, membersOnly(ms))
			stopNode(t, n)
			assert.False(t, bytes.Contains(rawDB(t, c.dirs[survivor]), []byte(marker)))

			// The appended configuration entries were sealed like the rest: a plain restart
			// (without the flag) replays them.
			sm = &chainSM{}
			cfg.StateMachine, cfg.ForceNewCluster = sm, false
			n = startNode(t, cfg)
			sum, count = sm.state()
			assert.Equal(t, wantCount, count)
			assert.Equal(t, wantSum, sum)
			ms, err = n.Members(ctxFor(t))
			require.NoError(t, err)
			assert.Equal(t, []Member{{ID: survivor, Voter: true}}, membersOnly(ms))
		})
	}
}

// BenchmarkProposeEncryption compares committed writes per second on one member with fsync on,
// in the clear and encrypted (XChaCha20-Poly1305 via internal/keys), in the same run.
func BenchmarkProposeEncryption(b *testing.B) {
	for _, proposers := range []int{1, 64} {
		for _, encrypted := range []bool{false, true} {
			name := fmt.Sprintf("proposers=%d/clear", proposers)
			if encrypted {
				name = fmt.Sprintf("proposers=%d/encrypted", proposers)
			}
			b.Run(name, func(b *testing.B) {
				cfg := testConfig(b, b.TempDir(), &chainSM{})
				if encrypted {
					cfg.Encryptor = newTestEncryptor(b)
				}
				n := startNode(b, cfg)
				payload := make([]byte, 512)
				ctx := context.Background()
				b.ResetTimer()
				var wg sync.WaitGroup
				var next sync.Mutex
				remaining := b.N
				for range proposers {
					wg.Go(func() {
						for {
							next.Lock()
							if remaining == 0 {
								next.Unlock()
								return
							}
							remaining--
							next.Unlock()
							if _, err := n.Propose(ctx, payload); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				wg.Wait()
				b.StopTimer()
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "writes/s")
			})
		}
	}
}

// FuzzOpenDiskEncrypted stores arbitrary bytes as an entry, the snapshot data and the key check
// of an encrypted database. Opening must fail with an error or succeed with consistent state;
// it must never panic, and never accept a blob that was not sealed with the key.
func FuzzOpenDiskEncrypted(f *testing.F) {
	enc := newTestEncryptor(f)
	entryBlob := enc.Seal([]byte{0x10, 0x02}, positionAD(entryADPrefix, 2))
	f.Add(entryBlob, []byte(nil), []byte(nil))
	f.Add(entryBlob, enc.Seal([]byte("state"), positionAD(snapADPrefix, 1)), enc.Seal([]byte(keyCheckPlain), []byte(keyCheckAD)))
	f.Add([]byte{1}, []byte{}, []byte{0xff})
	f.Fuzz(func(t *testing.T, entry, snapData, check []byte) {
		dir := t.TempDir()
		ds, _, err := openDisk(dir, 1, true, enc)
		if err != nil {
			t.Fatal(err)
		}
		if err := ds.db.Update(func(tx *bolt.Tx) error {
			if err := tx.Bucket(bucketEntries).Put(indexKey(2), entry); err != nil {
				return err
			}
			if snapData != nil {
				md, _ := snapMetaSeed()
				if err := tx.Bucket(bucketSnapshot).Put(keySnapMeta, md); err != nil {
					return err
				}
				if err := tx.Bucket(bucketSnapshot).Put(keySnapData, snapData); err != nil {
					return err
				}
			}
			if check != nil {
				return tx.Bucket(bucketMeta).Put(keyEncryption, check)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if err := ds.close(); err != nil {
			t.Fatal(err)
		}
		ds, st, err := openDisk(dir, 1, true, enc)
		if err != nil {
			if ds != nil {
				t.Fatal("diskStore returned with an error")
			}
			return
		}
		defer ds.close()
		// Only blobs sealed with enc at the right position can have been accepted.
		for _, e := range st.entries {
			if !bytes.Equal(entry, entryBlob) {
				t.Fatalf("accepted entry %d from an unsealed blob", e.GetIndex())
			}
		}
	})
}

// snapMetaSeed is the stored metadata of a snapshot at index 1 with member 1 as voter.
func snapMetaSeed() ([]byte, error) {
	idx, term := uint64(1), uint64(1)
	return proto.Marshal(&pb.SnapshotMetadata{Index: &idx, Term: &term, ConfState: &pb.ConfState{Voters: []uint64{1}}})
}
