package network

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Bridge is one node's bridge network: the bridge device, its nftables
// table, and one network namespace and veth pair per attached task. See
// the package documentation for what it programs.
//
// A Bridge is safe for concurrent use. Operations that change kernel state
// or the state directory (Setup, Attach, Detach, Publish, Teardown, Close)
// run one at a time; Lookup and Attachments never wait for them.
type Bridge struct {
	cfg      Config
	log      *slog.Logger
	leases   leaseStore
	netnsDir string

	// sem is held by the operation that changes kernel state or lease
	// files, one at a time: a channel of capacity one, so that waiting for
	// it ends with ctx. It is taken before mu. It guards hostNS,
	// hostNSOpen, pool, ports and the lease files.
	sem chan struct{}
	// hostNS is the host side's namespace, open from the first Setup (or
	// Teardown) to Teardown or Close; hostNSOpen says whether it is.
	hostNS     netns.NsHandle
	hostNSOpen bool
	// owner is this Bridge's lock on its bridge (see ownerDir), held from
	// Setup to Close or Teardown.
	owner *ownerLock
	// pool holds the leased addresses; nil before Setup.
	pool *pool
	// ports is what the nftables ports map holds, as far as the Bridge
	// knows; nil means unknown, to be read from the kernel.
	ports portTable

	// mu guards the fields below. It is held only to read or replace
	// them, never across a kernel call or file write; writers hold sem
	// too.
	mu     sync.Mutex
	setUp  bool
	closed bool
	atts   map[string]*Attachment // by ID; the values are never changed in place
}

// New validates cfg and returns a Bridge. It touches neither the kernel
// nor the state directory: Setup does.
func New(cfg Config) (*Bridge, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(c.StateDir, c.Bridge)
	return &Bridge{
		cfg:      c,
		log:      c.Logger.With("component", "runtime/network", "bridge", c.Bridge),
		leases:   leaseStore{dir: filepath.Join(dir, "leases")},
		netnsDir: filepath.Join(dir, "netns"),
		sem:      make(chan struct{}, 1),
		atts:     map[string]*Attachment{},
	}, nil
}

// lock takes sem, or returns ctx's error, or ErrClosed after Close.
func (b *Bridge) lock(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case b.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		<-b.sem
		return ErrClosed
	}
	return nil
}

func (b *Bridge) unlock() { <-b.sem }

// lockSetUp is lock, then ErrNotSetUp unless Setup succeeded.
func (b *Bridge) lockSetUp(ctx context.Context) error {
	if err := b.lock(ctx); err != nil {
		return err
	}
	b.mu.Lock()
	ok := b.setUp
	b.mu.Unlock()
	if !ok {
		b.unlock()
		return ErrNotSetUp
	}
	return nil
}

// openHostNS opens the host side's namespace if it is not open. Called
// with sem held.
func (b *Bridge) openHostNS() error {
	if b.hostNSOpen {
		return nil
	}
	var (
		ns  netns.NsHandle
		err error
	)
	if b.cfg.HostNetns == "" {
		ns, err = netns.Get()
	} else {
		ns, err = netns.GetFromPath(b.cfg.HostNetns)
	}
	if err != nil {
		return fmt.Errorf("network: Config.HostNetns: open %q: %w", b.cfg.HostNetns, err)
	}
	b.hostNS, b.hostNSOpen = ns, true
	return nil
}

// closeHostNS closes the host side's namespace. Called with sem held.
func (b *Bridge) closeHostNS() {
	if b.hostNSOpen {
		_ = b.hostNS.Close()
		b.hostNSOpen = false
	}
}

// hostHandle is a netlink handle in the host side's namespace.
func (b *Bridge) hostHandle() (*netlink.Handle, error) {
	h, err := netlink.NewHandleAt(b.hostNS)
	if err != nil {
		return nil, fmt.Errorf("network: netlink in the host namespace: %w", err)
	}
	return h, nil
}

func (b *Bridge) gateway() netip.Addr { return b.cfg.Subnet.Addr().Next() }

func (b *Bridge) netnsPath(id string) string { return filepath.Join(b.netnsDir, id) }

