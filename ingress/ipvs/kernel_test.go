package ipvs

import (
	"context"
	"net/netip"
	"os"
	"slices"
	"testing"

	"github.com/moby/ipvs"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/shoalhq/shoal/ingress"
)

// kernelHandle opens the real IPVS of the caller's namespace or skips the
// test, saying what is missing.
func kernelHandle(t *testing.T) *ipvs.Handle {
	t.Helper()
	if _, err := os.Stat("/proc/net/ip_vs"); err != nil {
		t.Skip("skipping: IPVS is unavailable: /proc/net/ip_vs is missing, so this kernel has no ip_vs module loaded (modprobe ip_vs as root, or run in a VM that has it)")
	}
	h, err := ipvs.New("")
	if err != nil {
		t.Skipf("skipping: IPVS is unavailable: ipvs.New failed (%v); this test needs a kernel with ip_vs and CAP_NET_ADMIN", err)
	}
	if _, err := h.GetServices(); err != nil {
		h.Close()
		t.Skipf("skipping: IPVS cannot be read (%v); this test needs CAP_NET_ADMIN", err)
	}
	return h
}

// kernelState returns "proto/port -> dests" of the services at vip.
func kernelState(t *testing.T, h *ipvs.Handle, vip netip.Addr) map[string][]string {
	t.Helper()
	svcs, err := h.GetServices()
	require.NoError(t, err)
	out := map[string][]string{}
	for _, s := range svcs {
		a, ok := netip.AddrFromSlice(s.Address)
		if !ok || a.Unmap() != vip || s.FWMark != 0 {
			continue
		}
		ds, err := h.GetDestinations(s)
		require.NoError(t, err)
		names := []string{}
		for _, d := range ds {
			da, _ := netip.AddrFromSlice(d.Address)
			names = append(names, netip.AddrPortFrom(da.Unmap(), d.Port).String())
			assert.Equal(t, uint32(ipvs.ConnFwdMasq), d.ConnectionFlags&ipvs.ConnFwdMask)
		}
		slices.Sort(names)
		proto := "tcp"
		if s.Protocol == unix.IPPROTO_UDP {
			proto = "udp"
		}
		out[proto+"/"+netip.AddrPortFrom(vip, s.Port).String()+" "+s.SchedName] = names
	}
	return out
}

func TestKernel(t *testing.T) {
	h := kernelHandle(t)
	defer h.Close()
	ctx := context.Background()
	vip := netip.MustParseAddr("198.51.100.77") // TEST-NET-2: routes nowhere

	foreign := &ipvs.Service{Address: vip.AsSlice(), Protocol: unix.IPPROTO_TCP, Port: 9, SchedName: "wlc", AddressFamily: unix.AF_INET, Netmask: 0xffffffff}
	require.NoError(t, h.NewService(foreign))
	defer func() { _ = h.DelService(foreign) }()

	b, err := New(Config{VIP: vip})
	require.NoError(t, err)
	defer func() { _ = b.Stop(ctx) }()
	web := ingress.Port{Service: "web", Protocol: ingress.TCP, Published: 18080}
	dns := ingress.Port{Service: "dns", Protocol: ingress.UDP, Published: 10053}
	taken := ingress.Port{Service: "x", Protocol: ingress.TCP, Published: 9}

	err = b.Apply(ctx, ingress.Table{
		web:   {ep("10.0.1.5:80"), ep("10.0.2.7:80")},
		dns:   {ep("10.0.1.5:53")},
		taken: {ep("10.0.1.5:9")},
	})
	failed := portErrors(t, err)
	require.Len(t, failed, 1)
	assert.Contains(t, failed[taken].Error(), "not created by this balancer")
	assert.Equal(t, map[string][]string{
		"tcp/198.51.100.77:9 wlc":    {},
		"tcp/198.51.100.77:18080 rr": {"10.0.1.5:80", "10.0.2.7:80"},
		"udp/198.51.100.77:10053 rr": {"10.0.1.5:53"},
	}, kernelState(t, h, vip))

	// Replace an endpoint and drop the UDP port; then the same again.
	tbl := ingress.Table{web: {ep("10.0.2.7:80"), ep("10.0.3.9:80")}}
	require.NoError(t, b.Apply(ctx, tbl))
	require.NoError(t, b.Apply(ctx, tbl))
	assert.Equal(t, map[string][]string{
		"tcp/198.51.100.77:9 wlc":    {},
		"tcp/198.51.100.77:18080 rr": {"10.0.2.7:80", "10.0.3.9:80"},
	}, kernelState(t, h, vip))

	require.NoError(t, b.Stop(ctx))
	assert.Equal(t, map[string][]string{"tcp/198.51.100.77:9 wlc": {}}, kernelState(t, h, vip),
		"Stop deletes only the balancer's virtual servers")
}
