package network

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Chains of the bridge's table.
const (
	chainPrerouting  = "prerouting"  // nat, DNAT of published ports for traffic arriving at the node
	chainOutput      = "output"      // nat, DNAT of published ports for connections the node opens
	chainPostrouting = "postrouting" // nat, masquerade
	chainLocalnet    = "localnet"    // filter at raw priority, drops loopback destinations from the bridge
)

// Registers (NFT_REG_1 and NFT_REG_2 are the 16-byte ones).
const (
	reg1 = unix.NFT_REG_1
	reg2 = unix.NFT_REG_2
)

// ctStatusDNAT is IPS_DST_NAT, the conntrack status bit of a connection
// whose destination was rewritten.
const ctStatusDNAT = 1 << 5

var loopback = netip.MustParsePrefix("127.0.0.0/8")

// mapped is one published port of one attachment, as the ruleset needs it.
type mapped struct {
	addr netip.Addr
	port PortMapping
}

// ruleset is everything the bridge's table holds.
type ruleset struct {
	bridge     string
	subnet     netip.Prefix
	masquerade bool
	ports      []mapped
}

// nftConn opens an nftables connection in the namespace ns.
func nftConn(ns netns.NsHandle) (*nftables.Conn, error) {
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return nil, fmt.Errorf("network: nftables: %w", err)
	}
	return c, nil
}

func nftTable(bridge string) *nftables.Table {
	return &nftables.Table{Name: tableName(bridge), Family: nftables.TableFamilyIPv4}
}

// programTable replaces the whole table with rs in one netlink batch, which
// the kernel applies atomically: the table and chains are created if
// missing, the chains emptied and refilled.
func programTable(conn *nftables.Conn, rs ruleset) error {
	tbl := conn.AddTable(nftTable(rs.bridge))
	accept := nftables.ChainPolicyAccept
	chain := func(name string, typ nftables.ChainType, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
		c := conn.AddChain(&nftables.Chain{
			Name: name, Table: tbl, Type: typ,
			Hooknum: hook, Priority: prio, Policy: &accept,
		})
		conn.FlushChain(c)
		return c
	}
	pre := chain(chainPrerouting, nftables.ChainTypeNAT, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest)
	out := chain(chainOutput, nftables.ChainTypeNAT, nftables.ChainHookOutput, nftables.ChainPriorityNATDest)
	post := chain(chainPostrouting, nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource)
	localnet := chain(chainLocalnet, nftables.ChainTypeFilter, nftables.ChainHookPrerouting, nftables.ChainPriorityRaw)

	for _, m := range rs.ports {
		conn.AddRule(&nftables.Rule{Table: tbl, Chain: pre, Exprs: dnat(m)})
		conn.AddRule(&nftables.Rule{Table: tbl, Chain: out, Exprs: dnat(m)})
	}
	if rs.masquerade {
		conn.AddRule(&nftables.Rule{Table: tbl, Chain: post, Exprs: masqueradeOutbound(rs.bridge, rs.subnet)})
	}
	conn.AddRule(&nftables.Rule{Table: tbl, Chain: post, Exprs: masqueradeLoopback(rs.bridge)})
	conn.AddRule(&nftables.Rule{Table: tbl, Chain: post, Exprs: masqueradeHairpin(rs.bridge, rs.subnet)})
	conn.AddRule(&nftables.Rule{Table: tbl, Chain: localnet, Exprs: dropLoopbackFromBridge(rs.bridge)})
	return conn.Flush()
}

// deleteTable deletes the bridge's table; an absent table is not an error.
func deleteTable(conn *nftables.Conn, bridge string) error {
	tbl := nftTable(bridge)
	// Adding first makes the deletion succeed when the table is absent
	// (`nft add table; nft delete table`).
	conn.AddTable(tbl)
	conn.DelTable(tbl)
	return conn.Flush()
}

// tablePresent reports whether the bridge's table exists.
func tablePresent(conn *nftables.Conn, bridge string) (bool, error) {
	_, err := conn.ListTableOfFamily(tableName(bridge), nftables.TableFamilyIPv4)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.ENOENT):
		return false, nil
	default:
		return false, err
	}
}

// ifname is an interface name as nftables compares it: IFNAMSIZ bytes,
// zero-padded.
func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

