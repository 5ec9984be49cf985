// Package network gives each container task of Shoal's runc runtime a
// network namespace of its own on a per-node bridge, with outbound
// masquerade and host-mode published ports, the way docker's default
// bridge network does. It is Linux only: elsewhere New returns an error
// wrapping errors.ErrUnsupported.
//
// # Usage
//
//	cfg := network.DefaultConfig()
//	cfg.StateDir = "/var/lib/shoal/network"
//	b, err := network.New(cfg)        // validates; touches nothing
//	err = b.Setup(ctx)                // bridge, forwarding, nftables, leases
//	att, err := b.Attach(ctx, taskID) // namespace at att.NetnsPath, address att.Addr
//	err = b.Publish(ctx, taskID, []network.PortMapping{{HostPort: 8080, Target: 80, Protocol: "tcp"}})
//	err = b.Detach(ctx, taskID)
//
// The runtime puts att.NetnsPath in the OCI spec as the task's network
// namespace (linux.namespaces: {type: network, path: ...}), so runc joins
// the namespace instead of creating one.
//
// # The kernel side
//
// In the host network namespace (Config.HostNetns, default the caller's):
//
//   - a bridge named Config.Bridge (up, MTU Config.MTU, MAC derived from
//     the gateway address) holding the first address of Config.Subnet, the
//     gateway;
//   - per attachment, a veth pair: the host end ("vsh" and 12 hex digits
//     derived from the bridge and the ID) is a port of the bridge, up, in
//     hairpin mode; the other end is eth0 in the attachment's namespace,
//     with the next free address of the pool, a MAC derived from it
//     (MACFor), IPv6 off, up, and a default route via the gateway; lo is
//     up too;
//   - net.ipv4.ip_forward=1, as docker sets it: containers' traffic to the
//     world and published ports' traffic from the world are forwarded.
//     Setup turns it on and nothing turns it off; other software on the
//     host may depend on it from then on;
//   - net.ipv4.conf.<bridge>.route_localnet=1, so that connections the
//     node opens to 127.0.0.1 at a published port can be DNATed to a
//     container (docker does the same without its userland proxy);
//   - one nftables table, ip shoal-nat-<bridge>.
//
// The Bridge owns the table. Setup declares it whole; Publish and Detach
// change only the entries of its ports map that differ, in netlink batches
// the kernel applies atomically (1024 entries each, so a range of
// thousands of ports takes a few, and an entry that does not change is
// never missing). With one port published it reads:
//
//	table ip shoal-nat-shoal0 {
//		map ports {	# protocol . host port : container address . target port
//			type inet_proto . inet_service : ipv4_addr . inet_service
//			elements = { tcp . 8080 : 172.31.0.2 . 80 }
//		}
//		chain prerouting {	# nat, dstnat: traffic arriving at the node
//			fib daddr type local dnat ip to meta l4proto . th dport map @ports
//		}
//		chain output {		# nat, dstnat: connections the node opens
//			fib daddr type local dnat ip to meta l4proto . th dport map @ports
//		}
//		chain postrouting {	# nat, srcnat
//			ip saddr 172.31.0.0/24 oifname != "shoal0" masquerade	# Config.Masquerade
//			oifname "shoal0" ip saddr 127.0.0.0/8 masquerade	# the node's 127.0.0.1 to a container
//			oifname "shoal0" ip saddr 172.31.0.0/24 ct status dnat masquerade	# hairpin
//		}
//		chain localnet {	# filter, raw priority
//			iifname "shoal0" ip daddr 127.0.0.0/8 drop	# containers never reach the node's loopback
//		}
//	}
//
// One hash lookup finds a packet's mapping however many ports are
// published. When a UDP mapping goes away (Publish without it, Detach),
// the conntrack entries of its flows are deleted too, so that they do not
// keep reaching the old container, or the next one given its address.
//
// A published port is reachable at every address of the host namespace,
// 127.0.0.1 included, from outside the node, from the node itself, and from
// containers on the bridge, their own port included.
//
// # On disk
//
// Everything lives under Config.StateDir/<bridge>/:
//
//	leases/<id>.json   one lease per attachment: address, host veth, published ports
//	netns/<id>         the bind mount of the attachment's network namespace
//
// A lease is written atomically (a temporary file, synced and renamed)
// before Attach creates anything, and removed last by Detach, so a crash at
// any point leaves a lease that Detach or Teardown can finish. The bind
// mount keeps the namespace alive with no process in it and outlives the
// host program: when it restarts while containers run (live restore), a
// new Bridge on the same StateDir loads the leases in Setup, programs their
// published ports again, never hands out their addresses, and can repair
// (Attach) or remove (Detach) them. After a reboot the leases remain but
// the namespaces are gone: Attach makes new ones at the same paths.
//
// # Several nodes in one process
//
// Bridges with distinct names share nothing: their tables, veth names and
// directories under StateDir are all derived from the name. Bridges in one
// host namespace need pools that do not overlap (Setup checks the
// addresses of the namespace's other interfaces); Bridges with their own
// HostNetns may even use the same name and pool. One bridge has one owner:
// from Setup to Close or Teardown a Bridge holds a lock on its bridge (a
// flock on /run/shoal-network/<bridge>@<namespace>.lock, which the kernel
// drops when the process dies), and a Bridge with another StateDir is
// refused by Setup, naming the owner's; one with the same StateDir is the
// same runtime started again and shares the leases.
//
// # Concurrency
//
// A Bridge is safe for concurrent use. The operations that change the
// kernel or StateDir (Setup, Attach, Detach, Publish, Teardown, Close) run
// one at a time, behind a semaphore that waiting callers leave when their
// context ends; Lookup and Attachments read a snapshot under a mutex that
// is never held across a kernel call, so they never wait for those. The
// package starts no long-lived goroutine: switching namespaces runs on a
// short-lived goroutine locked to its OS thread, which ends before the
// call returns.
//
// # Caveats
//
// Published ports are IPv4 only. A host whose forward chain drops by
// default (docker sets the iptables FORWARD policy to DROP, for one) must
// accept forwarding to and from the bridge; this package adds no filter
// rules beyond the loopback guard. With br_netfilter loaded, bridged
// traffic between containers also passes the host's iptables.
package network
