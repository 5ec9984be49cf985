package network

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Attach gives task id its network: a namespace of its own, bind-mounted
// at Attachment.NetnsPath, with lo up and eth0, one end of a veth pair
// whose other end is a port of the bridge, with the next free address of
// the pool, a MAC derived from it, and a default route via the gateway.
// The lease is written before anything is created, so a crash half-way
// leaves nothing Detach cannot find.
//
// Attach is idempotent per id: for an id already attached it checks the
// namespace, the veth pair, the bridge and eth0's configuration, repairs
// what is missing or wrong (after a reboot, say, it makes a new namespace
// at the same path), and returns the same address. It returns an error
// wrapping ErrPoolExhausted when no address is free, and ErrNotSetUp before
// Setup. A new attachment that fails half-way is undone; if undoing fails
// too, the attachment stays known (Lookup finds it) so that Detach can
// finish the job.
func (b *Bridge) Attach(ctx context.Context, id string) (*Attachment, error) {
	if err := validID(id); err != nil {
		return nil, err
	}
	if err := b.lockSetUp(ctx); err != nil {
		return nil, err
	}
	defer b.unlock()
	b.mu.Lock()
	att, exists := b.atts[id]
	b.mu.Unlock()
	h, err := b.hostHandle()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	if exists {
		if _, err := os.Stat(b.leases.path(id)); errors.Is(err, fs.ErrNotExist) {
			if err := b.leases.write(leaseOf(att)); err != nil {
				return nil, fmt.Errorf("network: Attach %q: write lease: %w", id, err)
			}
		}
		if err := b.realize(ctx, h, att); err != nil {
			return nil, fmt.Errorf("network: Attach %q: repair: %w", id, err)
		}
		return att.clone(), nil
	}

	hv := hostVethName(b.cfg.Bridge, id)
	if other := b.vethOwner(hv); other != "" {
		return nil, fmt.Errorf("network: Attach %q: host veth name %s is taken by %q", id, hv, other)
	}
	addr, err := b.pool.allocate(id)
	if err != nil {
		return nil, fmt.Errorf("network: Attach %q: %w", id, err)
	}
	att = b.attachment(&lease{ID: id, Addr: addr, HostVeth: hv})
	if err := b.leases.write(leaseOf(att)); err != nil {
		b.pool.release(addr, id)
		return nil, fmt.Errorf("network: Attach %q: write lease: %w", id, err)
	}
	if err := b.realize(ctx, h, att); err != nil {
		undo := b.unrealize(h, att)
		if undo == nil {
			undo = b.leases.remove(id)
		}
		if undo != nil {
			// Keep the lease and the address: Detach can finish the job.
			b.mu.Lock()
			b.atts[id] = att
			b.mu.Unlock()
			b.log.Warn("attach failed and could not be undone; Detach removes the rest", "id", id, "err", undo)
		} else {
			b.pool.release(addr, id)
		}
		return nil, fmt.Errorf("network: Attach %q: %w", id, errors.Join(err, undo))
	}
	b.mu.Lock()
	b.atts[id] = att
	b.mu.Unlock()
	b.log.Debug("attached", "id", id, "addr", addr, "veth", hv)
	return att.clone(), nil
}

// vethOwner is the ID of the attachment whose host veth is named hv, or "".
func (b *Bridge) vethOwner(hv string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	for id, a := range b.atts {
		if a.HostVeth == hv {
			return id
		}
	}
	return ""
}

