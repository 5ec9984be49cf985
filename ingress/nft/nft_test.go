package nft

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/shoalhq/shoal/ingress"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestConfigDefaults(t *testing.T) {
	b, err := New(Config{})
	require.NoError(t, err)
	assert.Equal(t, "shoal-ingress", b.cfg.TableName)
	assert.NotNil(t, b.cfg.Logger)
	assert.Empty(t, b.cfg.NetNS)
	assert.Equal(t, DefaultConfig().TableName, b.cfg.TableName)
}

func TestConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cfg   Config
		field string
	}{
		{"long table name", Config{TableName: strings.Repeat("x", 256)}, "Config.TableName"},
		{"control character", Config{TableName: "a\nb"}, "Config.TableName"},
		{"relative netns", Config{NetNS: "netns/x"}, "Config.NetNS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			_, err := New(cfg)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.field)
			assert.Equal(t, tc.cfg, cfg, "New must not change the caller's Config")
		})
	}
	_, err := New(Config{TableName: strings.Repeat("x", 255), NetNS: "/var/run/netns/x", Logger: slog.New(slog.DiscardHandler)})
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
	e := func(s string) ingress.Endpoint { return ingress.Endpoint{Task: "t", Addr: netip.MustParseAddrPort(s)} }

	p, err := makePlan(ingress.Table{
		good:     {e("10.0.0.2:80"), e("[fd00::1]:80"), e("10.0.0.1:81"), e("[::ffff:10.0.0.3]:82")},
		taken:    {e("10.0.0.9:80")},
		udp:      nil,
		badProto: {e("10.0.0.1:80")},
		zero:     {e("10.0.0.1:80")},
		badEP:    {{Task: "t"}},
		noPort:   {e("10.0.0.1:0")},
	})
	require.Len(t, p, 2)
	assert.Equal(t, good, p[0].port)
	assert.Equal(t, []netip.AddrPort{
		netip.MustParseAddrPort("10.0.0.2:80"), netip.MustParseAddrPort("10.0.0.1:81"),
		netip.MustParseAddrPort("10.0.0.3:82"), // IPv4-mapped addresses are IPv4
	}, p[0].v4, "IPv4 endpoints keep the table's order")
	assert.Equal(t, []netip.AddrPort{netip.MustParseAddrPort("[fd00::1]:80")}, p[0].v6)
	assert.Equal(t, udp, p[1].port)
	assert.Empty(t, p[1].v4)

	var pe *ingress.PortError
	require.ErrorAs(t, err, &pe)
	failed := map[ingress.Port]string{}
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		require.True(t, errors.As(e, &pe))
		failed[pe.Port] = pe.Err.Error()
	}
	assert.Len(t, failed, 5)
	assert.Contains(t, failed[taken], `service "a"`)
	assert.Contains(t, failed[badProto], "Protocol")
	assert.Contains(t, failed[zero], "Published")
	assert.Contains(t, failed[badEP], "Addr")
	assert.Contains(t, failed[noPort], "port must not be 0")
}

func TestPlanEqual(t *testing.T) {
	port := ingress.Port{Service: "a", Protocol: ingress.TCP, Published: 80}
	e1 := ingress.Endpoint{Task: "1", Addr: netip.MustParseAddrPort("10.0.0.1:80")}
	e2 := ingress.Endpoint{Task: "2", Addr: netip.MustParseAddrPort("10.0.0.2:80")}
	mk := func(t ingress.Table) plan { p, _ := makePlan(t); return p }
	a := mk(ingress.Table{port: {e1, e2}})
	assert.True(t, a.equal(mk(ingress.Table{port: {e1, e2}})))
	assert.False(t, a.equal(mk(ingress.Table{port: {e2, e1}})), "order is the round-robin order")
	assert.False(t, a.equal(mk(ingress.Table{port: {e1}})))
	assert.False(t, a.equal(mk(ingress.Table{})))
	assert.True(t, mk(ingress.Table{}).equal(mk(nil)))
}

func TestEndpointMapEncoding(t *testing.T) {
	tbl := &nftables.Table{Name: "t", Family: nftables.TableFamilyINet}
	m, elems := endpointMap(tbl, 7, []netip.AddrPort{
		netip.MustParseAddrPort("10.1.2.3:8080"), netip.MustParseAddrPort("10.1.2.4:443"),
	})
	assert.True(t, m.Anonymous && m.Constant && m.IsMap)
	assert.Equal(t, uint32(7), m.ID)
	assert.Equal(t, uint32(8), m.DataType.Bytes, "IPv4 address and a port padded to 4 bytes")
	require.Len(t, elems, 2)
	assert.Equal(t, []byte{10, 1, 2, 3, 0x1f, 0x90, 0, 0}, elems[0].Val)
	assert.Equal(t, []byte{10, 1, 2, 4, 0x01, 0xbb, 0, 0}, elems[1].Val)

	m6, elems6 := endpointMap(tbl, 8, []netip.AddrPort{netip.MustParseAddrPort("[fd00::1]:80")})
	assert.Equal(t, uint32(20), m6.DataType.Bytes)
	assert.Len(t, elems6[0].Val, 20)

	nat := dnatRoundRobin(unix.NFPROTO_IPV6, m6, 1)[2].(*expr.NAT)
	assert.Equal(t, uint32(unix.NFT_REG32_04), nat.RegProtoMin, "the port follows a 16-byte address")
	nat = dnatRoundRobin(unix.NFPROTO_IPV4, m, 2)[2].(*expr.NAT)
	assert.Equal(t, uint32(unix.NFT_REG32_01), nat.RegProtoMin, "the port follows a 4-byte address")
}

func TestApplyAfterStop(t *testing.T) {
	b, err := New(Config{NetNS: "/nonexistent/netns"})
	require.NoError(t, err)
	err = b.Stop(context.Background())
	require.Error(t, err, "the namespace does not exist")
	assert.Contains(t, err.Error(), "Config.NetNS")
	assert.ErrorIs(t, b.Apply(context.Background(), ingress.Table{}), ingress.ErrStopped)
}

func TestApplyHonoursContext(t *testing.T) {
	b, err := New(Config{NetNS: "/nonexistent/netns"})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	assert.ErrorIs(t, b.Apply(ctx, ingress.Table{}), context.Canceled)
	assert.ErrorIs(t, b.Stop(ctx), context.Canceled)
}
