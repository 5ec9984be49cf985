package ipvs_test

import (
	"context"
	"log"
	"log/slog"
	"net/netip"

	"github.com/shoalhq/shoal/ingress"
	"github.com/shoalhq/shoal/ingress/ipvs"
)

// Example balances TCP port 8080 of the node's address 192.0.2.10 across
// two tasks with IPVS, then deletes the virtual server. It needs root
// (CAP_NET_ADMIN) and a kernel with ip_vs.
func Example() {
	cfg := ipvs.DefaultConfig()
	cfg.VIP = netip.MustParseAddr("192.0.2.10")
	cfg.Logger = slog.Default()
	b, err := ipvs.New(cfg)
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	defer func() { _ = b.Stop(ctx) }()

	web := ingress.Port{Service: "web", Protocol: ingress.TCP, Published: 8080}
	err = b.Apply(ctx, ingress.Table{web: {
		{Service: "web", Task: "t1", Addr: netip.MustParseAddrPort("10.0.1.5:80")},
		{Service: "web", Task: "t2", Addr: netip.MustParseAddrPort("10.0.2.7:80")},
	}})
	if err != nil {
		log.Fatal(err)
	}
}

// ExampleNew programs another network namespace than the caller's, taking
// over virtual servers a previous run of the program left behind.
func ExampleNew() {
	b, err := ipvs.New(ipvs.Config{
		VIP:           netip.MustParseAddr("192.0.2.10"),
		NetNS:         "/var/run/netns/sandbox1",
		AdoptExisting: true,
	})
	if err != nil {
		log.Fatal(err)
	}
	_ = b // Apply and Stop as in the package example.
}