// realize makes the kernel hold what att describes, creating or fixing
// what is not: the namespace, the bridge, the veth pair, eth0 and lo.
func (b *Bridge) realize(ctx context.Context, h *netlink.Handle, att *Attachment) error {
	if err := ensureNetns(att.NetnsPath); err != nil {
		return fmt.Errorf("namespace: %w", err)
	}
	cns, err := netns.GetFromPath(att.NetnsPath)
	if err != nil {
		return fmt.Errorf("namespace: %w", err)
	}
	defer cns.Close()
	ch, err := netlink.NewHandleAt(cns)
	if err != nil {
		return fmt.Errorf("netlink in the container namespace: %w", err)
	}
	defer ch.Close()
	if err := ctx.Err(); err != nil {
		return err
	}
	br, err := b.ensureBridge(h)
	if err != nil {
		return err
	}
	host, peer, err := b.ensureVeth(h, ch, cns, att)
	if err != nil {
		return err
	}
	if host.Attrs().MasterIndex != br.Attrs().Index {
		if err := h.LinkSetMaster(host, br); err != nil {
			return fmt.Errorf("veth %s: attach to bridge: %w", att.HostVeth, err)
		}
	}
	if host.Attrs().MTU != b.cfg.MTU {
		if err := h.LinkSetMTU(host, b.cfg.MTU); err != nil {
			return fmt.Errorf("veth %s: MTU: %w", att.HostVeth, err)
		}
	}
	// Hairpin mode lets the bridge send a frame back out of the port it
	// came in on: a container reaching its own published port through the
	// node needs it.
	if err := h.LinkSetHairpin(host, true); err != nil {
		return fmt.Errorf("veth %s: hairpin mode: %w", att.HostVeth, err)
	}
	if err := h.LinkSetUp(host); err != nil {
		return fmt.Errorf("veth %s: up: %w", att.HostVeth, err)
	}
	return b.configureContainer(cns, ch, peer, att)
}

// ensureVeth returns the attachment's veth pair, host end and eth0,
// creating it unless both ends exist and are each other's peers; stray
// halves are deleted first. The container's end is created in its
// namespace, already named eth0, so it never needs a name of its own in
// the host namespace.
func (b *Bridge) ensureVeth(h, ch *netlink.Handle, cns netns.NsHandle, att *Attachment) (host, peer netlink.Link, err error) {
	host, herr := h.LinkByName(att.HostVeth)
	peer, perr := ch.LinkByName(ContainerIfName)
	if herr == nil && perr == nil && host.Type() == "veth" && peer.Type() == "veth" &&
		host.Attrs().ParentIndex == peer.Attrs().Index && peer.Attrs().ParentIndex == host.Attrs().Index {
		return host, peer, nil
	}
	if herr == nil {
		if err := h.LinkDel(host); err != nil {
			return nil, nil, fmt.Errorf("delete stray veth %s: %w", att.HostVeth, err)
		}
	}
	if perr == nil {
		if err := ch.LinkDel(peer); err != nil && !isNotFound(err) {
			return nil, nil, fmt.Errorf("delete stray %s in the namespace: %w", ContainerIfName, err)
		}
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU = att.HostVeth, b.cfg.MTU
	veth := netlink.NewVeth(attrs)
	veth.PeerName = ContainerIfName
	veth.PeerHardwareAddr = att.MAC
	veth.PeerNamespace = netlink.NsFd(cns)
	if err := h.LinkAdd(veth); err != nil {
		return nil, nil, fmt.Errorf("create veth %s: %w", att.HostVeth, err)
	}
	if host, err = h.LinkByName(att.HostVeth); err != nil {
		return nil, nil, fmt.Errorf("veth %s: %w", att.HostVeth, err)
	}
	if peer, err = ch.LinkByName(ContainerIfName); err != nil {
		return nil, nil, fmt.Errorf("%s in the namespace: %w", ContainerIfName, err)
	}
	return host, peer, nil
}

// configureContainer turns IPv6 off on eth0, sets its MAC, MTU and address, brings eth0 and lo
// up, and routes by default via the gateway.
func (b *Bridge) configureContainer(cns netns.NsHandle, ch *netlink.Handle, eth0 netlink.Link, att *Attachment) error {
	// The pool is IPv4 only. Without IPv6 on eth0 the container also
	// skips duplicate address detection, which hairpin mode would fail by
	// reflecting its own probes.
	if _, err := writeSysctl(cns, "net/ipv6/conf/"+ContainerIfName+"/disable_ipv6", "1"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if !slices.Equal(eth0.Attrs().HardwareAddr, att.MAC) {
		if err := ch.LinkSetHardwareAddr(eth0, att.MAC); err != nil {
			return fmt.Errorf("%s: MAC %s: %w", ContainerIfName, att.MAC, err)
		}
	}
	if eth0.Attrs().MTU != b.cfg.MTU {
		if err := ch.LinkSetMTU(eth0, b.cfg.MTU); err != nil {
			return fmt.Errorf("%s: MTU: %w", ContainerIfName, err)
		}
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: att.Addr.AsSlice(), Mask: net.CIDRMask(att.Prefix.Bits(), 32)}}
	if err := ch.AddrReplace(eth0, addr); err != nil {
		return fmt.Errorf("%s: address %s: %w", ContainerIfName, att.Prefix, err)
	}
	if err := ch.LinkSetUp(eth0); err != nil {
		return fmt.Errorf("%s: up: %w", ContainerIfName, err)
	}
	lo, err := ch.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("lo: %w", err)
	}
	if err := ch.LinkSetUp(lo); err != nil {
		return fmt.Errorf("lo: up: %w", err)
	}
	route := &netlink.Route{
		LinkIndex: eth0.Attrs().Index,
		Dst:       &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
		Gw:        att.Gateway.AsSlice(),
	}
	if err := ch.RouteReplace(route); err != nil {
		return fmt.Errorf("default route via %s: %w", att.Gateway, err)
	}
	return nil
}

