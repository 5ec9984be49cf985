package ipvs

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/moby/ipvs"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/shoalhq/shoal/ingress"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var testVIP = netip.MustParseAddr("198.51.100.1")

func ep(s string) ingress.Endpoint {
	return ingress.Endpoint{Task: "t-" + s, Addr: netip.MustParseAddrPort(s)}
}

func newFake(t *testing.T, cfg Config) (*Balancer, *fakeIPVS) {
	t.Helper()
	f := &fakeIPVS{}
	opens := 0
	if !cfg.VIP.IsValid() {
		cfg.VIP = testVIP
	}
	b, err := newBalancer(cfg, func(path string) (handle, error) {
		opens++
		require.Equal(t, 1, opens, "the handle is opened once")
		assert.Equal(t, cfg.NetNS, path)
		return f, nil
	})
	require.NoError(t, err)
	return b, f
}

// portErrors returns the PortErrors joined in err, by port.
func portErrors(t *testing.T, err error) map[ingress.Port]error {
	t.Helper()
	out := map[ingress.Port]error{}
	var walk func(error)
	walk = func(e error) {
		var pe *ingress.PortError
		if errors.As(e, &pe) && e == error(pe) {
			out[pe.Port] = pe.Err
			return
		}
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, x := range j.Unwrap() {
				walk(x)
			}
			return
		}
		t.Fatalf("unexpected error %v (%T)", e, e)
	}
	if err != nil {
		walk(err)
	}
	return out
}

func TestConfigDefaults(t *testing.T) {
	b, err := New(Config{VIP: testVIP})
	require.NoError(t, err)
	assert.Equal(t, "rr", b.cfg.Scheduler)
	assert.Equal(t, DefaultConfig().Scheduler, b.cfg.Scheduler)
	assert.NotNil(t, b.cfg.Logger)
	assert.Empty(t, b.cfg.NetNS)
	assert.False(t, b.cfg.AdoptExisting)

	b, err = New(Config{VIP: netip.MustParseAddr("::ffff:10.0.0.1")})
	require.NoError(t, err)
	assert.Equal(t, netip.MustParseAddr("10.0.0.1"), b.cfg.VIP, "an IPv4-mapped VIP is IPv4")
}

func TestConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cfg   Config
		field string
	}{
		{"no vip", Config{}, "Config.VIP"},
		{"unspecified vip", Config{VIP: netip.IPv4Unspecified()}, "Config.VIP"},
		{"multicast vip", Config{VIP: netip.MustParseAddr("224.0.0.1")}, "Config.VIP"},
		{"zoned vip", Config{VIP: netip.MustParseAddr("fe80::1%eth0")}, "Config.VIP"},
		{"unknown scheduler", Config{VIP: testVIP, Scheduler: "random"}, "Config.Scheduler"},
		{"relative netns", Config{VIP: testVIP, NetNS: "netns/x"}, "Config.NetNS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			_, err := New(cfg)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.field)
			assert.Equal(t, tc.cfg, cfg, "New must not change the caller's Config")
		})
	}
	_, err := New(Config{VIP: netip.MustParseAddr("fd00::1"), Scheduler: "wrr", NetNS: "/var/run/netns/x", Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
}

func TestPlanValidatesPorts(t *testing.T) {
	good := ingress.Port{Service: "a", Protocol: ingress.TCP, Published: 80}
	taken := ingress.Port{Service: "b", Protocol: ingress.TCP, Published: 80}
	udp := ingress.Port{Service: "b", Protocol: ingress.UDP, Published: 80}
	badProto := ingress.Port{Service: "c", Protocol: 9, Published: 81}
	zero := ingress.Port{Service: "d", Protocol: ingress.TCP}
	badEP := ingress.Port{Service: "e", Protocol: ingress.TCP, Published: 82}
	noPort := ingress.Port{Service: "f", Protocol: ingress.TCP, Published: 83}
	mixed := ingress.Port{Service: "g", Protocol: ingress.TCP, Published: 84}

	p, err := makePlan(ingress.Table{
		good:     {ep("10.0.0.2:80"), ep("10.0.0.1:81"), ep("[::ffff:10.0.0.3]:82"), ep("10.0.0.2:80")},
		taken:    {ep("10.0.0.9:80")},
		udp:      nil,
		badProto: {ep("10.0.0.1:80")},
		zero:     {ep("10.0.0.1:80")},
		badEP:    {{Task: "t"}},
		noPort:   {ep("10.0.0.1:0")},
		mixed:    {ep("[fd00::1]:80"), ep("10.0.0.5:80")},
	}, testVIP)
	require.Len(t, p, 3)
	assert.Equal(t, good, p[0].port)
	assert.Equal(t, []netip.AddrPort{
		netip.MustParseAddrPort("10.0.0.2:80"), netip.MustParseAddrPort("10.0.0.1:81"),
		netip.MustParseAddrPort("10.0.0.3:82"),
	}, p[0].dests, "table order kept, IPv4-mapped is IPv4, duplicates dropped")
	assert.Equal(t, mixed, p[1].port)
	assert.Equal(t, []netip.AddrPort{netip.MustParseAddrPort("10.0.0.5:80")}, p[1].dests, "the other family is left out, the rest kept")
	assert.Equal(t, udp, p[2].port)
	assert.Empty(t, p[2].dests)

	failed := portErrors(t, err)
	assert.Len(t, failed, 6)
	assert.Contains(t, failed[taken].Error(), `service "a"`)
	assert.Contains(t, failed[badProto].Error(), "Protocol")
	assert.Contains(t, failed[zero].Error(), "Published")
	assert.Contains(t, failed[badEP].Error(), "Addr")
	assert.Contains(t, failed[noPort].Error(), "port must not be 0")
	assert.Contains(t, failed[mixed].Error(), "Config.VIP")
}

func TestDiff(t *testing.T) {
	web := ingress.Port{Service: "web", Protocol: ingress.TCP, Published: 80}
	dns := ingress.Port{Service: "dns", Protocol: ingress.UDP, Published: 53}
	old := ingress.Port{Service: "old", Protocol: ingress.TCP, Published: 9000}
	a := netip.MustParseAddrPort("10.0.0.1:80")
	b := netip.MustParseAddrPort("10.0.0.2:80")
	c := netip.MustParseAddrPort("10.0.0.3:80")
	masq := uint32(ipvs.ConnFwdMasq)

	assert.Empty(t, diff(nil, nil, "rr"))
	assert.Empty(t, diff(plan{{port: web, dests: []netip.AddrPort{a, b}}},
		map[svcKey]actualSvc{keyOfPort(web): {port: web, sched: "rr", dests: []actualDest{{b, 1, masq}, {a, 1, masq}}}}, "rr"),
		"same set of real servers: nothing to do")

	ops := diff(
		plan{{port: web, dests: []netip.AddrPort{b, c}}, {port: dns, dests: []netip.AddrPort{a}}},
		map[svcKey]actualSvc{
			keyOfPort(web): {port: web, sched: "wlc", dests: []actualDest{{a, 1, masq}, {b, 0, masq}}},
			keyOfPort(old): {port: old, sched: "rr"},
		}, "rr")
	assert.Equal(t, []op{
		{kind: opUpdateService, port: web},
		{kind: opUpdateDest, port: web, dest: b},
		{kind: opAddDest, port: web, dest: c},
		{kind: opDelDest, port: web, dest: a},
		{kind: opAddService, port: dns},
		{kind: opAddDest, port: dns, dest: a},
		{kind: opDelService, port: old},
	}, ops)
	assert.Equal(t, "delete real server 10.0.0.1:80", ops[3].String())

	ops = diff(plan{{port: web, dests: []netip.AddrPort{a}}},
		map[svcKey]actualSvc{keyOfPort(web): {port: web, sched: "rr", dests: []actualDest{{a, 1, ipvs.ConnFwdDirectRoute}}}}, "rr")
	assert.Equal(t, []op{{kind: opUpdateDest, port: web, dest: a}}, ops, "a real server not masqueraded is fixed")
}

func TestApplyLifecycle(t *testing.T) {
	ctx := context.Background()
	b, f := newFake(t, Config{NetNS: "/var/run/netns/x"})
	web := ingress.Port{Service: "web", Protocol: ingress.TCP, Published: 8080}
	dns := ingress.Port{Service: "dns", Protocol: ingress.UDP, Published: 53}

	// Add a port.
	require.NoError(t, b.Apply(ctx, ingress.Table{web: {ep("10.0.1.5:80"), ep("10.0.2.7:80")}}))
	assert.Equal(t, []string{
		"GetServices",
		"NewService tcp/198.51.100.1:8080",
		"NewDestination tcp/198.51.100.1:8080 10.0.1.5:80",
		"NewDestination tcp/198.51.100.1:8080 10.0.2.7:80",
	}, f.takeCalls())
	assert.Equal(t, map[string][]string{"tcp/198.51.100.1:8080 rr": {"10.0.1.5:80", "10.0.2.7:80"}}, f.state())
	s := f.svcs[0]
	assert.Equal(t, uint16(unix.AF_INET), s.s.AddressFamily)
	assert.Equal(t, uint16(unix.IPPROTO_TCP), s.s.Protocol)
	for _, d := range s.dests {
		assert.Equal(t, 1, d.Weight)
		assert.Equal(t, uint32(ipvs.ConnFwdMasq), d.ConnectionFlags&ipvs.ConnFwdMask)
	}

	// The same table again: reads, no writes.
	require.NoError(t, b.Apply(ctx, ingress.Table{web: {ep("10.0.1.5:80"), ep("10.0.2.7:80")}}))
	calls := f.takeCalls()
	assert.Empty(t, writes(calls), "an unchanged table changes nothing")
	assert.Equal(t, []string{"GetServices", "GetDestinations tcp/198.51.100.1:8080"}, calls)

	// Add and remove endpoints, add a UDP port.
	require.NoError(t, b.Apply(ctx, ingress.Table{
		web: {ep("10.0.2.7:80"), ep("10.0.3.9:80")},
		dns: {ep("10.0.1.5:53")},
	}))
	assert.Equal(t, []string{
		"NewDestination tcp/198.51.100.1:8080 10.0.3.9:80",
		"DelDestination tcp/198.51.100.1:8080 10.0.1.5:80",
		"NewService udp/198.51.100.1:53",
		"NewDestination udp/198.51.100.1:53 10.0.1.5:53",
	}, writes(f.takeCalls()), "real servers are added before old ones are removed")
	assert.Equal(t, map[string][]string{
		"tcp/198.51.100.1:8080 rr": {"10.0.2.7:80", "10.0.3.9:80"},
		"udp/198.51.100.1:53 rr":   {"10.0.1.5:53"},
	}, f.state())

	// Remove a port.
	require.NoError(t, b.Apply(ctx, ingress.Table{dns: {ep("10.0.1.5:53")}}))
	assert.Equal(t, []string{"DelService tcp/198.51.100.1:8080"}, writes(f.takeCalls()))
	assert.Equal(t, map[string][]string{"udp/198.51.100.1:53 rr": {"10.0.1.5:53"}}, f.state())

	// A port with no endpoints keeps a virtual server with no real server.
	require.NoError(t, b.Apply(ctx, ingress.Table{dns: nil}))
	assert.Equal(t, []string{"DelDestination udp/198.51.100.1:53 10.0.1.5:53"}, writes(f.takeCalls()))

	require.NoError(t, b.Stop(ctx))
	assert.Equal(t, []string{"DelService udp/198.51.100.1:53"}, writes(f.takeCalls()))
	assert.Empty(t, f.state())
	assert.True(t, f.closed)
	require.NoError(t, b.Stop(ctx), "Stop is idempotent")
	assert.Empty(t, f.takeCalls())
	assert.ErrorIs(t, b.Apply(ctx, ingress.Table{}), ingress.ErrStopped)
}

func TestApplyIPv6(t *testing.T) {
	ctx := context.Background()
	b, f := newFake(t, Config{VIP: netip.MustParseAddr("fd00::10")})
	web := ingress.Port{Service: "web", Protocol: ingress.TCP, Published: 443}
	err := b.Apply(ctx, ingress.Table{web: {ep("[fd00::1]:443"), ep("10.0.0.1:443")}})
	assert.Contains(t, portErrors(t, err)[web].Error(), "Config.VIP")
	assert.Equal(t, map[string][]string{"tcp/[fd00::10]:443 rr": {"[fd00::1]:443"}}, f.state())
	assert.Equal(t, uint16(unix.AF_INET6), f.svcs[0].s.AddressFamily)
	assert.Equal(t, uint32(128), f.svcs[0].s.Netmask)
	require.NoError(t, b.Stop(ctx))
}

func TestApplyFailingCallYieldsPortError(t *testing.T) {
	ctx := context.Background()
	b, f := newFake(t, Config{})
	web := ingress.Port{Service: "web", Protocol: ingress.TCP, Published: 80}
	api := ingress.Port{Service: "api", Protocol: ingress.TCP, Published: 81}
	dns := ingress.Port{Service: "dns", Protocol: ingress.UDP, Published: 53}
	tbl := ingress.Table{
		web: {ep("10.0.0.1:80"), ep("10.0.0.2:80")},
		api: {ep("10.0.0.1:81")},
		dns: {ep("10.0.0.1:53")},
	}
	f.fail = func(call string) error {
		switch {
		case call == "NewDestination tcp/198.51.100.1:80 10.0.0.1:80":
			return syscall.EINVAL
		case strings.HasPrefix(call, "NewService udp/"):
			return syscall.ENOMEM
		}
		return nil
	}
	err := b.Apply(ctx, tbl)
	failed := portErrors(t, err)
	require.Len(t, failed, 2)
	assert.ErrorIs(t, failed[web], syscall.EINVAL)
	assert.Contains(t, failed[web].Error(), "add real server 10.0.0.1:80")
	assert.ErrorIs(t, failed[dns], syscall.ENOMEM)
	assert.Equal(t, map[string][]string{
		"tcp/198.51.100.1:80 rr": {},
		"tcp/198.51.100.1:81 rr": {"10.0.0.1:81"},
	}, f.state(), "the other port is applied; a failed port's later changes are skipped")
	f.takeCalls()

	// The kernel recovers: the next Apply completes what is missing.
	f.fail = nil
	require.NoError(t, b.Apply(ctx, tbl))
	assert.Equal(t, []string{
		"NewDestination tcp/198.51.100.1:80 10.0.0.1:80",
		"NewDestination tcp/198.51.100.1:80 10.0.0.2:80",
		"NewService udp/198.51.100.1:53",
		"NewDestination udp/198.51.100.1:53 10.0.0.1:53",
	}, writes(f.takeCalls()))

	// Listing failure fails the whole Apply and changes nothing.
	f.fail = func(call string) error {
		if call == "GetServices" {
			return syscall.EIO
		}
		return nil
	}
	err = b.Apply(ctx, ingress.Table{})
	assert.ErrorIs(t, err, syscall.EIO)
	assert.Len(t, f.state(), 3)

	// Stop retries after a failure.
	f.fail = func(call string) error {
		if call == "DelService tcp/198.51.100.1:81" {
			return syscall.EBUSY
		}
		return nil
	}
	err = b.Stop(ctx)
	assert.ErrorIs(t, portErrors(t, err)[api], syscall.EBUSY)
	assert.Len(t, f.state(), 1)
	assert.False(t, f.closed)
	f.fail = nil
	f.takeCalls()
	require.NoError(t, b.Stop(ctx))
	assert.Equal(t, []string{"DelService tcp/198.51.100.1:81"}, f.takeCalls(), "only what is left is retried")
	assert.Empty(t, f.state())
}

func TestOnlyOwnServicesTouched(t *testing.T) {
	ctx := context.Background()
	b, f := newFake(t, Config{})
	// Someone else's virtual servers: another address, a firewall mark,
	// and one at our VIP on a port we will be asked for.
	foreign := []*ipvs.Service{
		{Address: []byte{10, 9, 9, 9}, Protocol: unix.IPPROTO_TCP, Port: 80, SchedName: "wlc"},
		{FWMark: 7, SchedName: "rr", Address: []byte{0, 0, 0, 0}},
		{Address: testVIP.AsSlice(), Protocol: unix.IPPROTO_TCP, Port: 443, SchedName: "sh"},
		{Address: testVIP.AsSlice(), Protocol: unix.IPPROTO_TCP, Port: 444, SchedName: "sh"},
	}
	for _, s := range foreign {
		require.NoError(t, f.NewService(s))
	}
	require.NoError(t, f.NewDestination(foreign[2], b.destination(netip.MustParseAddrPort("10.5.5.5:443"))))
	f.takeCalls()
	before := f.state()

	web := ingress.Port{Service: "web", Protocol: ingress.TCP, Published: 80}
	tls := ingress.Port{Service: "tls", Protocol: ingress.TCP, Published: 443}
	err := b.Apply(ctx, ingress.Table{web: {ep("10.0.0.1:80")}, tls: {ep("10.0.0.1:443")}})
	failed := portErrors(t, err)
	require.Len(t, failed, 1)
	assert.Contains(t, failed[tls].Error(), "not created by this balancer")
	assert.Equal(t, []string{
		"GetServices",
		"NewService tcp/198.51.100.1:80",
		"NewDestination tcp/198.51.100.1:80 10.0.0.1:80",
	}, f.takeCalls(), "foreign virtual servers are neither read nor changed")

	require.NoError(t, b.Apply(ctx, ingress.Table{}))
	assert.Equal(t, []string{"DelService tcp/198.51.100.1:80"}, writes(f.takeCalls()))
	require.NoError(t, b.Apply(ctx, ingress.Table{web: {ep("10.0.0.1:80")}}))
	require.NoError(t, b.Stop(ctx))
	assert.Equal(t, before, f.state(), "Stop removes only the balancer's own virtual servers")
}

func TestAdoptExisting(t *testing.T) {
	ctx := context.Background()
	b, f := newFake(t, Config{AdoptExisting: true})
	left := &ipvs.Service{Address: testVIP.AsSlice(), Protocol: unix.IPPROTO_TCP, Port: 80, SchedName: "wlc", AddressFamily: unix.AF_INET}
	other := &ipvs.Service{Address: testVIP.AsSlice(), Protocol: unix.IPPROTO_TCP, Port: 81, SchedName: "wlc", AddressFamily: unix.AF_INET}
	require.NoError(t, f.NewService(left))
	require.NoError(t, f.NewService(other))
	require.NoError(t, f.NewDestination(left, b.destination(netip.MustParseAddrPort("10.0.0.9:80"))))
	f.takeCalls()

	web := ingress.Port{Service: "web", Protocol: ingress.TCP, Published: 80}
	require.NoError(t, b.Apply(ctx, ingress.Table{web: {ep("10.0.0.1:80")}}))
	assert.Equal(t, []string{
		"UpdateService tcp/198.51.100.1:80",
		"NewDestination tcp/198.51.100.1:80 10.0.0.1:80",
		"DelDestination tcp/198.51.100.1:80 10.0.0.9:80",
	}, writes(f.takeCalls()))
	require.NoError(t, b.Stop(ctx))
	assert.Equal(t, map[string][]string{"tcp/198.51.100.1:81 wlc": {}}, f.state(), "only the wanted port is adopted")
}

func TestApplyRepairsDrift(t *testing.T) {
	ctx := context.Background()
	b, f := newFake(t, Config{})
	web := ingress.Port{Service: "web", Protocol: ingress.TCP, Published: 80}
	tbl := ingress.Table{web: {ep("10.0.0.1:80"), ep("10.0.0.2:80")}}
	require.NoError(t, b.Apply(ctx, tbl))

	// An operator deletes a real server, then the whole virtual server.
	require.NoError(t, f.DelDestination(b.service(keyOfPort(web)), b.destination(netip.MustParseAddrPort("10.0.0.2:80"))))
	f.takeCalls()
	require.NoError(t, b.Apply(ctx, tbl))
	assert.Equal(t, []string{"NewDestination tcp/198.51.100.1:80 10.0.0.2:80"}, writes(f.takeCalls()))

	require.NoError(t, f.DelService(b.service(keyOfPort(web))))
	f.takeCalls()
	require.NoError(t, b.Apply(ctx, tbl))
	assert.Len(t, writes(f.takeCalls()), 3, "the virtual server and both real servers are created again")

	// Gone and no longer wanted: forgotten, and Stop has nothing to delete.
	require.NoError(t, f.DelService(b.service(keyOfPort(web))))
	require.NoError(t, b.Apply(ctx, ingress.Table{}))
	assert.Empty(t, b.owned)
	f.takeCalls()
	require.NoError(t, b.Stop(ctx))
	assert.Empty(t, f.takeCalls())
}

func TestApplyHonoursContext(t *testing.T) {
	b, err := New(Config{VIP: testVIP, NetNS: "/nonexistent/netns"})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	assert.ErrorIs(t, b.Apply(ctx, ingress.Table{}), context.Canceled)
	assert.ErrorIs(t, b.Stop(ctx), context.Canceled)
}

func TestOpenFailure(t *testing.T) {
	b, err := newBalancer(Config{VIP: testVIP, NetNS: "/nonexistent/netns"}, func(string) (handle, error) {
		return nil, syscall.ENOENT
	})
	require.NoError(t, err)
	err = b.Apply(context.Background(), ingress.Table{})
	assert.ErrorIs(t, err, syscall.ENOENT)
	assert.Contains(t, err.Error(), "Config.NetNS /nonexistent/netns")
	require.NoError(t, b.Stop(context.Background()), "nothing was created, so nothing to delete")
}

func TestApplyStopsWhenContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b, f := newFake(t, Config{})
	web := ingress.Port{Service: "web", Protocol: ingress.TCP, Published: 80}
	f.fail = func(call string) error {
		if strings.HasPrefix(call, "NewService") {
			cancel() // the caller gives up while Apply runs
		}
		return nil
	}
	err := b.Apply(ctx, ingress.Table{web: {ep("10.0.0.1:80")}})
	assert.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, map[string][]string{"tcp/198.51.100.1:80 rr": {}}, f.state(), "no call after the context ended")
	f.fail = nil
	require.NoError(t, b.Stop(context.Background()))
	assert.Empty(t, f.state(), "what was created before the cancel is still owned and deleted")
}

