package controlapi

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/errdefs"
)

func TestServiceNameTaken(t *testing.T) {
	ctx := context.Background()
	s := New(newCheckedStore(t))
	web, err := s.CreateService(ctx, &api.CreateServiceRequest{Spec: spec("web", 1)})
	require.NoError(t, err)
	db, err := s.CreateService(ctx, &api.CreateServiceRequest{Spec: spec("db", 1)})
	require.NoError(t, err)

	_, err = s.CreateService(ctx, &api.CreateServiceRequest{Spec: spec("WEB", 1)})
	require.ErrorIs(t, gerr(err), errdefs.ErrExist)
	assert.Contains(t, err.Error(), `ServiceSpec.Name: "WEB" is used by service `+web.Service.Id+": already exists")

	_, err = s.UpdateService(ctx, &api.UpdateServiceRequest{Id: db.Service.Id, Version: db.Service.Meta.Version, Spec: spec("web", 1)})
	require.ErrorIs(t, gerr(err), errdefs.ErrExist, "a rename to a taken name")
	assert.Contains(t, err.Error(), `ServiceSpec.Name: "web" is used by service `+web.Service.Id+": already exists")

	_, err = s.UpdateService(ctx, &api.UpdateServiceRequest{Id: web.Service.Id, Version: web.Service.Meta.Version, Spec: spec("Web", 2)})
	require.NoError(t, err, "a service keeps its own name, in any case")
}
