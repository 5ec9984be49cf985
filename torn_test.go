package shoal_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal"
	"github.com/shoalhq/shoal/raftstore"
)

// The Raft log, hard state and snapshots live in one bbolt file. bbolt
// commits a transaction by writing its pages, syncing, then writing one of its
// two meta pages (alternating) and syncing again; a crash in the middle of the
// meta write leaves a torn meta page whose checksum fails. These tests damage
// the file the way such a crash (or worse) would and check what a restarting
// manager does: a torn last commit is rolled back to the one before it, not
// fatal; anything else is an error naming the file.

// Meta page layout (bbolt's on-disk format, version 2): a 16-byte page header,
// then magic, version, page size, flags (4 bytes each), the root bucket (16),
// the freelist page (8), the high-water page (8), the transaction ID (8) and
// an FNV-64a checksum of everything before it (8).
const (
	metaPageSizeOff = 16 + 8
	metaTxidOff     = 16 + 48
	metaChecksumOff = 16 + 56
)

// startSingleManager runs a one-manager cluster on loopback in dir.
func tornConfig(dir string) shoal.Config {
	return shoal.Config{StateDir: dir, ListenAddr: "127.0.0.1:0", DisableAgent: true, Hostname: "torn"}
}

// writeServices creates services name-1 .. name-n, each acknowledged.
func writeServices(ctx context.Context, t *testing.T, c *shoal.Client, name string, n int) {
	t.Helper()
	for i := 1; i <= n; i++ {
		_, err := c.CreateService(ctx, shoal.ServiceSpec{Name: fmt.Sprintf("%s-%d", name, i),
			Task: shoal.TaskSpec{Command: []string{"x"}}})
		require.NoError(t, err)
	}
}

func serviceNames(ctx context.Context, t *testing.T, c *shoal.Client) map[string]bool {
	t.Helper()
	svcs, err := c.ListServices(ctx)
	require.NoError(t, err)
	out := map[string]bool{}
	for _, s := range svcs {
		out[s.Spec.Name] = true
	}
	return out
}

// raftDB finds the manager's Raft database under its state directory.
func raftDB(t *testing.T, stateDir string) string {
	t.Helper()
	var found string
	require.NoError(t, filepath.WalkDir(stateDir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && d.Name() == raftstore.DBFileName {
			found = p
		}
		return err
	}))
	require.NotEmpty(t, found, "no %s under %s", raftstore.DBFileName, stateDir)
	return found
}

// metaPages reads both meta pages of a bbolt file and returns the offset of
// the one with the higher transaction ID, and the page size.
func newestMeta(t *testing.T, path string) (off int64, pageSize int) {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	hdr := make([]byte, 128)
	_, err = f.ReadAt(hdr, 0)
	require.NoError(t, err)
	pageSize = int(binary.LittleEndian.Uint32(hdr[metaPageSizeOff:]))
	require.True(t, pageSize >= 1024 && pageSize&(pageSize-1) == 0, "page size %d", pageSize)
	second := make([]byte, 128)
	_, err = f.ReadAt(second, int64(pageSize))
	require.NoError(t, err)
	tx0 := binary.LittleEndian.Uint64(hdr[metaTxidOff:])
	tx1 := binary.LittleEndian.Uint64(second[metaTxidOff:])
	require.NotEqual(t, tx0, tx1)
	if tx1 > tx0 {
		return int64(pageSize), pageSize
	}
	return 0, pageSize
}

// tear overwrites the second half of a meta page (from the transaction ID
// on) with bytes of a half-finished write.
func tear(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	junk := []byte{0xde, 0xad, 0xbe, 0xef, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb}
	_, err = f.WriteAt(junk, off+metaTxidOff)
	require.NoError(t, err)
	require.NoError(t, f.Sync())
}

func restart(ctx context.Context, t *testing.T, dir string) (*shoal.Node, error) {
	t.Helper()
	n, err := shoal.New(tornConfig(dir))
	require.NoError(t, err)
	if err := n.Start(ctx); err != nil {
		return nil, err
	}
	t.Cleanup(func() { _ = n.Stop(context.Background()) })
	return n, nil
}

// A torn last commit costs at most that commit: the manager restarts from the
// commit before it, keeps every earlier write, and goes on working (and
// restarting) normally.
func TestTornLastWriteRollsBack(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	first, err := shoal.Init(ctx, tornConfig(dir))
	require.NoError(t, err)
	const n = 30
	writeServices(ctx, t, first.Client(), "before", n)
	require.NoError(t, first.Stop(ctx))

	path := raftDB(t, dir)
	off, _ := newestMeta(t, path)
	tear(t, path, off)

	m, err := restart(ctx, t, dir)
	require.NoError(t, err, "a torn last commit must not stop the manager")
	got := serviceNames(ctx, t, m.Client())
	// The torn commit may have held the last write (a crash before its fsync
	// returned means it was never acknowledged); everything before it stays.
	for i := 1; i < n; i++ {
		require.True(t, got[fmt.Sprintf("before-%d", i)], "service before-%d lost", i)
	}
	require.LessOrEqual(t, len(got), n)

	// The rolled-back file is a normal one: more writes and restarts work.
	writeServices(ctx, t, m.Client(), "after", 5)
	require.NoError(t, m.Stop(ctx))
	m2, err := restart(ctx, t, dir)
	require.NoError(t, err)
	got2 := serviceNames(ctx, t, m2.Client())
	for i := 1; i <= 5; i++ {
		require.True(t, got2[fmt.Sprintf("after-%d", i)], "service after-%d lost", i)
	}
	require.Equal(t, len(got)+5, len(got2))
}

// Damage beyond a torn last commit is refused with an error naming the file,
// never a panic and never a silently empty state.
func TestCorruptRaftDBIsAClearError(t *testing.T) {
	cases := []struct {
		name   string
		damage func(t *testing.T, path string)
	}{
		{"both meta pages torn", func(t *testing.T, path string) {
			off, pageSize := newestMeta(t, path)
			tear(t, path, off)
			tear(t, path, int64(pageSize)-off)
		}},
		{"file truncated", func(t *testing.T, path string) {
			_, pageSize := newestMeta(t, path)
			require.NoError(t, os.Truncate(path, int64(3*pageSize)))
		}},
		{"meta checksum flipped on both pages", func(t *testing.T, path string) {
			_, pageSize := newestMeta(t, path)
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			require.NoError(t, err)
			defer f.Close()
			for _, off := range []int64{0, int64(pageSize)} {
				b := make([]byte, 1)
				_, err := f.ReadAt(b, off+metaChecksumOff)
				require.NoError(t, err)
				b[0] ^= 0xff
				_, err = f.WriteAt(b, off+metaChecksumOff)
				require.NoError(t, err)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			dir := t.TempDir()
			first, err := shoal.Init(ctx, tornConfig(dir))
			require.NoError(t, err)
			writeServices(ctx, t, first.Client(), "s", 10)
			require.NoError(t, first.Stop(ctx))
			path := raftDB(t, dir)
			tc.damage(t, path)
			_, err = restart(ctx, t, dir)
			require.Error(t, err)
			require.Contains(t, err.Error(), path, "the error must name the damaged file")
		})
	}
}
