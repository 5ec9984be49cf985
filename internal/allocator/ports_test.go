package allocator

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/state"
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

// services stands in for a store transaction: the stored services by ID.
type services map[string]*api.Service

func (s services) FindServices(state.By) ([]*api.Service, error) {
	out := make([]*api.Service, 0, len(s))
	for _, v := range s {
		out = append(out, v)
	}
	return out, nil
}

// put allocates the ports of the service named name, as a write of the
// control API would: an existing service keeps its endpoint as the starting
// point. It stores the service only when the allocation succeeds.
func (s services) put(name string, r PortRange, ports ...*api.PortConfig) (*api.Service, error) {
	svc := &api.Service{Id: "id-" + name, Spec: &api.ServiceSpec{Name: name, Task: &api.TaskSpec{Ports: ports}}}
	if cur := s[svc.Id]; cur != nil {
		svc.Endpoint = cur.Endpoint
	}
	if err := AllocatePorts(s, svc, r); err != nil {
		return nil, err
	}
	s[svc.Id] = svc
	return svc, nil
}

func published(svc *api.Service) []uint32 {
	var out []uint32
	for _, p := range svc.GetEndpoint().GetPorts() {
		out = append(out, p.GetPublishedPort())
	}
	return out
}

func TestAllocatePorts(t *testing.T) {
	s := services{}

	a, err := s.put("a", DynamicPorts,
		port(80, 0, tcp, ingress), port(53, 0, udp, ingress), port(443, 30000, tcp, ingress), port(9000, 9000, tcp, host))
	require.NoError(t, err)
	assert.Equal(t, []uint32{30001, 30000, 30000, 9000}, published(a),
		"lowest free per protocol; an explicit port in the range is taken before allocation")
	assert.Equal(t, uint32(0), a.Spec.Task.Ports[0].PublishedPort, "the spec stays as written")

	b, err := s.put("b", DynamicPorts, port(80, 0, tcp, ingress))
	require.NoError(t, err)
	assert.Equal(t, []uint32{30002}, published(b))

	// Conflicts name the port and the service.
	_, err = s.put("c", DynamicPorts, port(80, 8080, tcp, ingress), port(81, 30001, tcp, ingress))
	require.ErrorIs(t, err, errdefs.ErrInvalidSpec)
	assert.Contains(t, err.Error(), "ServiceSpec.Ports[1].Published: port 30001/tcp is already published by service a (id "+a.Id+")")
	_, err = s.put("c", DynamicPorts, port(80, 9000, tcp, ingress))
	require.ErrorIs(t, err, errdefs.ErrInvalidSpec)
	assert.Contains(t, err.Error(), "port 9000/tcp is already published in host mode by service a")
	_, err = s.put("c", DynamicPorts, port(80, 30002, tcp, host))
	require.ErrorIs(t, err, errdefs.ErrInvalidSpec, "a host port may not be another service's ingress port")

	// Host-mode ports of different services may coincide (the scheduler
	// keeps them apart per node); another protocol is another port.
	_, err = s.put("d", DynamicPorts, port(80, 9000, tcp, host), port(81, 30001, udp, ingress))
	require.NoError(t, err)

	// Update: a port still asked for keeps its allocation, even after the
	// ports around it were freed; a new one gets the lowest free.
	delete(s, b.Id)
	up, err := s.put("a", DynamicPorts, port(8081, 0, tcp, ingress), port(80, 0, tcp, ingress), port(53, 0, udp, ingress))
	require.NoError(t, err)
	assert.Equal(t, []uint32{30000, 30001, 30000}, published(up))

	// Removing a service frees its ports.
	delete(s, a.Id)
	e, err := s.put("e", DynamicPorts, port(80, 30001, tcp, ingress), port(81, 0, tcp, ingress))
	require.NoError(t, err)
	assert.Equal(t, []uint32{30001, 30000}, published(e))

	// Dropping the ports drops the endpoint.
	up, err = s.put("e", DynamicPorts)
	require.NoError(t, err)
	assert.Nil(t, up.Endpoint)
}

func TestAllocatePortsKeepsBeforeAllocating(t *testing.T) {
	s := services{}
	a, err := s.put("a", DynamicPorts, port(80, 0, tcp, ingress))
	require.NoError(t, err)
	require.Equal(t, []uint32{30000}, published(a))
	a, err = s.put("a", DynamicPorts, port(81, 0, tcp, ingress), port(80, 0, tcp, ingress))
	require.NoError(t, err)
	assert.Equal(t, []uint32{30001, 30000}, published(a), "a new port listed first does not take the port target 80 keeps")
}

func TestAllocatePortsExhausted(t *testing.T) {
	s := services{}
	r := PortRange{30000, 30002}
	assert.Equal(t, "30000-30002", r.String())

	for _, name := range []string{"a", "b", "c"} {
		_, err := s.put(name, r, port(80, 0, tcp, ingress))
		require.NoError(t, err, name)
	}
	_, err := s.put("d", r, port(80, 0, udp, ingress), port(81, 0, tcp, ingress))
	require.ErrorIs(t, err, errdefs.ErrInvalidSpec)
	assert.Contains(t, err.Error(), "ServiceSpec.Ports[1].Published: no free tcp port left in the dynamic range 30000-30002")

	delete(s, "id-b")
	d, err := s.put("d", r, port(80, 0, udp, ingress), port(81, 0, tcp, ingress))
	require.NoError(t, err)
	assert.Equal(t, []uint32{30000, 30001}, published(d))
}

func TestPortKeyString(t *testing.T) {
	assert.Equal(t, "8080/tcp", PortKey{8080, tcp}.String())
	assert.Equal(t, "53/udp", PortKey{53, udp}.String())
}
