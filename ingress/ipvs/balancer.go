package ipvs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/moby/ipvs"
	"golang.org/x/sys/unix"

	"github.com/shoalhq/shoal/ingress"
)

// handle is the part of *ipvs.Handle the balancer uses. Calls on one handle
// are made by one goroutine at a time (the balancer's lock serializes them),
// so implementations need not be safe for concurrent use. Errors from the
// kernel are syscall.Errno values (ESRCH: no such virtual server, ENOENT: no
// such real server, EEXIST: already present).
type handle interface {
	// GetServices returns every virtual server of the namespace.
	GetServices() ([]*ipvs.Service, error)
	// NewService creates a virtual server.
	NewService(s *ipvs.Service) error
	// UpdateService changes a virtual server's scheduler and options.
	UpdateService(s *ipvs.Service) error
	// DelService deletes a virtual server and its real servers.
	DelService(s *ipvs.Service) error
	// GetDestinations returns the real servers of a virtual server.
	GetDestinations(s *ipvs.Service) ([]*ipvs.Destination, error)
	// NewDestination adds a real server to a virtual server.
	NewDestination(s *ipvs.Service, d *ipvs.Destination) error
	// UpdateDestination changes a real server's weight and forwarding.
	UpdateDestination(s *ipvs.Service, d *ipvs.Destination) error
	// DelDestination removes a real server from a virtual server.
	DelDestination(s *ipvs.Service, d *ipvs.Destination) error
	// Close releases the handle.
	Close()
}

var _ handle = (*ipvs.Handle)(nil)

// openHandle opens the kernel's IPVS in the namespace at path ("" for the
// caller's).
func openHandle(path string) (handle, error) {
	h, err := ipvs.New(path)
	if err != nil {
		return nil, err
	}
	return h, nil
}

// Balancer balances published ports in the kernel with IPVS: for each
// published port, one virtual server at (Config.VIP, protocol, port) with
// the port's endpoints as real servers, scheduled round robin and forwarded
// by masquerading (NAT, destination only). Replies from endpoints on other
// nodes come back through this one only where the host routes or
// source-NATs them so (see the package's Requirements).
//
// The balancer remembers which virtual servers it created and touches only
// those; Stop deletes them. Real servers removed by Apply keep their
// established connections until those end (IPVS moves them to its trash
// list), as the ingress contract asks, unless the host set
// net.ipv4.vs.expire_nodest_conn.
//
// A Balancer is safe for concurrent use; Apply and Stop calls are
// serialized.
type Balancer struct {
	cfg  Config
	log  *slog.Logger
	open func(path string) (handle, error)

	mu      sync.Mutex
	h       handle                  // open from the first Apply until Stop
	owned   map[svcKey]ingress.Port // virtual servers this balancer created
	stopped bool
	cleaned bool
}

var _ ingress.Balancer = (*Balancer)(nil)

// New validates cfg and returns a balancer. It touches neither the kernel
// nor the namespace: the IPVS handle is opened by the first Apply.
func New(cfg Config) (*Balancer, error) {
	return newBalancer(cfg, openHandle)
}

func newBalancer(cfg Config, open func(string) (handle, error)) (*Balancer, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Balancer{
		cfg:   c,
		log:   c.Logger.With("component", "ingress/ipvs", "vip", c.VIP.String()),
		open:  open,
		owned: make(map[svcKey]ingress.Port),
	}, nil
}

