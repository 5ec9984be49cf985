package allocator_test

import (
	"fmt"

	"github.com/shoalhq/shoal/internal/allocator"
	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/state"
)

// stored stands in for a store transaction holding no other service.
type stored []*api.Service

func (s stored) FindServices(state.By) ([]*api.Service, error) { return s, nil }

func ExampleAllocatePorts() {
	svc := &api.Service{Id: "web", Spec: &api.ServiceSpec{Name: "web", Task: &api.TaskSpec{Ports: []*api.PortConfig{
		{TargetPort: 80, Mode: api.PublishMode_PUBLISH_MODE_INGRESS},
	}}}}
	if err := allocator.AllocatePorts(stored{}, svc, allocator.DynamicPorts); err != nil {
		fmt.Println(err)
		return
	}
	p := svc.Endpoint.Ports[0]
	fmt.Println(allocator.PortKey{Port: p.PublishedPort, Protocol: p.Protocol}, "->", p.TargetPort)
	// Output: 30000/tcp -> 80
}
