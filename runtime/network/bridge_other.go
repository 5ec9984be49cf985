//go:build !linux

package network

import (
	"context"
	"errors"
	"fmt"
	"runtime"
)

// Bridge is one node's bridge network. It exists only on Linux: on other
// systems New returns an error wrapping errors.ErrUnsupported.
type Bridge struct{}

var errUnsupported = fmt.Errorf("network: bridge networking needs Linux (network namespaces, veth, nftables), not %s: %w", runtime.GOOS, errors.ErrUnsupported)

// New validates cfg and returns an error wrapping errors.ErrUnsupported.
func New(cfg Config) (*Bridge, error) {
	if _, err := cfg.withDefaults(); err != nil {
		return nil, err
	}
	return nil, errUnsupported
}

// Setup returns an error wrapping errors.ErrUnsupported.
func (b *Bridge) Setup(ctx context.Context) error { return errUnsupported }

// Attach returns an error wrapping errors.ErrUnsupported.
func (b *Bridge) Attach(ctx context.Context, id string) (*Attachment, error) {
	return nil, errUnsupported
}

// Lookup reports no attachment.
func (b *Bridge) Lookup(id string) (*Attachment, bool) { return nil, false }

// Attachments returns none.
func (b *Bridge) Attachments() []*Attachment { return nil }

// Detach returns an error wrapping errors.ErrUnsupported.
func (b *Bridge) Detach(ctx context.Context, id string) error { return errUnsupported }

// Publish returns an error wrapping errors.ErrUnsupported.
func (b *Bridge) Publish(ctx context.Context, id string, ports []PortMapping) error {
	return errUnsupported
}

// Teardown returns an error wrapping errors.ErrUnsupported.
func (b *Bridge) Teardown(ctx context.Context) error { return errUnsupported }

// Close returns nil.
func (b *Bridge) Close() error { return nil }
