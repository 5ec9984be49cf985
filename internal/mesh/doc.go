// Package mesh is a node's part of the routing mesh: its gossip member,
// which spreads the endpoints of the node's running tasks, and the balancer
// that makes every published ingress port answer on the node, fed from the
// gossip table.
//
// # Concurrency
//
// A Mesh's methods are safe for concurrent use. It runs two goroutines,
// started by Start and ended by Stop: the apply loop (every table change to
// the balancer) and the sync loop (keys and peers from Config.Source; rejoin
// when alone). mu guards the applied keys, the known peers and stopped;
// keysMu serializes applying keys. A join waits at most 5s and Stop ends
// the wait at once; serf's join call, which cannot be interrupted, then
// runs on in the background within gossip's StreamTimeout per peer.
package mesh