// Setup loads the leases in StateDir, so that every attachment made
// before, by this process or an earlier one, is known, keeps its address
// and its published ports, and can be repaired or detached. It then makes
// the host side match the Config, creating what is missing and adopting
// what exists, so calling it again (or in a new process on the same
// StateDir) is harmless: the bridge (up, with the MTU, a MAC derived from
// the gateway address, and the gateway as its only IPv4 address),
// route_localnet on the bridge, IPv4 forwarding (net.ipv4.ip_forward=1),
// and the nftables table with the leases' published ports.
//
// Setup fails before changing anything in the kernel if a lease does not
// parse, does not fit the pool or publishes a host port another lease
// publishes, or if another interface of the host namespace has an address
// that overlaps Config.Subnet. The netlink exchanges cannot be
// interrupted; ctx is checked between steps.
func (b *Bridge) Setup(ctx context.Context) error {
	if err := b.lock(ctx); err != nil {
		return err
	}
	defer b.unlock()
	// The leases are checked before anything changes: a lease that does
	// not fit the Config stops Setup before it renumbers the bridge under
	// running containers.
	leases, err := b.leases.load()
	if err != nil {
		return fmt.Errorf("network: load leases: %w", err)
	}
	p := newPool(b.cfg.Subnet)
	atts := make(map[string]*Attachment, len(leases))
	for _, l := range leases {
		if err := p.reserve(l.Addr, l.ID); err != nil {
			return fmt.Errorf("network: lease %s: %w (Config.Subnet is %s)", b.leases.path(l.ID), err, b.cfg.Subnet)
		}
		atts[l.ID] = b.attachment(l)
	}
	if err := portConflicts(atts); err != nil {
		return fmt.Errorf("network: load leases: %w", err)
	}
	if err := b.openHostNS(); err != nil {
		return err
	}
	h, err := b.hostHandle()
	if err != nil {
		return err
	}
	defer h.Close()
	if err := b.lockOwner(); err != nil {
		return err
	}
	if err := b.checkOverlap(h); err != nil {
		return err
	}
	for _, dir := range []string{b.leases.dir, b.netnsDir} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("network: Config.StateDir: %w", err)
		}
	}
	if _, err := b.ensureBridge(h); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if changed, err := writeSysctl(b.hostNS, "net/ipv4/ip_forward", "1"); err != nil {
		return err
	} else if changed {
		b.log.Info("enabled IPv4 forwarding (net.ipv4.ip_forward=1)")
	}
	b.ports = nil // what the kernel holds, not what this Bridge last wrote
	if err := b.program(atts); err != nil {
		return err
	}
	b.pool = p
	b.mu.Lock()
	b.atts, b.setUp = atts, true
	b.mu.Unlock()
	b.log.Debug("set up", "subnet", b.cfg.Subnet, "attachments", len(atts))
	return nil
}

// attachment is the Attachment a lease describes.
func (b *Bridge) attachment(l *lease) *Attachment {
	return &Attachment{
		ID:        l.ID,
		NetnsPath: b.netnsPath(l.ID),
		Addr:      l.Addr,
		Prefix:    netip.PrefixFrom(l.Addr, b.cfg.Subnet.Bits()),
		Gateway:   b.gateway(),
		MAC:       MACFor(l.Addr),
		HostVeth:  l.HostVeth,
		Ports:     slices.Clone(l.Ports),
	}
}

func leaseOf(a *Attachment) *lease {
	return &lease{ID: a.ID, Addr: a.Addr, HostVeth: a.HostVeth, Ports: a.Ports}
}

// portConflicts reports two attachments publishing the same host port.
func portConflicts(atts map[string]*Attachment) error {
	owner := map[PortMapping]string{}
	ids := make([]string, 0, len(atts))
	for id := range atts {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		for _, p := range atts[id].Ports {
			k := PortMapping{HostPort: p.HostPort, Protocol: p.Protocol}
			if other, ok := owner[k]; ok {
				return fmt.Errorf("host port %d/%s is published by both %q and %q", p.HostPort, p.Protocol, other, id)
			}
			owner[k] = id
		}
	}
	return nil
}

// checkOverlap fails if an interface other than the bridge has an IPv4
// address whose network overlaps the pool: the routes would conflict.
func (b *Bridge) checkOverlap(h *netlink.Handle) error {
	addrs, err := h.AddrList(nil, netlink.FAMILY_V4)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return fmt.Errorf("network: list addresses: %w", err)
	}
	brIndex := -1
	if l, err := h.LinkByName(b.cfg.Bridge); err == nil {
		brIndex = l.Attrs().Index
	}
	for _, a := range addrs {
		if a.LinkIndex == brIndex || a.IPNet == nil {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if !ok {
			continue
		}
		ones, _ := a.Mask.Size()
		p := netip.PrefixFrom(ip, ones).Masked()
		if p.Overlaps(b.cfg.Subnet) {
			name := fmt.Sprint(a.LinkIndex)
			if l, err := h.LinkByIndex(a.LinkIndex); err == nil {
				name = l.Attrs().Name
			}
			return fmt.Errorf("network: Config.Subnet: %s overlaps %s on interface %s", b.cfg.Subnet, a.IPNet, name)
		}
	}
	return nil
}

