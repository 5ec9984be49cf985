package raftstore

import (
	"encoding/binary"
	"errors"
	"hash/fnv"
	"io"
	"io/fs"
	"os"
)

// bbolt commits by writing a transaction's pages, syncing, then writing one of
// its two meta pages (they alternate) and syncing again. A crash during the
// meta write leaves that page torn; bbolt then uses the other meta page, which
// describes the commit before, whose pages are intact (bbolt never overwrites
// pages a committed meta still refers to). That is the "torn last write is
// truncated" case, and bbolt handles it by itself.
//
// What bbolt does not handle gracefully is a file shorter than its valid meta
// page says (truncated by a full disk, a bad copy or a damaged filesystem): it
// maps the missing pages, and touching them raises SIGBUS on a goroutine bbolt
// starts, which kills the process. precheckFile reads the meta pages itself
// first and turns that case into an error naming the file.

// Meta page layout, bbolt file format version 2: a 16-byte page header, then
// magic, version, page size, flags (4 bytes each), root bucket page and
// sequence (8 each), freelist page, high-water page, transaction ID and an
// FNV-64a checksum of the 56 bytes before it (8 each).
const (
	boltMagic       = 0xED0CDAED
	boltVersion     = 2
	boltPageHeader  = 16
	boltMetaSumLen  = 56
	boltMetaLen     = boltMetaSumLen + 8
	boltDefaultPage = 4096
)

type boltMeta struct {
	pageSize uint32
	pgid     uint64 // high-water mark: pages [0, pgid) are in use
	txid     uint64
}

// parseBoltMeta decodes and validates a meta page read from the start of page
// buf; ok is false for a torn or foreign page.
func parseBoltMeta(buf []byte) (boltMeta, bool) {
	if len(buf) < boltPageHeader+boltMetaLen {
		return boltMeta{}, false
	}
	m := buf[boltPageHeader : boltPageHeader+boltMetaLen]
	le := binary.LittleEndian
	if le.Uint32(m[0:]) != boltMagic || le.Uint32(m[4:]) != boltVersion {
		return boltMeta{}, false
	}
	h := fnv.New64a()
	_, _ = h.Write(m[:boltMetaSumLen])
	if h.Sum64() != le.Uint64(m[boltMetaSumLen:]) {
		return boltMeta{}, false
	}
	return boltMeta{pageSize: le.Uint32(m[8:]), pgid: le.Uint64(m[40:]), txid: le.Uint64(m[48:])}, true
}

// precheckFile checks the bbolt file at path before it is opened: if a valid
// meta page exists, the file must hold every page it refers to. A missing or
// empty file passes (it is created fresh). Files with no valid meta page pass
// too: bbolt refuses them with its own error, which openDisk reports as
// corruption of the file.
func precheckFile(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	size := st.Size()
	if size == 0 {
		return nil
	}
	head := make([]byte, boltPageHeader+boltMetaLen)
	read := func(off int64) (boltMeta, bool) {
		n, err := f.ReadAt(head, off)
		if err != nil && !errors.Is(err, io.EOF) {
			return boltMeta{}, false
		}
		return parseBoltMeta(head[:n])
	}
	var metas []boltMeta
	m0, ok0 := read(0)
	if ok0 {
		metas = append(metas, m0)
	}
	// The second meta page sits one page in; with the first page torn its size
	// is unknown, so try the first page's claim and then the common sizes.
	sizes := []int64{boltDefaultPage, 8192, 16384, 65536}
	if ok0 {
		sizes = []int64{int64(m0.pageSize)}
	}
	for _, ps := range sizes {
		if m1, ok := read(ps); ok && int64(m1.pageSize) == ps {
			metas = append(metas, m1)
			break
		}
	}
	if len(metas) == 0 {
		return nil
	}
	best := metas[0]
	for _, m := range metas[1:] {
		if m.txid > best.txid {
			best = m
		}
	}
	if need := int64(best.pgid) * int64(best.pageSize); size < need {
		return corrupt(path, "file is %d bytes but its last commit (transaction %d) uses %d: the file was truncated",
			size, best.txid, need)
	}
	return nil
}
