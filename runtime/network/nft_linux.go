package network

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
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

// Registers: nftables has four 16-byte registers, also addressed as
// sixteen 4-byte ones (NFT_REG32_00 is the first four bytes of NFT_REG_1).
// A concatenation (protocol . port) is built in consecutive 4-byte
// registers, and a map lookup writes its concatenated value (address .
// port) the same way, so the port lands in the second 4-byte register.
const (
	reg1      = unix.NFT_REG_1
	reg32Port = unix.NFT_REG32_00 + 1
)

// portsMap is the map, in the bridge's table, from protocol . host port to
// the container's address . target port.
const portsMap = "ports"

// ctStatusDNAT is IPS_DST_NAT, the conntrack status bit of a connection
// whose destination was rewritten.
const ctStatusDNAT = 1 << 5

var loopback = netip.MustParsePrefix("127.0.0.0/8")

// ruleset is everything the bridge's table holds.
type ruleset struct {
	bridge     string
	subnet     netip.Prefix
	masquerade bool
	ports      portTable
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

// programTable makes the bridge's table hold rs, given have, what its
// ports map holds now. With declare, the first netlink batch declares the
// table, its chains (emptied and refilled) and the map, with the first
// changes to the map; without, only the map changes. The kernel applies
// each batch atomically. Changes to more than
// maxElemsPerBatch map entries take more batches, each applying whole
// entries, so an entry that does not change is never missing and one that
// does change goes straight from its old value to its new one. It returns
// what the map holds afterwards, which on error may be part of the way.
func programTable(conn *nftables.Conn, rs ruleset, have portTable, declare bool) (portTable, error) {
	tbl := nftTable(rs.bridge)
	ports := portsSet(tbl)
	if declare {
		if err := declareTable(conn, rs, ports); err != nil {
			return have, err
		}
	}

	now := maps.Clone(have)
	if now == nil {
		now = portTable{}
	}
	batches := planMapBatches(have, rs.ports, maxElemsPerBatch)
	if len(batches) == 0 && declare {
		batches = []mapBatch{{}} // the declarations alone
	}
	for _, mb := range batches {
		if len(mb.dels) > 0 {
			elems := make([]nftables.SetElement, len(mb.dels))
			for i, k := range mb.dels {
				elems[i] = nftables.SetElement{Key: elemKey(k)}
			}
			if err := conn.SetDeleteElements(ports, elems); err != nil {
				return now, err
			}
		}
		if len(mb.adds) > 0 {
			elems := make([]nftables.SetElement, len(mb.adds))
			for i, k := range mb.adds {
				elems[i] = nftables.SetElement{Key: elemKey(k), Val: elemVal(rs.ports[k])}
			}
			if err := conn.SetAddElements(ports, elems); err != nil {
				return now, err
			}
		}
		if err := conn.Flush(); err != nil {
			return now, err
		}
		for _, k := range mb.dels {
			delete(now, k)
		}
		for _, k := range mb.adds {
			now[k] = rs.ports[k]
		}
	}
	return now, nil
}

// declareTable queues the table, its chains, emptied and refilled with
// their rules, and the ports map (created if missing, left as it is
// otherwise).
func declareTable(conn *nftables.Conn, rs ruleset, ports *nftables.Set) error {
	tbl := conn.AddTable(ports.Table)
	if err := conn.AddSet(ports, nil); err != nil {
		return err
	}
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

	conn.AddRule(&nftables.Rule{Table: tbl, Chain: pre, Exprs: dnatMap(ports)})
	conn.AddRule(&nftables.Rule{Table: tbl, Chain: out, Exprs: dnatMap(ports)})
	if rs.masquerade {
		conn.AddRule(&nftables.Rule{Table: tbl, Chain: post, Exprs: masqueradeOutbound(rs.bridge, rs.subnet)})
	}
	conn.AddRule(&nftables.Rule{Table: tbl, Chain: post, Exprs: masqueradeLoopback(rs.bridge)})
	conn.AddRule(&nftables.Rule{Table: tbl, Chain: post, Exprs: masqueradeHairpin(rs.bridge, rs.subnet)})
	conn.AddRule(&nftables.Rule{Table: tbl, Chain: localnet, Exprs: dropLoopbackFromBridge(rs.bridge)})
	return nil

}

func portsSet(tbl *nftables.Table) *nftables.Set {
	return &nftables.Set{
		Table: tbl, ID: 1, Name: portsMap, IsMap: true,
		KeyType:  nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService),
		DataType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService),
	}
}

// readPorts returns what the bridge's ports map holds; nothing if the
// table or the map does not exist.
func readPorts(conn *nftables.Conn, bridge string) (portTable, error) {
	present, err := tablePresent(conn, bridge)
	if err != nil || !present {
		return portTable{}, err
	}
	set, err := conn.GetSetByName(nftTable(bridge), portsMap)
	if errors.Is(err, unix.ENOENT) {
		return portTable{}, nil
	}
	if err != nil {
		return nil, err
	}
	elems, err := conn.GetSetElements(set)
	if err != nil {
		return nil, err
	}
	t := make(portTable, len(elems))
	for _, e := range elems {
		if len(e.Key) != 8 || len(e.Val) != 8 {
			return nil, fmt.Errorf("map %s: element of unexpected size (key %d, value %d bytes)", portsMap, len(e.Key), len(e.Val))
		}
		k := portKey{proto: e.Key[0], port: binary.BigEndian.Uint16(e.Key[4:])}
		t[k] = portTarget{addr: netip.AddrFrom4([4]byte(e.Val[:4])), port: binary.BigEndian.Uint16(e.Val[4:])}
	}
	return t, nil
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

// elemKey is the ports map key of k: protocol . port, each padded to
// 4 bytes as the registers hold them.
func elemKey(k portKey) []byte {
	b := make([]byte, 8)
	b[0] = k.proto
	binary.BigEndian.PutUint16(b[4:], k.port)
	return b
}

// elemVal is the ports map value of t: address . port.
func elemVal(t portTarget) []byte {
	b := make([]byte, 8)
	copy(b, t.addr.AsSlice())
	binary.BigEndian.PutUint16(b[4:], t.port)
	return b
}

// dnatMap is `fib daddr type local dnat ip to meta l4proto . th dport map
// @ports`: a packet to one of the node's own addresses at a published port
// goes to the container's address and target port, one hash lookup
// however many ports are published.
func dnatMap(m *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Fib{Register: reg1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Payload{DestRegister: reg32Port, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: reg1, DestRegister: reg1, IsDestRegSet: true, SetName: m.Name, SetID: m.ID},
		&expr.NAT{
			Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4,
			RegAddrMin: reg1, RegProtoMin: reg32Port, Specified: true,
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