// ensureBridge creates the bridge or adopts the one of that name, and
// makes it match the Config: MTU, MAC, the gateway as its only IPv4
// address, route_localnet, up.
func (b *Bridge) ensureBridge(h *netlink.Handle) (netlink.Link, error) {
	name := b.cfg.Bridge
	mac := MACFor(b.gateway())
	link, err := h.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		attrs := netlink.NewLinkAttrs()
		attrs.Name, attrs.MTU, attrs.HardwareAddr = name, b.cfg.MTU, mac
		if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
			return nil, fmt.Errorf("network: create bridge %s: %w", name, err)
		}
		if link, err = h.LinkByName(name); err != nil {
			return nil, fmt.Errorf("network: bridge %s: %w", name, err)
		}
		b.log.Info("created bridge", "mtu", b.cfg.MTU)
	case err != nil:
		return nil, fmt.Errorf("network: bridge %s: %w", name, err)
	case link.Type() != "bridge":
		return nil, fmt.Errorf("network: Config.Bridge: interface %s exists and is a %s, not a bridge", name, link.Type())
	}
	if link.Attrs().MTU != b.cfg.MTU {
		if err := h.LinkSetMTU(link, b.cfg.MTU); err != nil {
			return nil, fmt.Errorf("network: bridge %s: set MTU %d: %w", name, b.cfg.MTU, err)
		}
	}
	if !slices.Equal(link.Attrs().HardwareAddr, mac) {
		if err := h.LinkSetHardwareAddr(link, mac); err != nil {
			return nil, fmt.Errorf("network: bridge %s: set MAC %s: %w", name, mac, err)
		}
	}
	gw := &netlink.Addr{IPNet: &net.IPNet{IP: b.gateway().AsSlice(), Mask: net.CIDRMask(b.cfg.Subnet.Bits(), 32)}}
	if err := h.AddrReplace(link, gw); err != nil {
		return nil, fmt.Errorf("network: bridge %s: address %s: %w", name, gw.IPNet, err)
	}
	// Other IPv4 addresses (an earlier Config.Subnet, say) would route
	// someone else's pool to this bridge.
	addrs, err := h.AddrList(link, netlink.FAMILY_V4)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, fmt.Errorf("network: bridge %s: list addresses: %w", name, err)
	}
	for _, a := range addrs {
		if a.IPNet.String() != gw.IPNet.String() {
			if err := h.AddrDel(link, &a); err != nil {
				return nil, fmt.Errorf("network: bridge %s: remove stale address %s: %w", name, a.IPNet, err)
			}
			b.log.Info("removed stale bridge address", "addr", a.IPNet.String())
		}
	}
	if _, err := writeSysctl(b.hostNS, "net/ipv4/conf/"+name+"/route_localnet", "1"); err != nil {
		return nil, err
	}
	if err := h.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("network: bridge %s: up: %w", name, err)
	}
	return link, nil
}

// program makes the nftables table hold the ruleset for atts. When b.ports
// is nil (in Setup) it reads the ports map from the kernel and declares
// the whole table; otherwise it changes only the map entries that differ
// from b.ports, since the chains never change after Setup.
func (b *Bridge) program(atts map[string]*Attachment) error {
	rs := ruleset{bridge: b.cfg.Bridge, subnet: b.cfg.Subnet, masquerade: b.cfg.Masquerade, ports: portTable{}}
	for _, a := range atts {
		for _, p := range a.Ports {
			rs.ports[portKey{proto: l4proto(p.Protocol), port: p.HostPort}] = portTarget{addr: a.Addr, port: p.Target}
		}
	}
	conn, err := nftConn(b.hostNS)
	if err != nil {
		return err
	}
	declare := b.ports == nil
	if declare {
		if b.ports, err = readPorts(conn, b.cfg.Bridge); err != nil {
			return fmt.Errorf("network: read map %s of table ip %s: %w", portsMap, tableName(b.cfg.Bridge), err)
		}
	}
	b.ports, err = programTable(conn, rs, b.ports, declare)
	if err != nil {
		return fmt.Errorf("network: program table ip %s: %w", tableName(b.cfg.Bridge), err)
	}
	return nil
}

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

