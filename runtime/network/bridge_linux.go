package network

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
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
