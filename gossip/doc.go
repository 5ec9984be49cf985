// Package gossip is the routing mesh's endpoint table: every node runs a
// hashicorp/serf member and holds the table of every running, healthy task
// endpoint in the cluster, spread by gossip.
//
// # Usage
//
// Create a Node with New (a Config from DefaultConfig, NodeID and the
// cluster's Keys set), Start it, Join any existing member, then call
// SetLocal whenever this node's own running tasks change. Balancers read
// Table after each signal from Watch. To drain a task, withdraw its
// endpoints with SetLocal, then call Confirm: it returns once every other
// live member's table holds the change, and the task can be stopped. Stop
// leaves the cluster gracefully; Kill shuts down without leaving, as a
// crash would (for tests).
//
// A BindAddr with port 0 ("127.0.0.1:0") lets the kernel choose a free port,
// bound for both TCP and UDP (retried with another port if the UDP one is
// taken); Addr reports it after Start.
//
// # Design
//
// Membership, failure detection, leave, encryption and key rotation are
// serf's: members gossip over memberlist, encrypted with the AES-256 keys in
// Config.Keys; RotateKeys drives serf's KeyManager (install, use, remove)
// with serf queries. SetKeys instead sets one member's keyring to an exact
// list with no query, for a manager that distributes keys itself and moves
// the cluster in phases: [A, B] everywhere, then [B, A], then [B]. A member
// that misses the last phases is cut off (it can no longer decrypt anything)
// until it is given the new key; serf's reconnect (ReconnectInterval) then
// brings it back without a new Join.
//
// Each node is the sole author of its own endpoint set and numbers its
// versions. The counter starts from Config.Clock's time at New (nanoseconds;
// the wall clock by default), so a restarted node outranks its previous
// incarnation; the highest version wins.
// The table holds, per live member, its set and version.
//
//   - Deltas. A change made by SetLocal is split into delta messages, each one
//     version step and small enough (under 1 KiB) for one serf user event and
//     thus one UDP packet; serf gossips them with retransmission. Receivers
//     apply a delta only on top of the version it starts from, buffer ones
//     that arrive early and, if a gap does not fill within PullDelay, pull
//     the author's whole set over a stream.
//   - Announcements. A change larger than MaxDeltaChunks messages is gossiped
//     as "node X is at version V" only, and every member pulls X's set.
//   - Version digests. Every DigestInterval each member sends GossipNodes
//     random peers one packet listing versions it holds: its own, those of
//     the members that changed most recently, and a rotating share of the
//     rest (under 1.1 KiB whatever the cluster size). A member that missed a
//     delta sees within a round or two that it is behind and, after
//     PullDelay, pulls the set from the peer that reported it, so gossip's
//     rare misses are repaired in about a second rather than at the next
//     anti-entropy round. Digest packets start with a byte memberlist never
//     sends and are sealed like the streams below.
//   - Anti-entropy. Every PushPullInterval each member runs a two-way sync
//     with a random peer over a stream: it sends its digest (node → version),
//     receives the sets it lacks with the peer's digest, and pushes back the
//     sets the peer lacks. This repairs any lost gossip. Streams have no size
//     limit, so the table can grow without bound while no gossip packet
//     exceeds memberlist's UDP buffer.
//   - Joiners. Join runs a full sync with a contacted member before returning,
//     so a new member holds the whole table at once; the others pull the
//     joiner's set when serf tells them it joined.
//   - Departures. When serf reports a member failed or left, every member
//     drops its endpoints at once and refuses its state (from stale gossip or
//     anti-entropy) until serf reports it alive again. With the default
//     probe settings a dead member is declared in about 2-4 s, well inside a
//     manager's heartbeat timeout.
//   - Confirmation. Confirm sends a serf query naming this node's current
//     version to every member; each answers once its table holds that
//     version, pulling the set first if it missed the gossip. Silent live
//     members are asked again after each query's deadline; members that
//     fail or leave stop counting. A member running a build without Confirm
//     never answers, so Confirm then waits for its ctx.
//
// The table's streams share serf's transport: they start with a byte
// memberlist never sends and are sealed with AES-GCM under the live
// keyring's primary key (opened with any installed key), so rotation, by
// RotateKeys or SetKeys, covers them too.
//
// # Time
//
// Config.Clock (RealClock when nil) drives the node's own loops: the timers
// of version digests and anti-entropy, when scheduled pulls fall due, and
// how long a have query waits to be answered; it also seeds the version
// counter. Serf's and memberlist's timers (gossip rounds, probes and
// suspicion, their push-pull, reconnect and reap intervals, query timeouts,
// the leave's waits) and stream deadlines stay on the wall clock: they are
// inside those libraries or the network. A fake clock therefore holds this
// package's repair loops still while membership and gossip run on.
//
// # Lifecycle and concurrency
//
// New starts nothing. Start starts every goroutine the node runs (the event
// loop, the digest, pull, anti-entropy and confirm loops, the pull workers
// and the transport's routing) and Stop or Kill ends them all before it
// returns. The exceptions are the serf calls that cannot be interrupted:
// a join or a leave whose ctx ends first ends in the background, within a
// bound set by Config (see Join and Stop). Node's methods are safe for
// concurrent use.
//
// # Testing
//
// Package gossiptest provides an in-memory network (MemNetwork) whose
// transports go in Config.Transport, with packet loss and isolation, so
// tests run dozens of members in one process.
//
// # Caveats
//
// Version ordering across restarts relies on the clock (the wall clock by
// default) not going backwards between incarnations. Endpoints are trusted from any holder of
// the cluster key; a member can only publish under its own serf name, but
// the key holders are not otherwise authenticated.
package gossip