func l4proto(protocol string) byte {
	if protocol == ProtocolUDP {
		return unix.IPPROTO_UDP
	}
	return unix.IPPROTO_TCP
}

// matchPrefix is `ip saddr PREFIX` (or daddr, at offset 16).
func matchPrefix(offset uint32, p netip.Prefix, op expr.CmpOp) []expr.Any {
	m := prefixMask(p.Bits())
	return []expr.Any{
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: m, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: op, Register: reg1, Data: p.Masked().Addr().AsSlice()},
	}
}

func prefixMask(bits int) []byte {
	v := ^uint32(0) << (32 - bits)
	if bits == 0 {
		v = 0
	}
	return binaryutil.BigEndian.PutUint32(v)
}

const (
	offSaddr = 12
	offDaddr = 16
)

func matchIfName(key expr.MetaKey, op expr.CmpOp, name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: reg1},
		&expr.Cmp{Op: op, Register: reg1, Data: ifname(name)},
	}
}

// dnat is `meta l4proto P th dport HOST fib daddr type local dnat to
// ADDR:TARGET`: a packet to one of the node's own addresses at the host
// port goes to the container.
func dnat(m mapped) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{l4proto(m.port.Protocol)}},
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.BigEndian.PutUint16(m.port.HostPort)},
		&expr.Fib{Register: reg1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
		&expr.Immediate{Register: reg1, Data: m.addr.AsSlice()},
		&expr.Immediate{Register: reg2, Data: binaryutil.BigEndian.PutUint16(m.port.Target)},
		&expr.NAT{
			Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4,
			RegAddrMin: reg1, RegProtoMin: reg2, Specified: true,
		},
	}
}

// masqueradeOutbound is `ip saddr POOL oifname != BRIDGE masquerade`:
// containers reach the world with the address of the interface their
// traffic leaves through.
func masqueradeOutbound(bridge string, pool netip.Prefix) []expr.Any {
	e := matchPrefix(offSaddr, pool, expr.CmpOpEq)
	e = append(e, matchIfName(expr.MetaKeyOIFNAME, expr.CmpOpNeq, bridge)...)
	return append(e, &expr.Masq{})
}

// masqueradeLoopback is `oifname BRIDGE ip saddr 127.0.0.0/8 masquerade`:
// a connection the node opens to 127.0.0.1 at a published port, DNATed to
// a container, leaves with the gateway's address, so the container's reply
// comes back to the node rather than to its own loopback.
func masqueradeLoopback(bridge string) []expr.Any {
	e := matchIfName(expr.MetaKeyOIFNAME, expr.CmpOpEq, bridge)
	e = append(e, matchPrefix(offSaddr, loopback, expr.CmpOpEq)...)
	return append(e, &expr.Masq{})
}

// masqueradeHairpin is `oifname BRIDGE ip saddr POOL ct status dnat
// masquerade`: a container that connects to a published port of its own
// node reaches the target container (or itself) from the gateway's
// address, so the reply goes back through the node, where conntrack undoes
// the DNAT, instead of straight across the bridge.
func masqueradeHairpin(bridge string, pool netip.Prefix) []expr.Any {
	e := matchIfName(expr.MetaKeyOIFNAME, expr.CmpOpEq, bridge)
	e = append(e, matchPrefix(offSaddr, pool, expr.CmpOpEq)...)
	e = append(e,
		&expr.Ct{Key: expr.CtKeySTATUS, Register: reg1},
		&expr.Bitwise{
			SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(ctStatusDNAT),
			Xor:  binaryutil.NativeEndian.PutUint32(0),
		},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Masq{},
	)
	return e
}

// dropLoopbackFromBridge is `iifname BRIDGE ip daddr 127.0.0.0/8 drop`, at
// raw priority, before conntrack: route_localnet, which the bridge needs
// for published ports on 127.0.0.1, would otherwise let containers reach
// services the node binds to its loopback. Replies to the node's own
// connections are addressed to the gateway until conntrack translates
// them, so they pass.
func dropLoopbackFromBridge(bridge string) []expr.Any {
	e := matchIfName(expr.MetaKeyIIFNAME, expr.CmpOpEq, bridge)
	e = append(e, matchPrefix(offDaddr, loopback, expr.CmpOpEq)...)
	return append(e, &expr.Verdict{Kind: expr.VerdictDrop})
}
