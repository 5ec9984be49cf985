package nft

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/shoalhq/shoal/ingress"
)

// portPlan is the validated, canonical form of one published port: what the
// ruleset for it contains. Endpoints keep the table's order (the round-robin
// order) and are split by address family, because a packet can only be
// DNATed to an address of its own family.
type portPlan struct {
	port ingress.Port
	v4   []netip.AddrPort
	v6   []netip.AddrPort
}

// plan is the validated, canonical form of a whole table, sorted by protocol
// and port number. Two equal plans program identical rulesets.
type plan []portPlan

func (p plan) equal(o plan) bool {
	return slices.EqualFunc(p, o, func(a, b portPlan) bool {
		return a.port == b.port && slices.Equal(a.v4, b.v4) && slices.Equal(a.v6, b.v6)
	})
}

// makePlan validates t and returns the plan of its valid ports and, joined,
// a *ingress.PortError for each port left out.
func makePlan(t ingress.Table) (plan, error) {
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
		pp, err := planPort(p, t[p])
		if err == nil && len(out) > 0 {
			if last := out[len(out)-1].port; last.Protocol == p.Protocol && last.Published == p.Published {
				err = fmt.Errorf("published port already taken by service %q", last.Service)
			}
		}
		if err != nil {
			errs = append(errs, &ingress.PortError{Port: p, Err: err})
			continue
		}
		out = append(out, pp)
	}
	return out, errors.Join(errs...)
}

func planPort(p ingress.Port, eps []ingress.Endpoint) (portPlan, error) {
	pp := portPlan{port: p}
	switch {
	case p.Protocol != ingress.TCP && p.Protocol != ingress.UDP:
		return pp, fmt.Errorf("Protocol: must be tcp or udp, got %v", p.Protocol)
	case p.Published == 0:
		return pp, errors.New("Published: must not be 0")
	}
	for i, ep := range eps {
		a := ep.Addr.Addr().Unmap()
		switch {
		case !a.IsValid():
			return pp, fmt.Errorf("endpoint %d (%s): Addr: must be a valid address", i, ep)
		case a.Zone() != "":
			return pp, fmt.Errorf("endpoint %d (%s): Addr: must not have a zone", i, ep)
		case a.IsUnspecified():
			return pp, fmt.Errorf("endpoint %d (%s): Addr: must not be unspecified", i, ep)
		case ep.Addr.Port() == 0:
			return pp, fmt.Errorf("endpoint %d (%s): Addr: port must not be 0", i, ep)
		}
		ap := netip.AddrPortFrom(a, ep.Addr.Port())
		if a.Is4() {
			pp.v4 = append(pp.v4, ap)
		} else {
			pp.v6 = append(pp.v6, ap)
		}
	}
	return pp, nil
}
