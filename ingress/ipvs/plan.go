package ipvs

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/moby/ipvs"

	"github.com/shoalhq/shoal/ingress"
)

// svcKey identifies a virtual server of the balancer: the address is always
// Config.VIP, so protocol and port number are enough.
type svcKey struct {
	proto ingress.Protocol
	port  uint16
}

func keyOfPort(p ingress.Port) svcKey { return svcKey{p.Protocol, p.Published} }

func (k svcKey) compare(o svcKey) int {
	return cmp.Or(cmp.Compare(k.proto, o.proto), cmp.Compare(k.port, o.port))
}

// portPlan is the validated, canonical form of one published port: one
// virtual server whose real servers are dests, in the table's order (the
// round-robin order), without duplicates, all of the VIP's family.
type portPlan struct {
	port  ingress.Port
	dests []netip.AddrPort
}

// plan is the validated, canonical form of a whole table, sorted by protocol
// and port number.
type plan []portPlan

// makePlan validates t and returns the plan of its valid ports and, joined,
// a *ingress.PortError for each port left out or partly left out. An
// endpoint of the other address family than vip cannot be reached through
// a masquerading virtual server: it is reported, and the port is planned
// with its other endpoints.
func makePlan(t ingress.Table, vip netip.Addr) (plan, error) {
	ports := make([]ingress.Port, 0, len(t))
	for p := range t {
		ports = append(ports, p)
	}
	// Sort by protocol, number, then service, so a conflict between two
	// services over one port number is always decided the same way.
	slices.SortFunc(ports, func(a, b ingress.Port) int {
		return cmp.Or(cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Published, b.Published), cmp.Compare(a.Service, b.Service))
	})
	var (
		out  plan
		errs []error
	)
	for _, p := range ports {
		if len(out) > 0 {
			if last := out[len(out)-1].port; last.Protocol == p.Protocol && last.Published == p.Published {
				errs = append(errs, &ingress.PortError{Port: p, Err: fmt.Errorf("published port already taken by service %q", last.Service)})
				continue
			}
		}
		pp, ok, err := planPort(p, t[p], vip)
		if err != nil {
			errs = append(errs, &ingress.PortError{Port: p, Err: err})
		}
		if ok {
			out = append(out, pp)
		}
	}
	return out, errors.Join(errs...)
}

// planPort validates one port. ok is false when the port is left out; ok
// with an error means only some endpoints were left out.
func planPort(p ingress.Port, eps []ingress.Endpoint, vip netip.Addr) (pp portPlan, ok bool, err error) {
	switch {
	case p.Protocol != ingress.TCP && p.Protocol != ingress.UDP:
		return portPlan{}, false, fmt.Errorf("Protocol: must be tcp or udp, got %v", p.Protocol)
	case p.Published == 0:
		return portPlan{}, false, errors.New("Published: must not be 0")
	}
	pp = portPlan{port: p}
	var skipped []string
	for i, ep := range eps {
		a := ep.Addr.Addr().Unmap()
		switch {
		case !a.IsValid():
			return portPlan{}, false, fmt.Errorf("endpoint %d (%s): Addr: must be a valid address", i, ep)
		case a.Zone() != "":
			return portPlan{}, false, fmt.Errorf("endpoint %d (%s): Addr: must not have a zone", i, ep)
		case a.IsUnspecified():
			return portPlan{}, false, fmt.Errorf("endpoint %d (%s): Addr: must not be unspecified", i, ep)
		case ep.Addr.Port() == 0:
			return portPlan{}, false, fmt.Errorf("endpoint %d (%s): Addr: port must not be 0", i, ep)
		}
		if a.Is4() != vip.Is4() {
			skipped = append(skipped, ep.String())
			continue
		}
		ap := netip.AddrPortFrom(a, ep.Addr.Port())
		if !slices.Contains(pp.dests, ap) {
			pp.dests = append(pp.dests, ap)
		}
	}
	if skipped != nil {
		return pp, true, fmt.Errorf("endpoints %v left out: Addr: must be of the address family of Config.VIP (%s)", skipped, vip)
	}
	return pp, true, nil
}

// actualDest is a real server as read from the kernel.
type actualDest struct {
	addr   netip.AddrPort
	weight int
	fwd    uint32 // forwarding method (ConnectionFlags & ConnFwdMask)
}

// actualSvc is a virtual server the balancer owns, as read from the kernel.
type actualSvc struct {
	port  ingress.Port // the port it was created for, for error reports
	sched string
	dests []actualDest
}

// opKind is one kind of IPVS change.
type opKind uint8

const (
	opAddService opKind = iota + 1
	opUpdateService
	opDelService
	opAddDest
	opUpdateDest
	opDelDest
)

func (k opKind) String() string {
	switch k {
	case opAddService:
		return "add virtual server"
	case opUpdateService:
		return "update virtual server"
	case opDelService:
		return "delete virtual server"
	case opAddDest:
		return "add real server"
	case opUpdateDest:
		return "update real server"
	case opDelDest:
		return "delete real server"
	default:
		return fmt.Sprintf("opKind(%d)", uint8(k))
	}
}

// op is one IPVS change for one published port.
type op struct {
	kind opKind
	port ingress.Port
	dest netip.AddrPort // for the real-server kinds
}

func (o op) String() string {
	if o.kind >= opAddDest {
		return fmt.Sprintf("%s %s", o.kind, o.dest)
	}
	return o.kind.String()
}

// destWeight is the weight of every real server: all endpoints are equal.
const destWeight = 1

// diff returns the changes that turn actual (the virtual servers the
// balancer owns, as read from the kernel) into p, with sched as every
// virtual server's scheduler and every real server masqueraded with weight
// destWeight. For each port it adds real servers before it deletes any, so
// a port whose endpoints are replaced never has none. Ports no longer in p
// are deleted last. It is pure: equal inputs give equal outputs.
func diff(p plan, actual map[svcKey]actualSvc, sched string) []op {
	var ops []op
	desired := make(map[svcKey]bool, len(p))
	for _, pp := range p {
		k := keyOfPort(pp.port)
		desired[k] = true
		cur, ok := actual[k]
		if !ok {
			ops = append(ops, op{kind: opAddService, port: pp.port})
			for _, d := range pp.dests {
				ops = append(ops, op{kind: opAddDest, port: pp.port, dest: d})
			}
			continue
		}
		if cur.sched != sched {
			ops = append(ops, op{kind: opUpdateService, port: pp.port})
		}
		have := make(map[netip.AddrPort]actualDest, len(cur.dests))
		for _, d := range cur.dests {
			have[d.addr] = d
		}
		for _, d := range pp.dests {
			switch h, ok := have[d]; {
			case !ok:
				ops = append(ops, op{kind: opAddDest, port: pp.port, dest: d})
			case h.weight != destWeight || h.fwd != ipvs.ConnFwdMasq:
				ops = append(ops, op{kind: opUpdateDest, port: pp.port, dest: d})
			}
		}
		for _, d := range cur.dests {
			if !slices.Contains(pp.dests, d.addr) {
				ops = append(ops, op{kind: opDelDest, port: pp.port, dest: d.addr})
			}
		}
	}
	gone := make([]svcKey, 0, len(actual))
	for k := range actual {
		if !desired[k] {
			gone = append(gone, k)
		}
	}
	slices.SortFunc(gone, svcKey.compare)
	for _, k := range gone {
		ops = append(ops, op{kind: opDelService, port: actual[k].port})
	}
	return ops
}
