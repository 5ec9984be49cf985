package network_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"net/netip"

	"github.com/shoalhq/shoal/runtime/network"
)

// Example gives one task its network on the node's bridge, publishes its
// port 80 on the node's port 8080, and removes it all again. It needs root
// on Linux (CAP_NET_ADMIN and CAP_SYS_ADMIN).
func Example() {
	cfg := network.DefaultConfig()
	cfg.StateDir = "/var/lib/shoal/network"
	cfg.Logger = slog.Default()
	b, err := network.New(cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	if err := b.Setup(ctx); err != nil {
		log.Fatal(err)
	}

	att, err := b.Attach(ctx, "task1")
	if err != nil {
		log.Fatal(err)
	}
	// att.NetnsPath goes into the OCI spec as the network namespace's
	// path; the container's address is att.Addr.
	fmt.Println(att.NetnsPath, att.Addr, att.Gateway)

	err = b.Publish(ctx, "task1", []network.PortMapping{{HostPort: 8080, Target: 80, Protocol: network.ProtocolTCP}})
	if err != nil {
		log.Fatal(err)
	}
	if err := b.Detach(ctx, "task1"); err != nil {
		log.Fatal(err)
	}
}

// ExampleNew runs two nodes' bridges in one process, each with its host
// side in a network namespace of its own, as a test harness does.
func ExampleNew() {
	for i, ns := range []string{"/run/netns/node1", "/run/netns/node2"} {
		cfg := network.DefaultConfig()
		cfg.StateDir = fmt.Sprintf("/tmp/shoal/node%d/network", i+1)
		cfg.HostNetns = ns
		cfg.Subnet = netip.MustParsePrefix(fmt.Sprintf("10.77.%d.0/24", i+1))
		b, err := network.New(cfg)
		if err != nil {
			log.Fatal(err)
		}
		_ = b // Setup, Attach, ... as in the package example.
	}
}

// ExampleBridge_Setup shows live restore: a Bridge on the StateDir of an
// earlier one knows that one's attachments once set up.
func ExampleBridge_Setup() {
	cfg := network.DefaultConfig()
	cfg.StateDir = "/var/lib/shoal/network"
	b, err := network.New(cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()
	if err := b.Setup(context.Background()); err != nil {
		log.Fatal(err)
	}
	for _, att := range b.Attachments() {
		fmt.Println(att.ID, att.Addr, att.Ports)
	}
}
