// Package membership runs on the Raft leader and keeps the manager
// membership moving forward: it records in the object store which manager
// leads (ManagerStatus.Leader on the manager nodes), and it promotes Raft
// learners (managers that joined and are receiving the log) to voters once
// they have caught up with the leader's log, so a new manager never counts
// toward the quorum before it can vote usefully.
//
// One Reconciler runs per leadership term: the node creates it with New when
// it becomes leader, calls Start, and calls Stop when it loses leadership.
// Each round (one at Start, then one every Config.Interval on Config.Clock)
// it
//
//   - marks this manager as the leader in the store, and every other manager
//     as not the leader, until that write has succeeded once in the term (a
//     failed write is tried again the next round);
//   - records each manager's reachability (ManagerStatus.Reachability:
//     reachable when the leader heard from it within an election timeout,
//     raftstore.Member.RecentActive), writing only what changed: docker node
//     ls's Reachable and Unreachable, and the liveness of managers that run
//     no agent;
//   - asks the Raft member for the configuration and, for each learner that
//     Raft reports caught up (raftstore.Node.CaughtUp), proposes its
//     promotion; a promotion that fails is tried again the next round, since
//     the learner is still a learner.
//
// A round costs one Members call, one CaughtUp call per learner, one read
// of the manager nodes for reachability (a write only when one changed) and,
// while the leader mark is pending, one store transaction over the manager
// nodes.
//
// # Concurrency
//
// A Reconciler owns one goroutine, started by Start and ended by Stop; every
// round runs on it, so rounds never overlap and the Raft and store calls of
// one round are made one after the other. Start and Stop may be called from
// any goroutine. The Raft member given to New is called only from the
// Reconciler's goroutine, with a context that Stop cancels.
//
// # Failover
//
// A Reconciler keeps no state the store and the Raft configuration cannot
// rebuild: the only thing it remembers is whether it has marked the leader
// in this term, and a new leader's Reconciler marks itself again. Learners
// that were not promoted when leadership moved are promoted by the next
// leader, which reads the same Raft configuration.
package membership
