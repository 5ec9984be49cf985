// Package nft is the nftables balancer of Shoal's routing mesh: it
// implements ingress.Balancer in the kernel, with
// github.com/google/nftables over netlink.
//
// For each published port of the table it is given, the balancer DNATs new
// connections and UDP flows addressed to any of the node's own addresses
// (fib daddr type local) to the port's endpoints, round robin in the kernel
// (numgen inc mod N over a constant map), and masquerades what it DNATed, so
// that endpoints on other nodes reply through this node. Conntrack keeps
// established connections on their endpoint across updates. A port with no
// endpoints drops its packets.
//
// The whole ruleset lives in one table of family inet (Config.TableName,
// default "shoal-ingress") that the balancer owns:
//
//	table inet shoal-ingress {
//		chain prerouting  { type nat hook prerouting priority dstnat; ... }  // traffic arriving at the node
//		chain output      { type nat hook output priority dstnat; ... }      // connections the node opens itself
//		chain postrouting { type nat hook postrouting priority srcnat; ... } // ct status dnat masquerade
//	}
//
// Every Apply is one netlink batch that the kernel applies atomically: the
// table is created if missing and its chains are emptied and refilled.
// Applying the table last applied sends nothing. Stop deletes the table.
//
// # Requirements
//
// Programming nftables needs CAP_NET_ADMIN in the target network namespace
// (Config.NetNS, default the caller's). Traffic to endpoints on other nodes
// is forwarded, so the host must have net.ipv4.ip_forward=1 (and
// net.ipv6.conf.all.forwarding=1 for IPv6 endpoints); the balancer does not
// change sysctls. Connections the node opens to its own published port are
// balanced too; on 127.0.0.1 they reach only endpoints the kernel will
// route a loopback source to (normally none off-host, unless
// route_localnet is set), so use one of the node's other addresses.
//
// # Caveats
//
// `nft list` prints the round-robin map's keys byte-swapped (for example
// 16777216 for 1): the library labels anonymous map keys big-endian, while
// numgen yields host-endian numbers. The kernel compares bytes, so
// balancing is correct; only the listing looks odd.
package nft
