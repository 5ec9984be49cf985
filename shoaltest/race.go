//go:build race

package shoaltest

// slow stretches the cluster's short test timings (heartbeat, Raft tick,
// gossip probes, drain delay) under the race detector, which slows
// everything several times: with the plain timings a loaded machine makes
// healthy nodes miss heartbeats (their tasks are replaced), managers lose
// leadership, and endpoint removals outlast the drain delay.
const slow = 5 // in halves: 2.5 times
