package network

import (
	"context"
	"fmt"
	"testing"
)

// BenchmarkAttachDetach is the network cost of starting and removing one
// task: a namespace, a veth pair, addresses and routes, a lease written
// and removed.
func BenchmarkAttachDetach(b *testing.B) {
	l := newLab(b)
	ctx := context.Background()
	br := l.newBridge(b, "shbench0", "10.210.0.0/16")
	if err := br.Setup(ctx); err != nil {
		b.Fatal(err)
	}
	i := 0
	for b.Loop() {
		id := fmt.Sprint("t", i)
		i++
		if _, err := br.Attach(ctx, id); err != nil {
			b.Fatal(err)
		}
		if err := br.Detach(ctx, id); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAttachExisting is the cost of Attach for an ID already attached:
// every check of the repair path, nothing to repair.
func BenchmarkAttachExisting(b *testing.B) {
	l := newLab(b)
	ctx := context.Background()
	br := l.newBridge(b, "shbench0", "10.210.0.0/16")
	if err := br.Setup(ctx); err != nil {
		b.Fatal(err)
	}
	if _, err := br.Attach(ctx, "t"); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := br.Attach(ctx, "t"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPublish is one Publish on a node with 100 published ports: the
// lease write and the whole table replaced in one batch.
func BenchmarkPublish(b *testing.B) {
	l := newLab(b)
	ctx := context.Background()
	br := l.newBridge(b, "shbench0", "10.210.0.0/16")
	if err := br.Setup(ctx); err != nil {
		b.Fatal(err)
	}
	const n = 100
	for i := range n {
		id := fmt.Sprint("t", i)
		if _, err := br.Attach(ctx, id); err != nil {
			b.Fatal(err)
		}
		if err := br.Publish(ctx, id, []PortMapping{{HostPort: uint16(20000 + i), Target: 80, Protocol: ProtocolTCP}}); err != nil {
			b.Fatal(err)
		}
	}
	i := 0
	for b.Loop() {
		i++
		port := uint16(30000 + i%2)
		if err := br.Publish(ctx, "t0", []PortMapping{{HostPort: port, Target: 80, Protocol: ProtocolTCP}}); err != nil {
			b.Fatal(err)
		}
	}
}
