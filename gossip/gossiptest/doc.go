// Package gossiptest runs many gossip members in one process: an in-memory
// network (MemNetwork) whose MemTransports implement memberlist.Transport,
// so each member is given one as gossip.Config.Transport (or shoal's
// MeshConfig.GossipTransport) instead of binding UDP and TCP ports. It is
// meant for test harnesses and examples, such as shoaltest's clusters.
//
// Packets (memberlist's UDP) are delivered through buffered channels, lost
// with a settable probability (SetLoss) and counted (Stats); streams
// (memberlist's TCP) are reliable in-memory pipes whose writes never wait
// for the reader, like a socket's send buffer. Isolate cuts one member off,
// packets and new streams alike, as if its host lost its network.
//
// A MemNetwork and its transports are safe for concurrent use. Packet loss
// draws from a random source seeded by NewMemNetwork, though which packets
// are lost still depends on the order in which members send them.
package gossiptest
