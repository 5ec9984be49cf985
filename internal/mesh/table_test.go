package mesh

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/shoalhq/shoal/gossip"
	"github.com/shoalhq/shoal/ingress"
)

func TestTable(t *testing.T) {
	a1 := netip.MustParseAddrPort("10.0.0.1:31001")
	a2 := netip.MustParseAddrPort("10.0.0.2:31002")
	a3 := netip.MustParseAddrPort("10.0.0.3:31003")
	ep := func(svc, task string, port uint32, proto string, addr netip.AddrPort) gossip.Endpoint {
		return gossip.Endpoint{Service: svc, Task: task, Node: "node-" + task, Port: port, Protocol: proto, Addr: addr}
	}
	tests := []struct {
		name string
		in   []gossip.Endpoint
		want ingress.Table
	}{
		{"nil", nil, ingress.Table{}},
		{"empty", []gossip.Endpoint{}, ingress.Table{}},
		{"one tcp endpoint", []gossip.Endpoint{ep("web", "t1", 8080, "tcp", a1)}, ingress.Table{
			{Service: "web", Protocol: ingress.TCP, Published: 8080}: {{Service: "web", Task: "t1", Addr: a1}},
		}},
		{"one udp endpoint", []gossip.Endpoint{ep("dns", "t1", 53, "udp", a1)}, ingress.Table{
			{Service: "dns", Protocol: ingress.UDP, Published: 53}: {{Service: "dns", Task: "t1", Addr: a1}},
		}},
		{"several endpoints of a port are grouped in table order", []gossip.Endpoint{
			ep("web", "t1", 8080, "tcp", a1), ep("web", "t2", 8080, "tcp", a2), ep("web", "t3", 8080, "tcp", a3),
		}, ingress.Table{
			{Service: "web", Protocol: ingress.TCP, Published: 8080}: {
				{Service: "web", Task: "t1", Addr: a1}, {Service: "web", Task: "t2", Addr: a2}, {Service: "web", Task: "t3", Addr: a3},
			},
		}},
		{"tcp and udp on one port number are two ports", []gossip.Endpoint{
			ep("dns", "t1", 53, "tcp", a1), ep("dns", "t1", 53, "udp", a1), ep("dns", "t2", 53, "udp", a2),
		}, ingress.Table{
			{Service: "dns", Protocol: ingress.TCP, Published: 53}: {{Service: "dns", Task: "t1", Addr: a1}},
			{Service: "dns", Protocol: ingress.UDP, Published: 53}: {
				{Service: "dns", Task: "t1", Addr: a1}, {Service: "dns", Task: "t2", Addr: a2},
			},
		}},
		{"the service is part of the key", []gossip.Endpoint{
			ep("api", "t1", 8080, "tcp", a1), ep("web", "t2", 8080, "tcp", a2),
		}, ingress.Table{
			{Service: "api", Protocol: ingress.TCP, Published: 8080}: {{Service: "api", Task: "t1", Addr: a1}},
			{Service: "web", Protocol: ingress.TCP, Published: 8080}: {{Service: "web", Task: "t2", Addr: a2}},
		}},
		{"the published port is part of the key", []gossip.Endpoint{
			ep("web", "t1", 80, "tcp", a1), ep("web", "t1", 443, "tcp", a2),
		}, ingress.Table{
			{Service: "web", Protocol: ingress.TCP, Published: 80}:  {{Service: "web", Task: "t1", Addr: a1}},
			{Service: "web", Protocol: ingress.TCP, Published: 443}: {{Service: "web", Task: "t1", Addr: a2}},
		}},
		{"port 0 is skipped", []gossip.Endpoint{ep("web", "t1", 0, "tcp", a1)}, ingress.Table{}},
		{"a port over 65535 is skipped", []gossip.Endpoint{
			ep("web", "t1", 65536, "tcp", a1), ep("web", "t2", 1<<32-1, "udp", a2),
		}, ingress.Table{}},
		{"the edges of the port range are kept", []gossip.Endpoint{
			ep("web", "t1", 1, "tcp", a1), ep("web", "t2", 65535, "tcp", a2),
		}, ingress.Table{
			{Service: "web", Protocol: ingress.TCP, Published: 1}:     {{Service: "web", Task: "t1", Addr: a1}},
			{Service: "web", Protocol: ingress.TCP, Published: 65535}: {{Service: "web", Task: "t2", Addr: a2}},
		}},
		{"skipped endpoints leave the others", []gossip.Endpoint{
			ep("web", "t1", 0, "tcp", a1), ep("web", "t2", 8080, "tcp", a2), ep("web", "t3", 70000, "tcp", a3),
		}, ingress.Table{
			{Service: "web", Protocol: ingress.TCP, Published: 8080}: {{Service: "web", Task: "t2", Addr: a2}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, Table(tt.in))
		})
	}
}
