package network

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestPlanMapBatches(t *testing.T) {
	a := netip.MustParseAddr("10.0.0.2")
	c := netip.MustParseAddr("10.0.0.3")
	tcp := func(p uint16) portKey { return portKey{proto: 6, port: p} }
	udp := func(p uint16) portKey { return portKey{proto: 17, port: p} }
	to := func(addr netip.Addr, p uint16) portTarget { return portTarget{addr: addr, port: p} }
	span := func(from, n int, addr netip.Addr) portTable {
		t := portTable{}
		for i := range n {
			t[tcp(uint16(from+i))] = to(addr, 80)
		}
		return t
	}
	keys := func(from, n int) []portKey {
		var ks []portKey
		for i := range n {
			ks = append(ks, tcp(uint16(from+i)))
		}
		return ks
	}
	for _, tc := range []struct {
		name       string
		have, want portTable
		limit      int
		plan       []mapBatch
	}{
		{"nothing to nothing", nil, portTable{}, 4, nil},
		{"no change", portTable{tcp(80): to(a, 8080)}, portTable{tcp(80): to(a, 8080)}, 4, nil},
		{"add", nil, portTable{tcp(80): to(a, 8080)}, 4, []mapBatch{{adds: []portKey{tcp(80)}}}},
		{"remove", portTable{tcp(80): to(a, 8080)}, nil, 4, []mapBatch{{dels: []portKey{tcp(80)}}}},
		{
			"a changed value is deleted and added in one batch",
			portTable{tcp(80): to(a, 8080)}, portTable{tcp(80): to(c, 8080)}, 4,
			[]mapBatch{{dels: []portKey{tcp(80)}, adds: []portKey{tcp(80)}}},
		},
		{
			"key order: protocol, then port",
			nil, portTable{udp(53): to(a, 53), tcp(443): to(a, 443), tcp(80): to(a, 80)}, 4,
			[]mapBatch{{adds: []portKey{tcp(80), tcp(443), udp(53)}}},
		},
		{
			"split at the limit",
			nil, span(1000, 5, a), 2,
			[]mapBatch{{adds: keys(1000, 2)}, {adds: keys(1002, 2)}, {adds: keys(1004, 1)}},
		},
		{
			"moving a range",
			span(1000, 3, a), span(1001, 3, a), 2,
			[]mapBatch{{dels: keys(1000, 1), adds: keys(1003, 1)}},
		},
		{
			"changed values split in pairs",
			span(1, 3, a), span(1, 3, c), 2,
			[]mapBatch{{dels: keys(1, 2), adds: keys(1, 2)}, {dels: keys(3, 1), adds: keys(3, 1)}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := planMapBatches(tc.have, tc.want, tc.limit)
			assert.Equal(t, tc.plan, got)
			// Applying the plan turns have into want, and no batch goes
			// over the limit.
			now := portTable{}
			for k, v := range tc.have {
				now[k] = v
			}
			for _, b := range got {
				assert.LessOrEqual(t, len(b.dels), tc.limit)
				assert.LessOrEqual(t, len(b.adds), tc.limit)
				for _, k := range b.dels {
					delete(now, k)
				}
				for _, k := range b.adds {
					now[k] = tc.want[k]
				}
			}
			want := tc.want
			if want == nil {
				want = portTable{}
			}
			assert.Equal(t, want, now)
		})
	}
}
