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
// Encoding a large state takes time. A StateMachine that also implements SnapshotCapturer is
// snapshotted in the background: the loop only captures the state (cheaply, by reference to
// immutable data) and keeps committing and applying while another goroutine encodes it; the
// loop then saves the snapshot at the captured index and compacts. At most one encoding runs at
// a time, a failed one is retried later, and Stop waits for a running one.
//
// # Entry size
//
// Propose refuses data longer than Config.MaxEntryBytes (8 MiB by default) with
// ErrEntryTooLarge, before anything enters the log: every member must be able to receive the
// entry, and raftstore/transport carries messages of up to transport.MaxMessageBytes (16 MiB).
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
// side hands them to Node.Step. PreVote and CheckQuorum are on: a member coming back from a
// partition cannot disrupt the group, and a leader that cannot hear a quorum steps down within
// an election timeout, so the majority side elects a new one within a few.
//
// A member joins with Config.Join: it starts with an empty log and waits. The leader adds it
// with AddLearner (the context bytes, e.g. its address, are stored with it: Members); the
// learner receives the log, or a snapshot if the log was compacted, and Ready closes once it has
// applied up to the leader's commit index as of its first contact, i.e. once it caught up.
// The lead then polls CaughtUp and calls PromoteLearner, so adding a manager never changes the
// quorum before the new member can vote. RemoveMember and DemoteVoter refuse, with an error
// wrapping a *QuorumError, a change that would leave the remaining voters without a reachable
// quorum, and refuse removing the last voter. A leader asked to remove or demote itself, or to
// Stop, first hands leadership to the most up-to-date voter (TransferLeadership).
// Config.OnMembershipChange reports every configuration change, so the lead can keep the
// transport's peer list in step.
//
// Member contexts are persisted with the configuration and survive restarts. A snapshot carries
// the configuration's IDs but not the contexts, so a member that caught up from a snapshot
// taken after a member was added does not know that member's context; the lead keeps the
// managers' addresses in the replicated object store as well, and uses that copy.
//
// # Linearizable reads
//
// Every member applies the same entries, but a follower may trail the leader by a few. ReadBarrier
// returns once this member has applied every entry committed before the call (raft's ReadIndex:
// the leader confirms it still leads with a quorum heartbeat round, and a follower asks it for
// that commit index), so a read of the StateMachine after it sees every acknowledged write.
// Concurrent calls share one round. Without a leader or a quorum it fails like Propose, with a
// *QuorumError.
//
// # Disaster recovery
//
// A cluster that lost its quorum for good (most managers destroyed) cannot elect a leader. Start
// one survivor with Config.ForceNewCluster: it appends configuration changes removing every other
// member to its log, commits them with everything the log holds, and starts as the only voter of
// a one-member cluster with all the state it had, like `docker swarm init --force-new-cluster`.
// The change is in the log, so later starts without the flag find the same one-member cluster;
// it grows again with AddLearner. The other members' old databases must not rejoin.
//
// # Encryption at rest
//
// With Config.Encryptor set (a *keys.Cipher holding the node's data key, from internal/keys),
// every entry and the snapshot data are sealed before they are written to raft.db and opened
// when read back; a sealed blob's additional data names its purpose ("entry" or "snapshot") and
// its log index, so blobs cannot be moved within the file or between files sealed with the same
// key. The hard state, configuration, member contexts and format metadata stay in the clear:
// they hold no user data. The file records at creation whether it is encrypted, with a sealed
// key check: Start fails, naming the file, when an encrypted file is opened without an
// Encryptor, a clear file with one, or an encrypted file with a different data key ("the data
// key does not match"); a blob that fails to open under the right key is reported as ErrCorrupt.
// Messages between members are not sealed here: the transport's mutual TLS protects them.
//
// # Time
//
// The raft loop ticks on Config.Clock (internal/clock; the real clock by default), and the
// waits measured in election timeouts (Propose waiting for a leader, Stop's leadership
// transfer, a configuration change waiting for the previous one) run on it too, so a test
// with a clocktest.Fake moves raft's time by hand. Only the durations reported in Stats and
// metrics (snapshot encoding time) are read from the wall clock: they measure cost and decide
// nothing. A loop held up past its tick (a long fsync, a large snapshot stored on the loop)
// gets one tick when it resumes, not a burst, so its own stall does not count toward an
// election; a follower's stall does count on its leader, which hears nothing from it meanwhile.
//
// # Proposals on followers, and quorum loss
//
// Proposals are made on the leader. With Config.Forwarder set, Propose on a follower forwards
// the entry to the leader and returns the leader's Apply error, so any member accepts writes;
// without it, a follower returns ErrNotLeader. A member that knows no leader waits up to one
// election timeout for one, then fails with a *QuorumError such as "no quorum: 1 of 3 managers
// reachable, 2 needed" (errors.Is ErrNoQuorum). ErrNotLeader, ErrStopped and ErrNoQuorum are the
// errdefs sentinels, so they keep their identity across gRPC.
package raftstore
