package nft

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/shoalhq/shoal/ingress"
)

// Chain names inside the balancer's table.
const (
	chainPrerouting  = "prerouting"
	chainOutput      = "output"
	chainPostrouting = "postrouting"
)

// Registers: nftables has four 16-byte registers, also addressed as sixteen
// 4-byte ones (NFT_REG32_00 = 8 ...). A map lookup writes its concatenated
// value (address, then port padded to 4 bytes) from register 1 on, so the
// port lands in the 4-byte register just after the address.
const (
	reg1       = unix.NFT_REG_1
	reg32Base  = unix.NFT_REG32_00
	regPortIP4 = reg32Base + 1 // after a 4-byte IPv4 address
	regPortIP6 = reg32Base + 4 // after a 16-byte IPv6 address
)

// ctStatusDNAT is IPS_DST_NAT, the conntrack status bit of a connection
// whose destination was rewritten.
const ctStatusDNAT = 1 << 5

// rtnLocal is RTN_LOCAL, the fib address type of the node's own addresses.
const rtnLocal = unix.RTN_LOCAL

// Balancer balances published ports in the kernel with nftables: for each
// published port, DNAT of every new connection or UDP flow addressed to the
// node, chosen round-robin (numgen inc) among the port's endpoints, and
// masquerade of what is DNATed, so replies from endpoints on other nodes
// come back through this one. Established connections are tracked by
// conntrack and keep their endpoint across updates.
//
// Everything lives in one table (family inet) owned by the balancer. The
// host must forward IPv4 (net.ipv4.ip_forward=1) and, for IPv6 endpoints,
// IPv6 (net.ipv6.conf.all.forwarding=1) for traffic to endpoints on other
// nodes; the balancer does not change sysctls.
//
// A Balancer is safe for concurrent use; Apply and Stop calls are
// serialized.
type Balancer struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	last    plan // what the kernel holds, valid when applied
	applied bool
	stopped bool
	cleaned bool
}

var _ ingress.Balancer = (*Balancer)(nil)

// New validates cfg and returns a balancer. It touches neither the kernel
// nor the namespace: the table is created by the first Apply.
func New(cfg Config) (*Balancer, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Balancer{cfg: c, log: c.Logger.With("component", "ingress/nft", "table", c.TableName)}, nil
}

// Apply replaces the balancer's whole ruleset with the one for t, in one
// netlink batch that the kernel applies atomically: the table is created if
// missing, its chains emptied and refilled. Applying the table that was last
// applied does nothing (beyond checking that the table is still there).
// Ports that fail validation are left out and reported as
// *ingress.PortError values, joined; the rest is applied. Connections
// already established keep their endpoint (conntrack), even one removed
// from t. The netlink exchange itself cannot be interrupted, so ctx is
// checked before it starts. Apply after Stop returns ingress.ErrStopped.
func (b *Balancer) Apply(ctx context.Context, t ingress.Table) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopped {
		return ingress.ErrStopped
	}
	p, portErrs := makePlan(t)
	if portErrs != nil {
		b.log.Warn("ports left out", "err", portErrs)
	}
	conn, closeConn, err := b.dial()
	if err != nil {
		return errors.Join(err, portErrs)
	}
	defer closeConn()
	if b.applied && b.last.equal(p) {
		present, err := b.tablePresent(conn)
		if err == nil && present {
			return portErrs
		}
		b.log.Warn("table vanished; programming it again", "err", err)
	}
	if err := ctx.Err(); err != nil {
		return errors.Join(err, portErrs)
	}
	if err := b.program(conn, p); err != nil {
		return errors.Join(fmt.Errorf("nft: apply to table inet %s: %w", b.cfg.TableName, err), portErrs)
	}
	b.last, b.applied = p, true
	b.log.Debug("ruleset applied", "ports", len(p))
	return portErrs
}

// Stop deletes the balancer's table in one batch, whether or not this
// balancer created it. Connections already DNATed keep flowing until their
// conntrack entries expire, but new ones to a published port are no longer
// balanced. Stop is idempotent: once the table is deleted, later calls
// return nil; after a failure, calling again retries. ctx is checked before
// the netlink exchange starts.
func (b *Balancer) Stop(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.stopped = true
	if b.cleaned {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	conn, closeConn, err := b.dial()
	if err != nil {
		return err
	}
	defer closeConn()
	tbl := b.table()
	// Adding the table first makes the deletion succeed when it is absent
	// (the usual idiom of `nft add table; nft delete table`).
	conn.AddTable(tbl)
	conn.DelTable(tbl)
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("nft: delete table inet %s: %w", b.cfg.TableName, err)
	}
	b.cleaned, b.applied, b.last = true, false, nil
	b.log.Debug("table deleted")
	return nil
}

// dial opens a netlink connection to nftables in the configured namespace.
func (b *Balancer) dial() (*nftables.Conn, func(), error) {
	if b.cfg.NetNS == "" {
		c, err := nftables.New()
		if err != nil {
			return nil, nil, fmt.Errorf("nft: open netlink: %w", err)
		}
		return c, func() {}, nil
	}
	f, err := os.Open(b.cfg.NetNS)
	if err != nil {
		return nil, nil, fmt.Errorf("nft: Config.NetNS: %w", err)
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		_ = f.Close()
		return nil, nil, fmt.Errorf("nft: open netlink in %s: %w", b.cfg.NetNS, err)
	}
	return c, func() { _ = f.Close() }, nil
}

func (b *Balancer) table() *nftables.Table {
	return &nftables.Table{Name: b.cfg.TableName, Family: nftables.TableFamilyINet}
}

