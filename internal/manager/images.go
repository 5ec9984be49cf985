package manager

import (
	"context"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/controlapi"
	"github.com/shoalhq/shoal/runtime"
	"github.com/shoalhq/shoal/runtime/image"
)

// imageResolver pins service images to digests through the registry
// protocol (runtime/image), for the control API.
type imageResolver struct {
	opts image.RemoteOptions
}

var _ controlapi.ImageResolver = imageResolver{}

func (r imageResolver) Resolve(ctx context.Context, ref string, auth *api.RegistryAuth) (string, error) {
	var a runtime.RegistryAuth
	if auth != nil {
		a = runtime.RegistryAuth{Username: auth.GetUsername(), Password: auth.GetPassword(),
			IdentityToken: auth.GetIdentityToken(), RegistryToken: auth.GetRegistryToken()}
	}
	return image.Resolve(ctx, ref, a, r.opts)
}
