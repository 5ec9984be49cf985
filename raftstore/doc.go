// Package raftstore is Shoal's replicated, durable log: the object store proposes every write to
// it, and every member applies the committed writes in the same order.
//
// It is built on go.etcd.io/raft/v3. Entries, the hard state (term, vote, commit), the current
// configuration and the latest snapshot are kept in one go.etcd.io/bbolt file, Config.Dir/raft.db.
//
// # Usage
//
// Implement StateMachine (Apply, Snapshot, Restore), then:
//
//	cfg := raftstore.DefaultConfig()
//	cfg.ID, cfg.Dir, cfg.StateMachine = 1, dir, sm
//	n, err := raftstore.New(cfg) // validates only
//	err = n.Start(ctx)           // opens the file, restores, replays, elects
//	<-n.Ready()
//	result, err := n.Propose(ctx, data) // sm.Apply's return value
//	err = n.Stop(ctx)
//
// # Durability and batching
//
// The raft loop handles one raft Ready at a time: it writes the Ready's hard state, entries and
// any received snapshot in one bbolt transaction (one fsync), then sends messages, then applies
// committed entries, then advances. Proposals that arrive while a Ready is being written queue up
// and go into the next Ready together, so concurrent writers share fsyncs (Stats shows the
// ratio). A transaction that only advances the commit index is not fsynced: raft can recompute a
// lost commit index.
//
// # Restart
//
// The StateMachine is in-memory state; the file is the only durable copy. Start restores the
// latest snapshot into the StateMachine and replays every committed entry after it, so after a
// restart the StateMachine reaches exactly the state it had. Ready is closed once that replay is
// done and a leader is known. Every Config.SnapshotInterval applied entries the node snapshots
// the StateMachine and deletes log entries older than Config.SnapshotCatchUpEntries before the
// snapshot, so the file does not grow with the number of writes.
//
// A crash loses at most the transaction being written (bbolt is transactional). A file that
// cannot be read as a raftstore log makes Start fail with an error wrapping ErrCorrupt that names
// the file.
//
// # Membership
//
// A new database bootstraps a cluster of Config.Peers (default: this member alone). A single
// member campaigns as soon as it starts, so it is ready in milliseconds and is always the leader.
// For several members, a Transport carries raft messages out (Transport.Send) and the receiving
// side hands them to Node.Step. Proposals are accepted only on the leader; elsewhere Propose
// returns ErrNotLeader, and forwarding to the leader is the caller's job.
package raftstore
