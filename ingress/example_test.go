package ingress_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/shoalhq/shoal/ingress"
)

// A published port balanced across two tasks with the userspace balancer.
func ExampleUserspace() {
	// Two "tasks", each answering its own name.
	var stops []func()
	defer func() {
		for _, stop := range stops {
			stop()
		}
	}()
	task := func(name string) netip.AddrPort {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			panic(err)
		}
		stops = append(stops, func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				fmt.Fprintln(c, name)
				c.Close()
			}
		}()
		return ln.Addr().(*net.TCPAddr).AddrPort()
	}
	web1, web2 := task("web.1"), task("web.2")

	cfg := ingress.DefaultConfig()
	cfg.ListenAddr = netip.MustParseAddr("127.0.0.1")
	b, err := ingress.New(cfg)
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	defer b.Stop(ctx)

	// Publish port 0 is invalid; find a free port number for the example.
	probe, _ := net.Listen("tcp", "127.0.0.1:0")
	published := uint16(probe.Addr().(*net.TCPAddr).Port)
	probe.Close()

	port := ingress.Port{Service: "web", Protocol: ingress.TCP, Published: published}
	err = b.Apply(ctx, ingress.Table{port: {
		{Service: "web", Task: "web.1", Addr: web1},
		{Service: "web", Task: "web.2", Addr: web2},
	}})
	if err != nil {
		panic(err)
	}

	for range 4 {
		c, err := net.Dial("tcp", netip.AddrPortFrom(cfg.ListenAddr, published).String())
		if err != nil {
			panic(err)
		}
		line, _ := bufio.NewReader(c).ReadString('\n')
		fmt.Print(line)
		c.Close()
	}
	// Output:
	// web.1
	// web.2
	// web.1
	// web.2
}

func ExampleNew() {
	cfg := ingress.DefaultConfig()
	cfg.MaxConnsPerPort = -1
	_, err := ingress.New(cfg)
	fmt.Println(err)
	// Output:
	// ingress: Config.MaxConnsPerPort: must be at least 1, got -1
}
