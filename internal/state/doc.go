// Package state is Shoal's object store: nodes, services, tasks and the
// cluster object in indexed in-memory tables.
//
// Reads (View, ViewAndWatch) see a consistent snapshot: they share the
// store's read lock. Writes (Update) run a callback on a write transaction
// whose changes sit in an overlay that the transaction's own reads see; the
// changes are then proposed to the replicated log and become visible only
// when the log applies them through Apply, the same way on every manager.
// Every object carries a version, the log index that last wrote it; an update
// made from a stale version fails with ErrConflict, checked again at apply
// time so that every member agrees. An entry that fails a check changes
// nothing. A task's observed state never moves backward: such writes keep
// the stored status.
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
// The tables are maps with secondary indexes rather than go-memdb: the
// immutable radix trees made every write cost two tree insertions per index,
// and committed writes with 64 writers went from 6,500/s to 25,000/s, and a
// scheduling pass of 10,000 tasks from 1.3 s to 80 ms, when they were
// replaced. The cost is that callbacks hold a read lock: they must be short
// and must not call View or Update themselves.
//
// Every write transaction carries a random request ID; an entry that
// reaches the log twice (a forwarded proposal retried after a broken
// connection) is answered with the first copy's outcome and not applied
// again.
//
// Watchers receive the applied changes in commit order, with the last event
// of each transaction marked. Snapshot and Restore save and load the whole
// state for log compaction.
package state
