// Package ipvs is the IPVS balancer of Shoal's routing mesh: it implements
// ingress.Balancer in the kernel's IP Virtual Server, with
// github.com/moby/ipvs over generic netlink.
//
// For each published port of the table it is given, the balancer keeps one
// virtual server at (Config.VIP, protocol, port) whose real servers are the
// port's endpoints, each with weight 1, scheduled round robin ("rr", see
// Config.Scheduler) and forwarded by masquerading (NAT), so endpoints on
// other nodes reply through this node. In ipvsadm's terms, a table with TCP
// port 8080 on two tasks becomes:
//
//	-A -t 192.0.2.10:8080 -s rr
//	-a -t 192.0.2.10:8080 -r 10.0.1.5:80 -m -w 1
//	-a -t 192.0.2.10:8080 -r 10.0.2.7:80 -m -w 1
//
// Every Apply lists the kernel's virtual servers, reads the real servers of
// those the balancer owns, diffs them with the table and sends only the
// differences: new real servers are added before removed ones are deleted,
// an unchanged table writes nothing, and changes made behind the balancer's
// back to its own virtual servers are undone. Stop deletes the balancer's
// virtual servers.
//
// # Ownership
//
// The balancer remembers, in memory, the virtual servers it created and
// never touches any other: virtual servers at other addresses, firewall-mark
// services, and one already present at the VIP on a port it is asked for
// (reported as a *ingress.PortError) are left alone. A virtual server left
// behind by a previous process that exited without Stop is therefore not
// recognised; set Config.AdoptExisting to take such servers over.
//
// # Requirements
//
// Programming IPVS needs CAP_NET_ADMIN in the target network namespace
// (Config.NetNS, default the caller's) and a kernel with the ip_vs module
// and the schedulers used (ip_vs_rr by default). github.com/moby/ipvs runs
// `modprobe -va ip_vs` once per process when the first handle is opened.
// IPVS only balances packets addressed to the VIP; the VIP must be one of
// the node's addresses (or routed to it), and traffic to endpoints on other
// nodes needs net.ipv4.ip_forward=1 and, because IPVS masquerading
// rewrites only the destination while replies must come back through this
// node, net.ipv4.vs.conntrack=1 with a source-NAT (masquerade) rule for the
// balanced traffic in the host's firewall, unless the endpoints route back
// through this node anyway (a local bridge, for instance). The balancer
// changes no sysctl and no firewall rule, so the host controls that
// policy.
//
// # Caveats
//
// Only endpoints of the VIP's address family are used; others are reported
// as a *ingress.PortError and left out, and the port is balanced across the
// rest. github.com/moby/ipvs logs the failure to find the IPVS netlink
// family through logrus's standard logger, outside the balancer's
// Config.Logger.
package ipvs
