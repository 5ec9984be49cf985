package controlapi

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/internal/allocator"
	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/errdefs"
)

const (
	tcp     = api.PortProtocol_PORT_PROTOCOL_TCP
	udp     = api.PortProtocol_PORT_PROTOCOL_UDP
	ingress = api.PublishMode_PUBLISH_MODE_INGRESS
	host    = api.PublishMode_PUBLISH_MODE_HOST
)

func port(target, published uint32, proto api.PortProtocol, mode api.PublishMode) *api.PortConfig {
	return &api.PortConfig{TargetPort: target, PublishedPort: published, Protocol: proto, Mode: mode}
}

func withPorts(name string, ports ...*api.PortConfig) *api.ServiceSpec {
	s := spec(name, 1)
	s.Task.Ports = ports
	return s
}

func TestValidatePorts(t *testing.T) {
	tests := []struct {
		name  string
		ports []*api.PortConfig
		want  string // "" = valid
	}{
		{"none", nil, ""},
		{"ingress allocate", []*api.PortConfig{port(80, 0, tcp, ingress)}, ""},
		{"ingress explicit", []*api.PortConfig{port(80, 8080, tcp, ingress)}, ""},
		{"explicit in dynamic range", []*api.PortConfig{port(80, 30001, tcp, ingress)}, ""},
		{"host", []*api.PortConfig{port(80, 8080, tcp, host)}, ""},
		{"same target two protocols", []*api.PortConfig{port(53, 0, tcp, ingress), port(53, 0, udp, ingress)}, ""},
		{"same published two protocols", []*api.PortConfig{port(53, 53, tcp, ingress), port(53, 53, udp, ingress)}, ""},
		{"nil", []*api.PortConfig{nil}, "ServiceSpec.Ports[0]: must not be nil"},
		{"target 0", []*api.PortConfig{port(0, 0, tcp, ingress)}, "ServiceSpec.Ports[0].Target: must be 1-65535, got 0"},
		{"target too big", []*api.PortConfig{port(80, 0, tcp, ingress), port(70000, 0, tcp, ingress)}, "ServiceSpec.Ports[1].Target: must be 1-65535, got 70000"},
		{"published too big", []*api.PortConfig{port(80, 65536, tcp, ingress)}, "ServiceSpec.Ports[0].Published: must be 1-65535"},
		{"host without published", []*api.PortConfig{port(80, 0, tcp, host)}, "ServiceSpec.Ports[0].Published: must be set in host mode"},
		{"bad protocol", []*api.PortConfig{port(80, 0, 7, ingress)}, "ServiceSpec.Ports[0].Protocol: must be tcp or udp"},
		{"bad mode", []*api.PortConfig{port(80, 0, tcp, 3)}, "ServiceSpec.Ports[0].Mode: must be ingress or host"},
		{"duplicate target", []*api.PortConfig{port(80, 0, tcp, ingress), port(80, 0, tcp, ingress)}, "ServiceSpec.Ports[1].Target: 80/tcp is already listed in Ports[0]"},
		{"duplicate published", []*api.PortConfig{port(80, 8080, tcp, ingress), port(81, 8080, tcp, host)}, "ServiceSpec.Ports[1].Published: 8080/tcp is already published by Ports[0]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateServiceSpec(withPorts("web", tc.ports...))
			if tc.want == "" {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.ErrorIs(t, err, errdefs.ErrInvalidSpec)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func published(svc *api.Service) []uint32 {
	var out []uint32
	for _, p := range svc.GetEndpoint().GetPorts() {
		out = append(out, p.GetPublishedPort())
	}
	return out
}

// TestServicePorts: the service writes allocate ports (the rules are
// allocator's, tested there) in the same write, so nothing is written when
// allocation fails, and the allocation outlives spec changes.
func TestServicePorts(t *testing.T) {
	ctx := context.Background()
	s := New(newCheckedStore(t))
	s.ports = allocator.PortRange{First: 30000, Last: 30001}

	a, err := s.CreateService(ctx, &api.CreateServiceRequest{Spec: withPorts("a", port(80, 0, tcp, ingress), port(9000, 9000, tcp, host))})
	require.NoError(t, err)
	assert.Equal(t, []uint32{30000, 9000}, published(a.Service))
	assert.Equal(t, uint32(0), a.Service.Spec.Task.Ports[0].PublishedPort, "the spec stays as written")

	_, err = s.CreateService(ctx, &api.CreateServiceRequest{Spec: withPorts("c", port(80, 9000, tcp, ingress))})
	require.ErrorIs(t, gerr(err), errdefs.ErrInvalidSpec)
	assert.Contains(t, err.Error(), "port 9000/tcp is already published in host mode by service a (id "+a.Service.Id+")")
	_, err = s.CreateService(ctx, &api.CreateServiceRequest{Spec: withPorts("c", port(80, 0, tcp, ingress), port(81, 0, tcp, ingress))})
	require.ErrorIs(t, gerr(err), errdefs.ErrInvalidSpec)
	assert.Contains(t, err.Error(), "ServiceSpec.Ports[1].Published: no free tcp port left in the dynamic range 30000-30001")
	list, err := s.ListServices(ctx, &api.ListServicesRequest{Names: []string{"c"}})
	require.NoError(t, err)
	assert.Empty(t, list.Services, "nothing is written when allocation fails")

	// A port still asked for keeps its allocation; a new one gets the
	// lowest free; a port change redeploys the tasks.
	sp := withPorts("a", port(8081, 0, tcp, ingress), port(80, 0, tcp, ingress))
	up, err := s.UpdateService(ctx, &api.UpdateServiceRequest{Id: a.Service.Id, Version: a.Service.Meta.Version, Spec: sp})
	require.NoError(t, err)
	assert.Equal(t, []uint32{30001, 30000}, published(up.Service))
	assert.Equal(t, uint64(2), up.Service.SpecVersion, "a port change redeploys the tasks")

	// Removing a service frees its ports.
	_, err = s.RemoveService(ctx, &api.RemoveRequest{Id: "a"})
	require.NoError(t, err)
	e, err := s.CreateService(ctx, &api.CreateServiceRequest{Spec: withPorts("e", port(80, 30001, tcp, ingress), port(81, 0, tcp, ingress))})
	require.NoError(t, err)
	assert.Equal(t, []uint32{30001, 30000}, published(e.Service))

	// Dropping the ports drops the endpoint.
	up, err = s.UpdateService(ctx, &api.UpdateServiceRequest{Id: e.Service.Id, Version: e.Service.Meta.Version, Spec: spec("e", 1)})
	require.NoError(t, err)
	assert.Nil(t, up.Service.Endpoint)
}