func (b *Balancer) tablePresent(conn *nftables.Conn) (bool, error) {
	_, err := conn.ListTableOfFamily(b.cfg.TableName, nftables.TableFamilyINet)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.ENOENT):
		return false, nil
	default:
		return false, err
	}
}

// program queues the whole ruleset of p on conn and flushes it as one batch.
func (b *Balancer) program(conn *nftables.Conn, p plan) error {
	tbl := conn.AddTable(b.table())
	policy := nftables.ChainPolicyAccept
	chain := func(name string, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
		c := conn.AddChain(&nftables.Chain{
			Name: name, Table: tbl, Type: nftables.ChainTypeNAT,
			Hooknum: hook, Priority: prio, Policy: &policy,
		})
		conn.FlushChain(c)
		return c
	}
	pre := chain(chainPrerouting, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest)
	out := chain(chainOutput, nftables.ChainHookOutput, nftables.ChainPriorityNATDest)
	post := chain(chainPostrouting, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource)

	var setID uint32 // set IDs only need to be unique within the batch
	for _, pp := range p {
		for _, fam := range []struct {
			nfproto byte
			eps     []netip.AddrPort
		}{{unix.NFPROTO_IPV4, pp.v4}, {unix.NFPROTO_IPV6, pp.v6}} {
			for _, c := range []*nftables.Chain{pre, out} {
				exprs := matchPublished(fam.nfproto, pp.port)
				if len(fam.eps) == 0 {
					// No endpoint of this family: the port is published but
					// has nowhere to go, so its packets are dropped rather
					// than reaching whatever listens on the node.
					exprs = append(exprs, &expr.Verdict{Kind: expr.VerdictDrop})
				} else {
					setID++
					m, elems := endpointMap(tbl, setID, fam.eps)
					if err := conn.AddSet(m, elems); err != nil {
						return fmt.Errorf("port %s: %w", pp.port, err)
					}
					exprs = append(exprs, dnatRoundRobin(fam.nfproto, m, len(fam.eps))...)
				}
				conn.AddRule(&nftables.Rule{Table: tbl, Chain: c, Exprs: exprs})
			}
		}
		conn.AddRule(&nftables.Rule{Table: tbl, Chain: post, Exprs: masqueradeDNATed(pp.port)})
	}
	return conn.Flush()
}

func l4proto(p ingress.Protocol) byte {
	if p == ingress.UDP {
		return unix.IPPROTO_UDP
	}
	return unix.IPPROTO_TCP
}

// matchPublished is `meta nfproto F meta l4proto P th dport N fib daddr type
// local`: a packet of the family to the published port of one of the node's
// own addresses (not traffic the node merely routes).
func matchPublished(nfproto byte, p ingress.Port) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{nfproto}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{l4proto(p.Protocol)}},
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.BigEndian.PutUint16(p.Published)},
		&expr.Fib{Register: reg1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(rtnLocal)},
	}
}

// endpointMap is the anonymous constant map { 0: addr0 . port0, 1: ... }
// from the round-robin counter to the endpoints, in table order.
func endpointMap(tbl *nftables.Table, id uint32, eps []netip.AddrPort) (*nftables.Set, []nftables.SetElement) {
	addrType := nftables.TypeIPAddr
	if !eps[0].Addr().Is4() {
		addrType = nftables.TypeIP6Addr
	}
	m := &nftables.Set{
		Table: tbl, ID: id, Name: "__map%d",
		Anonymous: true, Constant: true, IsMap: true,
		KeyType:      nftables.TypeInteger,
		KeyByteOrder: binaryutil.NativeEndian,
		DataType:     nftables.MustConcatSetType(addrType, nftables.TypeInetService),
	}
	elems := make([]nftables.SetElement, len(eps))
	for i, ep := range eps {
		a := ep.Addr().AsSlice()
		val := make([]byte, len(a)+4) // the port is padded to a register's 4 bytes
		copy(val, a)
		binary.BigEndian.PutUint16(val[len(a):], ep.Port())
		elems[i] = nftables.SetElement{Key: binaryutil.NativeEndian.PutUint32(uint32(i)), Val: val}
	}
	return m, elems
}

// dnatRoundRobin is `dnat ip to numgen inc mod N map @m`.
func dnatRoundRobin(nfproto byte, m *nftables.Set, n int) []expr.Any {
	portReg := uint32(regPortIP4)
	if nfproto == unix.NFPROTO_IPV6 {
		portReg = regPortIP6
	}
	return []expr.Any{
		&expr.Numgen{Register: reg1, Type: unix.NFT_NG_INCREMENTAL, Modulus: uint32(n)},
		&expr.Lookup{SourceRegister: reg1, DestRegister: reg1, IsDestRegSet: true, SetName: m.Name, SetID: m.ID},
		&expr.NAT{
			Type: expr.NATTypeDestNAT, Family: uint32(nfproto),
			RegAddrMin: reg1, RegProtoMin: portReg, Specified: true,
		},
	}
}

// masqueradeDNATed is `meta l4proto P ct original proto-dst N ct status dnat
// masquerade`: connections this port DNATed leave with the node's address,
// so an endpoint on another node replies through this one, where conntrack
// undoes both translations.
func masqueradeDNATed(p ingress.Port) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{l4proto(p.Protocol)}},
		&expr.Ct{Key: expr.CtKeyPROTODST, Direction: 0, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.BigEndian.PutUint16(p.Published)},
		&expr.Ct{Key: expr.CtKeySTATUS, Register: reg1},
		&expr.Bitwise{
			SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(ctStatusDNAT),
			Xor:  binaryutil.NativeEndian.PutUint32(0),
		},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Masq{},
	}
}
