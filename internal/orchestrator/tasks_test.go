package orchestrator

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/identity"
	"github.com/shoalhq/shoal/internal/state"
)

func TestNewTaskCarriesAllocatedPublishedPorts(t *testing.T) {
	const (
		tcp     = api.PortProtocol_PORT_PROTOCOL_TCP
		udp     = api.PortProtocol_PORT_PROTOCOL_UDP
		ingress = api.PublishMode_PUBLISH_MODE_INGRESS
		host    = api.PublishMode_PUBLISH_MODE_HOST
	)
	port := func(target, published uint32, proto api.PortProtocol, mode api.PublishMode) *api.PortConfig {
		return &api.PortConfig{TargetPort: target, PublishedPort: published, Protocol: proto, Mode: mode}
	}
	tests := []struct {
		name      string
		spec      []*api.PortConfig
		allocated []*api.PortConfig
		want      []uint32 // published port of each spec port, in order
	}{
		{
			name:      "no endpoint yet: ports stay as asked",
			spec:      []*api.PortConfig{port(80, 0, tcp, ingress)},
			allocated: nil,
			want:      []uint32{0},
		},
		{
			name:      "any port gets the allocated one",
			spec:      []*api.PortConfig{port(80, 0, tcp, ingress)},
			allocated: []*api.PortConfig{port(80, 30001, tcp, ingress)},
			want:      []uint32{30001},
		},
		{
			name:      "explicit published port is kept",
			spec:      []*api.PortConfig{port(80, 8080, tcp, ingress)},
			allocated: []*api.PortConfig{port(80, 8080, tcp, ingress)},
			want:      []uint32{8080},
		},
		{
			name:      "matched by protocol",
			spec:      []*api.PortConfig{port(53, 0, udp, ingress), port(53, 0, tcp, ingress)},
			allocated: []*api.PortConfig{port(53, 30010, tcp, ingress), port(53, 30011, udp, ingress)},
			want:      []uint32{30011, 30010},
		},
		{
			name:      "matched by mode",
			spec:      []*api.PortConfig{port(80, 0, tcp, host)},
			allocated: []*api.PortConfig{port(80, 30001, tcp, ingress)},
			want:      []uint32{0},
		},
		{
			name:      "matched by target port",
			spec:      []*api.PortConfig{port(81, 0, tcp, ingress)},
			allocated: []*api.PortConfig{port(80, 30001, tcp, ingress)},
			want:      []uint32{0},
		},
		{
			name:      "the same target published twice gets two allocations",
			spec:      []*api.PortConfig{port(80, 0, tcp, ingress), port(80, 0, tcp, ingress)},
			allocated: []*api.PortConfig{port(80, 30001, tcp, ingress), port(80, 30002, tcp, ingress)},
			want:      []uint32{30001, 30002},
		},
		{
			name:      "an explicit port's allocation is not taken by an any port",
			spec:      []*api.PortConfig{port(80, 0, tcp, ingress), port(80, 8080, tcp, ingress)},
			allocated: []*api.PortConfig{port(80, 8080, tcp, ingress), port(80, 30002, tcp, ingress)},
			want:      []uint32{30002, 8080},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			svc := &api.Service{
				Id:          "svc1",
				SpecVersion: 3,
				Spec: &api.ServiceSpec{Name: "web", Task: &api.TaskSpec{
					Command: []string{"app"},
					Ports:   tc.spec,
				}},
			}
			if tc.allocated != nil {
				svc.Endpoint = &api.Endpoint{Ports: tc.allocated}
			}
			before := make([]uint32, len(tc.spec))
			for i, p := range tc.spec {
				before[i] = p.GetPublishedPort()
			}
			task := newTask(svc, 1, "", time.Unix(100, 0))
			require.Len(t, task.GetSpec().GetPorts(), len(tc.want))
			got := make([]uint32, len(tc.want))
			for i, p := range task.GetSpec().GetPorts() {
				got[i] = p.GetPublishedPort()
				assert.Equal(t, tc.spec[i].GetTargetPort(), p.GetTargetPort())
				assert.Equal(t, tc.spec[i].GetMode(), p.GetMode())
			}
			assert.Equal(t, tc.want, got)
			for i, p := range tc.spec {
				assert.Equal(t, before[i], p.GetPublishedPort(), "the service's spec must not change")
			}
			assert.Equal(t, uint64(3), task.GetSpecVersion())
		})
	}
}

// Tasks the replicated orchestrator creates carry the service's allocated
// published ports.
func TestReplicatedTasksCarryAllocatedPorts(t *testing.T) {
	e := newEnv(t)
	e.addNode("n1", api.NodeState_NODE_STATE_READY, 0, nil)
	e.start()
	spec := replicatedSpec("web", 2)
	spec.Task.Ports = []*api.PortConfig{
		{TargetPort: 80, Mode: api.PublishMode_PUBLISH_MODE_INGRESS},
		{TargetPort: 22, PublishedPort: 2222, Mode: api.PublishMode_PUBLISH_MODE_HOST},
	}
	id := identity.NewID()
	require.NoError(t, e.store.Update(e.ctx, func(tx state.WriteTx) error {
		return tx.CreateService(&api.Service{Id: id, Spec: spec, SpecVersion: 1, Endpoint: &api.Endpoint{Ports: []*api.PortConfig{
			{TargetPort: 80, PublishedPort: 30080, Mode: api.PublishMode_PUBLISH_MODE_INGRESS},
			{TargetPort: 22, PublishedPort: 2222, Mode: api.PublishMode_PUBLISH_MODE_HOST},
		}}})
	}))
	e.eventually(func() bool { return len(e.tasks(id)) == 2 }, false, "2 tasks created")
	for _, tk := range e.tasks(id) {
		require.Len(t, tk.GetSpec().GetPorts(), 2)
		assert.Equal(t, uint32(30080), tk.GetSpec().GetPorts()[0].GetPublishedPort())
		assert.Equal(t, uint32(2222), tk.GetSpec().GetPorts()[1].GetPublishedPort())
	}
}
