// Package state is Shoal's object store: nodes, services, tasks and the
// cluster object in indexed in-memory tables.
//
// Reads (View, ViewShared, ViewAndWatch) see a consistent snapshot: they
// share the store's read lock. Writes (Update) run a callback on a write
// transaction whose changes sit in an overlay that the transaction's own
// reads see; the changes are then proposed to the replicated Log and become
// visible only when the log applies them through Apply, the same way on
// every manager. Every object carries a version, the log index that last
// wrote it; an update made from a stale version fails with ErrConflict,
// checked again at apply time so that every member agrees. An entry that
// fails a check changes nothing. A task's observed state never moves
// backward: such writes keep the stored status. Meta timestamps come from
// Config.Clock.
//
// Stored objects are never modified in place: a write replaces them. Reads
// through View return copies; watch events share the stored objects, and so
// does ViewShared, the copy-free read for internal read-only hot paths (the
// orchestrator's per-service plan, the control API's Get and List): what it
// returns must not be modified at all, nested messages included. The
// debug switch Config.CheckImmutable, on in the tests of the store and of
// its internal users, records a digest of every stored object and makes
// Verify (and Close) report any object modified in place, by kind and ID.
//
// Because stored objects never change, CaptureSnapshot can take the state
// cheaply (a copy of the object pointers, under the read lock) and encode it
// later on another goroutine while writes go on; Snapshot is a capture
// encoded at once.
//
// The tables are maps with secondary indexes, not immutable radix trees
// (go-memdb): a write costs one map update per index instead of two tree
// insertions: with 64 writers on one raftstore log (BenchmarkCommittedWrites)
// the store commits about 25,000 writes/s where go-memdb manages 6,500/s,
// and a scheduling pass of 10,000 tasks takes 80 ms instead of 1.3 s. The cost is that callbacks hold a read lock
// (see Concurrency).
//
// Every write transaction carries a random request ID; an entry that
// reaches the log twice (a forwarded proposal retried after a broken
// connection) is answered with the first copy's outcome and not applied
// again.
//
// Watchers receive the applied changes in commit order, with the last event
// of each transaction marked. Snapshot and Restore save and load the whole
// state for log compaction.
//
// The log is raftstore in a node; package statetest provides an in-memory
// single-node one for tests and benchmarks, which hands requests to the
// store without encoding them (RequestLog, Store.ApplyRequest).
//
// # Concurrency
//
// A Store is safe for concurrent use. The callbacks of View, ViewShared,
// ViewAndWatch and Update run on the caller's goroutine under the store's
// read lock, and Apply (the log's apply goroutine) needs the write lock, so
// a callback holds up every apply on its node: it must be short, must not
// block, and must not call the store's methods. A transaction is valid only
// inside its callback, on that goroutine. Filters run inside Apply, under
// the store's locks. Each Watcher has one goroutine, owned by whoever
// started the watch and ended by Cancel or by the watch's end; the store
// starts no other goroutine and has no timers.
package state