// Apply makes the balancer's virtual servers match t: it reads the virtual
// servers it owns from the kernel, diffs them with t and sends only the
// differences, so applying an unchanged table writes nothing (and repairs
// whatever someone else changed in the balancer's virtual servers). For a
// port whose endpoints are replaced, new real servers are added before old
// ones are removed. Ports that fail validation, or whose changes the kernel
// refuses, are reported as *ingress.PortError values, joined; the rest is
// still applied, and a later Apply retries them. A port whose virtual
// server already exists but was not created by this balancer is reported
// and left alone (see Config.AdoptExisting). ctx is checked between kernel
// calls; each netlink exchange itself is not interruptible. Apply after
// Stop returns ingress.ErrStopped.
func (b *Balancer) Apply(ctx context.Context, t ingress.Table) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopped {
		return ingress.ErrStopped
	}
	p, planErr := makePlan(t, b.cfg.VIP)
	errs := []error{planErr}
	if planErr != nil {
		b.log.Warn("ports left out", "err", planErr)
	}
	h, err := b.handle()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	actual, p, readErrs, err := b.read(h, p)
	errs = append(errs, readErrs...)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	ops := diff(p, actual, b.cfg.Scheduler)
	failed := make(map[svcKey]bool)
	for i, o := range ops {
		k := keyOfPort(o.port)
		if failed[k] {
			continue
		}
		if err := ctx.Err(); err != nil {
			b.log.Warn("apply interrupted", "done", i, "left", len(ops)-i)
			return errors.Join(append(errs, err)...)
		}
		if err := b.exec(h, o); err != nil {
			failed[k] = true
			errs = append(errs, &ingress.PortError{Port: o.port, Err: fmt.Errorf("%s: %w", o, err)})
			continue
		}
		b.log.Debug("applied", "port", o.port.String(), "op", o.String())
	}
	return errors.Join(errs...)
}

// handle returns the open IPVS handle, opening it on first use.
func (b *Balancer) handle() (handle, error) {
	if b.h != nil {
		return b.h, nil
	}
	h, err := b.open(b.cfg.NetNS)
	if err != nil {
		where := "the caller's network namespace"
		if b.cfg.NetNS != "" {
			where = "Config.NetNS " + b.cfg.NetNS
		}
		return nil, fmt.Errorf("ipvs: open IPVS in %s: %w", where, err)
	}
	b.h = h
	return h, nil
}

// read returns the virtual servers the balancer owns as the kernel holds
// them, and p without the ports that cannot be applied: those whose real
// servers cannot be read and those held by a virtual server the balancer
// does not own (each reported in errs). It adopts existing virtual servers
// when Config.AdoptExisting is set, forgets owned ones that vanished and
// are no longer wanted, and fails as a whole only when the virtual servers
// cannot be listed.
func (b *Balancer) read(h handle, p plan) (map[svcKey]actualSvc, plan, []error, error) {
	svcs, err := h.GetServices()
	if err != nil {
		return nil, nil, nil, fmt.Errorf("ipvs: list virtual servers: %w", err)
	}
	desired := make(map[svcKey]ingress.Port, len(p))
	for _, pp := range p {
		desired[keyOfPort(pp.port)] = pp.port
	}
	var (
		errs    []error
		skip    = make(map[svcKey]bool)
		actual  = make(map[svcKey]actualSvc)
		present = make(map[svcKey]bool)
	)
	for _, s := range svcs {
		k, ok := b.keyOfService(s)
		if !ok {
			continue
		}
		present[k] = true
		want, isDesired := desired[k]
		port, isOwned := b.owned[k]
		switch {
		case isOwned:
		case isDesired && b.cfg.AdoptExisting:
			b.log.Info("adopting existing virtual server", "port", want.String())
			port, isOwned = want, true
		case isDesired:
			skip[k] = true
			errs = append(errs, &ingress.PortError{Port: want, Err: fmt.Errorf("virtual server %s %s already exists and was not created by this balancer (see Config.AdoptExisting)",
				want.Protocol, netip.AddrPortFrom(b.cfg.VIP, k.port))})
			continue
		default:
			continue // someone else's: not ours to touch
		}
		if isDesired {
			port = want // the service owning the number may have changed
		}
		dests, err := h.GetDestinations(s)
		if err != nil {
			skip[k] = true
			errs = append(errs, &ingress.PortError{Port: port, Err: fmt.Errorf("list real servers: %w", err)})
			b.owned[k] = port
			continue
		}
		as := actualSvc{port: port, sched: s.SchedName}
		for _, d := range dests {
			a, ok := netip.AddrFromSlice(d.Address)
			if !ok {
				continue
			}
			as.dests = append(as.dests, actualDest{
				addr:   netip.AddrPortFrom(a.Unmap(), d.Port),
				weight: d.Weight,
				fwd:    d.ConnectionFlags & ipvs.ConnFwdMask,
			})
		}
		actual[k] = as
		b.owned[k] = port
	}
	for k, port := range b.owned {
		if !present[k] {
			if _, ok := desired[k]; !ok {
				delete(b.owned, k)
			} else {
				b.log.Warn("owned virtual server vanished; creating it again", "port", port.String())
			}
		}
	}
	if len(skip) > 0 {
		p = slices.DeleteFunc(slices.Clone(p), func(pp portPlan) bool { return skip[keyOfPort(pp.port)] })
	}
	return actual, p, errs, nil
}