// FuzzApply checks, for arbitrary sequences of tables, that after each
// Apply the fake kernel holds exactly the plan, and that a second Apply of
// the same table writes nothing.
func FuzzApply(f *testing.F) {
	f.Add([]byte{1, 2, 3, 4, 5, 6, 7, 8, 9})
	f.Add([]byte{0, 0, 0, 255, 255, 17, 3, 3, 3, 3, 200, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		ctx := context.Background()
		b, fk := newFake(t, Config{})
		for len(data) >= 3 {
			n := int(data[0]%6) + 1
			data = data[1:]
			tbl := ingress.Table{}
			for i := 0; i < n && len(data) >= 2; i++ {
				proto := ingress.TCP
				if data[0]&1 == 1 {
					proto = ingress.UDP
				}
				port := ingress.Port{Service: "s", Protocol: proto, Published: uint16(data[0]%4) + 1}
				var eps []ingress.Endpoint
				for j := 0; j < int(data[1]%5); j++ {
					eps = append(eps, ingress.Endpoint{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(j + int(data[1])%3)}), 80)})
				}
				tbl[port] = eps
				data = data[2:]
			}
			require.NoError(t, b.Apply(ctx, tbl))
			p, _ := makePlan(tbl, testVIP)
			want := map[string][]string{}
			for _, pp := range p {
				ds := []string{}
				for _, d := range pp.dests {
					ds = append(ds, d.String())
				}
				want[svcID(b.service(keyOfPort(pp.port)))+" rr"] = ds
			}
			got := fk.state()
			for k := range got {
				slices.Sort(got[k])
			}
			for k := range want {
				slices.Sort(want[k])
			}
			require.Equal(t, want, got)
			fk.takeCalls()
			require.NoError(t, b.Apply(ctx, tbl))
			require.Empty(t, writes(fk.takeCalls()))
		}
		require.NoError(t, b.Stop(ctx))
		require.Empty(t, fk.state())
	})
}
