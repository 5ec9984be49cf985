// Package transport carries raft messages between Shoal's managers over gRPC: it implements
// raftstore.Transport (Send) and raftstore.Forwarder (Forward), and serves the Raft service of
// internal/api on the manager's gRPC server (Register).
//
// # Usage
//
//	cfg := transport.DefaultConfig()
//	cfg.ID = 1
//	cfg.Credentials = creds       // mTLS client credentials (pki)
//	tr, err := transport.New(cfg) // validates only
//	tr.Register(grpcServer)       // created with grpc.MaxRecvMsgSize(transport.MaxMessageBytes)
//	err = tr.AddPeer(2, "10.0.0.2:4242")
//	err = tr.Start(ctx)
//	node, err := raftstore.New(raftstore.Config{..., Transport: tr, Forwarder: tr})
//	tr.SetLocal(node) // messages arriving before this are dropped
//	...
//	err = node.Stop(ctx)
//	err = tr.Stop(ctx)
//
// # Messages
//
// Send never blocks: each message goes to its peer's queue (Config.QueueSize), drained by one
// goroutine per peer that writes batches (Config.BatchSize, Config.MaxBatchBytes) to a
// long-lived client stream (Raft.Messages). A slow or dead peer only fills its own queue; then
// its messages are dropped and the local member is told with ReportUnreachable, once per peer
// and Send call. When a stream fails, the batch in flight is lost (raft retransmits), the peer
// is reported unreachable, and the sender reconnects after a backoff that doubles from
// Config.MinBackoff to Config.MaxBackoff. The receiving side hands messages to Local.Step in
// order; messages addressed to another raft ID (a stale address) are dropped.
//
// # Message size
//
// Peer connections send and accept gRPC messages of up to MaxMessageBytes (16 MiB), so an
// append carrying one entry of raftstore's default MaxEntryBytes (8 MiB), or a forwarded
// proposal of that size, fits in one message. The gRPC server must accept as much: create it
// with grpc.MaxRecvMsgSize(transport.MaxMessageBytes). A raft message too large even for that
// is dropped and logged alone, without breaking the stream it would have been sent on.
//
// # Snapshots
//
// A MsgSnap is sent on its own stream (Raft.Snapshot) by its own goroutine, at most one at a
// time per peer (a second one is reported failed at once; raft retries later): first the
// message without its snapshot data plus the data's size, then the data in Config.ChunkSize
// chunks, so a snapshot of any size fits under gRPC's message-size limit. The receiver checks
// the sizes, refuses snapshots above Config.MaxSnapshotSize before buffering, reassembles the
// message and steps it. Every MsgSnap is reported with ReportSnapshot: true once the receiver
// stepped it, false on any failure (including Filter drops, Stop and RemovePeer).
//
// # Forwarding
//
// Forward proposes data on the leader with a unary Raft.Propose call. The leader runs it through
// its Local (ProposeOnLeader when the Local is a LeaderProposer, so a proposal is never forwarded
// twice) and answers with the outcome encoded by internal/errdefs, so the error the follower
// gets matches the same sentinels (errdefs.ErrNotFound, ErrConflict, ErrNotLeader, ...) with
// errors.Is. An unreachable or unknown leader yields an error matching errdefs.ErrNotLeader:
// the caller finds the leader again and retries.
//
// # Fault injection
//
// Config.Dial replaces the TCP dialer (shoaltest uses in-memory pipes it can cut) and
// Config.Filter can drop or delay any outgoing message without blocking Send.
//
// # Time
//
// The reconnect back-off and Config.SnapshotTimeout run on Config.Clock (internal/clock; the
// real clock by default), so tests drive them with a clocktest.Fake. Three waits stay on the
// wall clock: gRPC's own connection back-off (inside grpc-go, configured from MinBackoff and
// MaxBackoff, which takes no clock), Config.Filter's delays (fault injection standing in for
// network latency, held with time.AfterFunc so that a held message costs no goroutine), and
// Forward's millisecond poll of the local applied index (a polling interval that decides no
// outcome; on a fake clock it would never poll).
//
// # Security
//
// Peer connections are mutual TLS: they use Config.Credentials, the node's client credentials
// from pki (or transport credentials in Config.DialOptions), and New refuses a Config with
// neither unless Config.Insecure asks for plain text, which is for tests only. The receiving
// side's security is the gRPC server's: a node serves the Raft service on its mTLS server,
// where internal/authz admits only manager certificates.
package transport