// keyOfService reports whether s is a virtual server at Config.VIP with a
// protocol and port (not a firewall mark), and its key.
func (b *Balancer) keyOfService(s *ipvs.Service) (svcKey, bool) {
	if s.FWMark != 0 {
		return svcKey{}, false
	}
	a, ok := netip.AddrFromSlice(s.Address)
	if !ok || a.Unmap() != b.cfg.VIP {
		return svcKey{}, false
	}
	switch s.Protocol {
	case unix.IPPROTO_TCP:
		return svcKey{ingress.TCP, s.Port}, true
	case unix.IPPROTO_UDP:
		return svcKey{ingress.UDP, s.Port}, true
	}
	return svcKey{}, false
}

// exec sends one change to the kernel and records ownership.
func (b *Balancer) exec(h handle, o op) error {
	k := keyOfPort(o.port)
	s := b.service(k)
	switch o.kind {
	case opAddService:
		if err := h.NewService(s); err != nil {
			return err
		}
		b.owned[k] = o.port
		return nil
	case opUpdateService:
		return h.UpdateService(s)
	case opDelService:
		if err := h.DelService(s); err != nil && !errors.Is(err, unix.ESRCH) {
			return err
		}
		delete(b.owned, k)
		return nil
	case opAddDest:
		return h.NewDestination(s, b.destination(o.dest))
	case opUpdateDest:
		return h.UpdateDestination(s, b.destination(o.dest))
	case opDelDest:
		if err := h.DelDestination(s, b.destination(o.dest)); err != nil && !errors.Is(err, unix.ENOENT) {
			return err
		}
		return nil
	default:
		return fmt.Errorf("unknown change %v", o.kind)
	}
}

func family(a netip.Addr) uint16 {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// service is the virtual server of k.
func (b *Balancer) service(k svcKey) *ipvs.Service {
	s := &ipvs.Service{
		Address:       net.IP(b.cfg.VIP.AsSlice()),
		Port:          k.port,
		SchedName:     b.cfg.Scheduler,
		AddressFamily: family(b.cfg.VIP),
		Netmask:       0xffffffff, // one address, as ipvsadm sets for IPv4
		Protocol:      unix.IPPROTO_TCP,
	}
	if !b.cfg.VIP.Is4() {
		s.Netmask = 128 // a prefix length for IPv6
	}
	if k.proto == ingress.UDP {
		s.Protocol = unix.IPPROTO_UDP
	}
	return s
}

// destination is the real server at a, masqueraded, weight destWeight.
func (b *Balancer) destination(a netip.AddrPort) *ipvs.Destination {
	return &ipvs.Destination{
		Address:         net.IP(a.Addr().AsSlice()),
		Port:            a.Port(),
		Weight:          destWeight,
		ConnectionFlags: ipvs.ConnFwdMasq,
		AddressFamily:   family(a.Addr()),
	}
}

// Stop deletes the virtual servers this balancer created (and only those)
// and closes its IPVS handle. Connections already balanced keep flowing
// until IPVS expires them. Stop is idempotent: once everything is deleted,
// later calls return nil; after a failure, calling again retries the
// virtual servers that remain. ctx is checked between kernel calls.
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
	if len(b.owned) > 0 {
		h, err := b.handle()
		if err != nil {
			return err
		}
		keys := make([]svcKey, 0, len(b.owned))
		for k := range b.owned {
			keys = append(keys, k)
		}
		slices.SortFunc(keys, svcKey.compare)
		var errs []error
		for _, k := range keys {
			if err := ctx.Err(); err != nil {
				return errors.Join(append(errs, err)...)
			}
			if err := b.exec(h, op{kind: opDelService, port: b.owned[k]}); err != nil {
				errs = append(errs, &ingress.PortError{Port: b.owned[k], Err: fmt.Errorf("%s: %w", opDelService, err)})
			}
		}
		if len(errs) > 0 {
			return errors.Join(errs...)
		}
	}
	if b.h != nil {
		b.h.Close()
		b.h = nil
	}
	b.cleaned = true
	b.log.Debug("virtual servers deleted")
	return nil
}
