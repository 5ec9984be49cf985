package testhook

import (
	"context"
	"time"
)

// Hooks are the fault-injection points of a node.
type Hooks struct {
	// RaftFault, if set, is asked about every Raft message a manager sends
	// (from and to are Raft member IDs): drop it, or deliver it after delay.
	// It is called from the transport's send goroutines concurrently and
	// must not block.
	RaftFault func(from, to uint64) (drop bool, delay time.Duration)
}

type key struct{}

// With returns a context carrying h.
func With(ctx context.Context, h Hooks) context.Context { return context.WithValue(ctx, key{}, h) }

// From returns the hooks ctx carries (zero if none).
func From(ctx context.Context) Hooks {
	h, _ := ctx.Value(key{}).(Hooks)
	return h
}
