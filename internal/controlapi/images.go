package controlapi

import (
	"context"
	"fmt"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/shoalhq/shoal/internal/api"
)

// ImageResolver pins an image reference to a digest ("name:tag@sha256:...").
//
// Resolve is called concurrently, once per service write whose image needs
// pinning, before the write and outside every lock of the Server, with a
// context that ends after Options.ResolveTimeout; it should return when ctx
// ends. auth, nil for anonymous access, are the credentials the service
// pulls with; Resolve must not log them.
type ImageResolver interface {
	Resolve(ctx context.Context, ref string, auth *api.RegistryAuth) (string, error)
}

// DefaultResolveTimeout bounds one ImageResolver.Resolve call when
// Options.ResolveTimeout is 0: a registry that has not answered in 10s is
// taken as unreachable, and the service is written with its tag rather than
// hold the client's call longer.
const DefaultResolveTimeout = 10 * time.Second

// pinImage pins spec's image to a digest when it needs it, writing the
// pinned reference into spec: when it has no digest and differs from prev,
// the stored spec's image ("" on create). An image the client sent back as
// it was stored is left alone, so an update that changes something else
// resolves nothing, and a tag given again on a pinned service ("nginx:1.13"
// over "nginx:1.13@sha256:...") is resolved again, as docker does. When the
// image cannot be pinned, spec keeps the tag and the warning for the answer
// says so. It returns an error only when ctx ended.
func (s *Server) pinImage(ctx context.Context, spec *api.TaskSpec, prev string) (warnings []string, err error) {
	ref := spec.GetImage()
	if ref == "" || ref == prev {
		return nil, nil
	}
	parsed, err := name.ParseReference(ref)
	if err != nil {
		return nil, nil // validation reported it; not reached
	}
	if _, pinned := parsed.(name.Digest); pinned {
		return nil, nil
	}
	if s.opts.Resolver == nil {
		return []string{fmt.Sprintf("image %s was not pinned to a digest: image pinning is off on this manager. "+
			"Each node will access %s independently, possibly leading to different nodes running different versions of the image.", ref, ref)}, nil
	}
	rctx, cancel := context.WithTimeout(ctx, s.resolveTimeout)
	pinned, err := s.opts.Resolver.Resolve(rctx, ref, spec.GetRegistryAuth())
	cancel()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if err == nil {
		err = checkPinned(parsed, pinned)
	}
	if err != nil {
		s.log.Info("image not pinned to a digest", "image", ref, "err", err)
		return []string{fmt.Sprintf("image %s could not be accessed on a registry to record its digest. "+
			"Each node will access %s independently, possibly leading to different nodes running different versions of the image.", ref, ref)}, nil
	}
	spec.Image = pinned
	return nil, nil
}

// checkPinned checks what a resolver answered for ref: a digest reference of
// the same repository.
func checkPinned(ref name.Reference, pinned string) error {
	p, err := name.ParseReference(pinned)
	if err != nil {
		return fmt.Errorf("the resolver answered %q: %w", pinned, err)
	}
	if _, ok := p.(name.Digest); !ok {
		return fmt.Errorf("the resolver answered %q, which has no digest", pinned)
	}
	if p.Context().Name() != ref.Context().Name() {
		return fmt.Errorf("the resolver answered %q, an image of another repository", pinned)
	}
	return nil
}