// unrealize removes the attachment's kernel side: the veth pair (deleting
// the host end deletes both) and the namespace's bind mount. What is
// already gone is not an error.
func (b *Bridge) unrealize(h *netlink.Handle, att *Attachment) error {
	var errs []error
	if link, err := h.LinkByName(att.HostVeth); err == nil {
		if err := h.LinkDel(link); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("delete veth %s: %w", att.HostVeth, err))
		}
	} else if !isNotFound(err) {
		errs = append(errs, fmt.Errorf("veth %s: %w", att.HostVeth, err))
	}
	if err := removeNetns(att.NetnsPath); err != nil {
		errs = append(errs, fmt.Errorf("namespace: %w", err))
	}
	return errors.Join(errs...)
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT)
}

// Lookup returns a copy of the attachment of id, if there is one. It
// never waits for other operations.
func (b *Bridge) Lookup(id string) (*Attachment, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	a, ok := b.atts[id]
	if !ok {
		return nil, false
	}
	return a.clone(), true
}

// Attachments returns copies of every attachment, sorted by ID. It never
// waits for other operations.
func (b *Bridge) Attachments() []*Attachment {
	b.mu.Lock()
	out := make([]*Attachment, 0, len(b.atts))
	for _, a := range b.atts {
		out = append(out, a.clone())
	}
	b.mu.Unlock()
	slices.SortFunc(out, func(x, y *Attachment) int {
		switch {
		case x.ID < y.ID:
			return -1
		case x.ID > y.ID:
			return 1
		}
		return 0
	})
	return out
}

// Detach removes everything Attach and Publish made for id: its published
// ports' rules, the veth pair, the namespace's bind mount (the namespace
// ends once no process is in it), the file, and last the lease, so that a
// Detach that fails half-way can be retried. An id without an attachment
// is not an error. Detach returns ErrNotSetUp before Setup.
func (b *Bridge) Detach(ctx context.Context, id string) error {
	if err := validID(id); err != nil {
		return err
	}
	if err := b.lockSetUp(ctx); err != nil {
		return err
	}
	defer b.unlock()
	b.mu.Lock()
	att, ok := b.atts[id]
	b.mu.Unlock()
	if !ok {
		return nil
	}
	if len(att.Ports) > 0 {
		if err := b.program(b.without(id)); err != nil {
			return fmt.Errorf("network: Detach %q: %w", id, err)
		}
	}
	h, err := b.hostHandle()
	if err != nil {
		return err
	}
	defer h.Close()
	if err := b.unrealize(h, att); err != nil {
		return fmt.Errorf("network: Detach %q: %w", id, err)
	}
	b.forgetFlows(h, att.Addr, att.Ports)
	if err := b.leases.remove(id); err != nil {
		return fmt.Errorf("network: Detach %q: remove lease: %w", id, err)
	}
	b.pool.release(att.Addr, id)
	b.mu.Lock()
	delete(b.atts, id)
	b.mu.Unlock()
	b.log.Debug("detached", "id", id, "addr", att.Addr)
	return nil
}

