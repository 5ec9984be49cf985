package network

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// pool hands out the container addresses of a subnet: those after the
// gateway (the first address) and before the broadcast address. It is
// not safe for concurrent use; the Bridge guards it.
type pool struct {
	subnet netip.Prefix
	first  uint32 // first container address
	last   uint32 // last container address
	next   uint32 // where the next search starts
	used   map[uint32]string
}

func newPool(subnet netip.Prefix) *pool {
	base := u32(subnet.Addr())
	size := uint32(1) << (32 - subnet.Bits())
	return &pool{
		subnet: subnet,
		first:  base + 2,
		last:   base + size - 2,
		next:   base + 2,
		used:   map[uint32]string{},
	}
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

func addr4(v uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// gateway is the subnet's first address, the bridge's.
func (p *pool) gateway() netip.Addr { return p.subnet.Addr().Next() }

// size is the number of container addresses.
func (p *pool) size() int { return int(p.last - p.first + 1) }

// inRange reports whether a is a container address of the pool.
func (p *pool) inRange(a netip.Addr) bool {
	if !a.Is4() {
		return false
	}
	v := u32(a)
	return v >= p.first && v <= p.last
}

// reserve marks a as used by id. It fails if a is not a container address
// of the pool or is used by another ID.
func (p *pool) reserve(a netip.Addr, id string) error {
	if !p.inRange(a) {
		return fmt.Errorf("address %s is not a container address of pool %s", a, p.subnet)
	}
	if other, ok := p.used[u32(a)]; ok && other != id {
		return fmt.Errorf("address %s is already leased to %q", a, other)
	}
	p.used[u32(a)] = id
	return nil
}

// allocate reserves the next free address for id, searching on from the
// address after the last one handed out, so a released address is reused
// only once the rest of the pool has been.
func (p *pool) allocate(id string) (netip.Addr, error) {
	if len(p.used) >= p.size() {
		return netip.Addr{}, fmt.Errorf("pool %s: all %d container addresses are leased: %w", p.subnet, p.size(), ErrPoolExhausted)
	}
	v := p.next
	for {
		if _, ok := p.used[v]; !ok {
			break
		}
		if v == p.last {
			v = p.first
		} else {
			v++
		}
	}
	p.used[v] = id
	if v == p.last {
		p.next = p.first
	} else {
		p.next = v + 1
	}
	return addr4(v), nil
}

// release frees a if id holds it.
func (p *pool) release(a netip.Addr, id string) {
	if a.Is4() && p.used[u32(a)] == id {
		delete(p.used, u32(a))
	}
}
