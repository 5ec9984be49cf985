// Package state is Shoal's object store: nodes, services, tasks and the
// cluster object in indexed in-memory tables (hashicorp/go-memdb).
//
// Reads (View, ViewAndWatch) see a consistent snapshot. Writes (Update) run a
// callback on a write transaction that sees its own changes, then propose the
// changes to the replicated log; they become visible only when the log
// applies them through Apply, the same way on every manager. Every object
// carries a version, the log index that last wrote it; an update made from a
// stale version fails with ErrConflict. A task's observed state never moves
// backward: such writes keep the stored status.
//
// Watchers receive the applied changes in commit order. Snapshot and Restore
// save and load the whole state for log compaction.
package state