// without returns a copy of the attachment map without id.
func (b *Bridge) without(id string) map[string]*Attachment {
	b.mu.Lock()
	defer b.mu.Unlock()
	m := make(map[string]*Attachment, len(b.atts))
	for k, v := range b.atts {
		if k != id {
			m[k] = v
		}
	}
	return m
}

// Publish makes ports the published ports of attachment id, replacing the
// ones it had (an empty list removes them): each host port, on any of the
// host namespace's addresses (127.0.0.1 included), is DNATed to the
// container's address at the target port, for traffic arriving at the node
// and for connections the node opens itself. The ports are saved with the
// lease, so a later Setup restores them. A host port another attachment
// publishes is an error, and so is an unknown id (ErrNotAttached). The
// whole table is replaced in one atomic batch.
func (b *Bridge) Publish(ctx context.Context, id string, ports []PortMapping) error {
	if err := validID(id); err != nil {
		return err
	}
	norm, err := normalizePorts(ports)
	if err != nil {
		return err
	}
	if err := b.lockSetUp(ctx); err != nil {
		return err
	}
	defer b.unlock()
	b.mu.Lock()
	old, ok := b.atts[id]
	b.mu.Unlock()
	if !ok {
		return fmt.Errorf("network: Publish %q: %w", id, ErrNotAttached)
	}
	next := old.clone()
	next.Ports = norm
	atts := b.without(id)
	atts[id] = next
	if err := portConflicts(atts); err != nil {
		return fmt.Errorf("network: Publish %q: %w", id, err)
	}
	if slices.Equal(old.Ports, norm) {
		return nil
	}
	if err := b.leases.write(leaseOf(next)); err != nil {
		return fmt.Errorf("network: Publish %q: write lease: %w", id, err)
	}
	if err := b.program(atts); err != nil {
		if werr := b.leases.write(leaseOf(old)); werr != nil {
			err = errors.Join(err, fmt.Errorf("restore lease: %w", werr))
		}
		return fmt.Errorf("network: Publish %q: %w", id, err)
	}
	b.mu.Lock()
	b.atts[id] = next
	b.mu.Unlock()
	var gone []PortMapping
	for _, p := range old.Ports {
		if p.Protocol == ProtocolUDP && !slices.Contains(norm, p) {
			gone = append(gone, p)
		}
	}
	if len(gone) > 0 {
		if h, err := b.hostHandle(); err == nil {
			b.forgetFlows(h, old.Addr, gone)
			h.Close()
		}
	}
	b.log.Debug("published", "id", id, "ports", norm)
	return nil
}

// forgetFlows deletes the conntrack entries of UDP flows that entered
// through one of ports and were DNATed to addr. A UDP flow never ends by
// itself: its entry would keep sending it to a container whose mapping is
// gone, or to the next container given the address. TCP connections end,
// and their entries with them, so they are left alone: finding entries
// walks the kernel's whole conntrack hash table, shared by every
// namespace, some milliseconds each time. It is best effort: without
// conntrack over netlink (nf_conntrack_netlink) the entries expire on
// their own, and a warning is logged.
func (b *Bridge) forgetFlows(h *netlink.Handle, addr netip.Addr, ports []PortMapping) {
	ip := net.IP(addr.AsSlice())
	var filters []netlink.CustomConntrackFilter
	for _, p := range ports {
		if p.Protocol != ProtocolUDP {
			continue
		}
		f := &netlink.ConntrackFilter{}
		err := errors.Join(
			f.AddProtocol(unix.IPPROTO_UDP),
			f.AddPort(netlink.ConntrackOrigDstPort, p.HostPort),
			f.AddIP(netlink.ConntrackReplySrcIP, ip),
		)
		if err != nil {
			b.log.Warn("conntrack filter", "port", p, "err", err)
			continue
		}
		filters = append(filters, f)
	}
	if len(filters) == 0 {
		return
	}
	n, err := h.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, filters...)
	if err != nil {
		b.log.Warn("could not delete conntrack entries; they expire on their own", "addr", addr, "err", err)
		return
	}
	if n > 0 {
		b.log.Debug("deleted conntrack entries", "addr", addr, "count", n)
	}
}