// Teardown removes everything the Bridge owns: every attachment (as
// Detach does; before any Setup, those whose leases are in StateDir), the
// nftables table, the bridge and the Bridge's directory under StateDir. It
// leaves net.ipv4.ip_forward as it is, since other software may rely on
// it. Afterwards the Bridge is as New returned it: Setup may be called
// again. Teardown is for tests and for a node that leaves for good; a node
// that restarts keeps its network (live restore).
func (b *Bridge) Teardown(ctx context.Context) error {
	if err := b.lock(ctx); err != nil {
		return err
	}
	defer b.unlock()
	if err := b.openHostNS(); err != nil {
		return err
	}
	h, err := b.hostHandle()
	if err != nil {
		return err
	}
	defer h.Close()

	b.mu.Lock()
	setUp := b.setUp
	atts := make([]*Attachment, 0, len(b.atts))
	for _, a := range b.atts {
		atts = append(atts, a)
	}
	b.mu.Unlock()
	if !setUp {
		leases, err := b.leases.load()
		if err != nil {
			return fmt.Errorf("network: Teardown: load leases: %w", err)
		}
		for _, l := range leases {
			atts = append(atts, b.attachment(l))
		}
	}
	var errs []error
	for _, a := range atts {
		if err := ctx.Err(); err != nil {
			return errors.Join(append(errs, err)...)
		}
		if err := b.unrealize(h, a); err != nil {
			errs = append(errs, fmt.Errorf("attachment %q: %w", a.ID, err))
			continue
		}
		b.forgetFlows(h, a.Addr, a.Ports)
		if err := b.leases.remove(a.ID); err != nil {
			errs = append(errs, fmt.Errorf("attachment %q: remove lease: %w", a.ID, err))
			continue
		}
		b.mu.Lock()
		delete(b.atts, a.ID)
		b.mu.Unlock()
	}
	conn, err := nftConn(b.hostNS)
	if err == nil {
		err = deleteTable(conn, b.cfg.Bridge)
	}
	if err != nil {
		errs = append(errs, fmt.Errorf("delete table ip %s: %w", tableName(b.cfg.Bridge), err))
	}
	if link, err := h.LinkByName(b.cfg.Bridge); err == nil {
		if link.Type() != "bridge" {
			errs = append(errs, fmt.Errorf("interface %s is a %s, not a bridge; left alone", b.cfg.Bridge, link.Type()))
		} else if err := h.LinkDel(link); err != nil {
			errs = append(errs, fmt.Errorf("delete bridge %s: %w", b.cfg.Bridge, err))
		}
	} else if !isNotFound(err) {
		errs = append(errs, fmt.Errorf("bridge %s: %w", b.cfg.Bridge, err))
	}
	if len(errs) > 0 {
		return fmt.Errorf("network: Teardown: %w", errors.Join(errs...))
	}
	for _, dir := range []string{b.leases.dir, b.netnsDir, filepath.Dir(b.netnsDir)} {
		if err := os.Remove(dir); err != nil && !os.IsNotExist(err) {
			errs = append(errs, err)
		}
	}
	b.pool, b.ports = nil, nil
	b.mu.Lock()
	b.setUp = false
	b.atts = map[string]*Attachment{}
	b.mu.Unlock()
	b.unlockOwner()
	b.closeHostNS()
	b.log.Debug("torn down")
	if len(errs) > 0 {
		return fmt.Errorf("network: Teardown: %w", errors.Join(errs...))
	}
	return nil
}

// Close releases what the Bridge holds open (a handle on the host
// namespace) and leaves the kernel and StateDir as they are, so that a new
// Bridge on the same StateDir takes over (live restore). Later calls of
// Setup, Attach, Detach, Publish and Teardown return ErrClosed; Lookup and
// Attachments go on reporting what the Bridge knew. Close is idempotent
// and waits for the operation in progress, if any.
func (b *Bridge) Close() error {
	b.sem <- struct{}{}
	defer b.unlock()
	b.mu.Lock()
	b.closed, b.setUp = true, false
	b.mu.Unlock()
	b.unlockOwner()
	b.closeHostNS()
	return nil
}
