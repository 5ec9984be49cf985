package nft_test

import (
	"context"
	"log"
	"log/slog"
	"net/netip"

	"github.com/shoalhq/shoal/ingress"
	"github.com/shoalhq/shoal/ingress/nft"
)

// Example balances TCP port 8080 of this node across two tasks in the
// kernel, then removes the rules. It needs root (CAP_NET_ADMIN).
func Example() {
	cfg := nft.DefaultConfig()
	cfg.Logger = slog.Default()
	b, err := nft.New(cfg)
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

// ExampleNew programs another network namespace than the caller's, as a
// host managing several sandboxes would.
func ExampleNew() {
	b, err := nft.New(nft.Config{TableName: "shoal-ingress-sandbox1", NetNS: "/var/run/netns/sandbox1"})
	if err != nil {
		log.Fatal(err)
	}
	_ = b // Apply and Stop as in the package example.
}
