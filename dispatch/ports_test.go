package dispatch

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/runtime"
	"github.com/shoalhq/shoal/runtime/runtimetest"
)

func TestAgentReportsEndpoints(t *testing.T) {
	st := newStore(t)
	createNode(t, st, "n1", api.NodeState_NODE_STATE_UNKNOWN)
	tk := assignedTask("t1", "n1")
	tk.Spec.Ports = []*api.PortConfig{
		{TargetPort: 80},
		{TargetPort: 53, PublishedPort: 5353, Protocol: api.PortProtocol_PORT_PROTOCOL_UDP, Mode: api.PublishMode_PUBLISH_MODE_HOST},
	}
	createTask(t, st, tk)
	rt := runtimetest.New()
	started := make(chan runtime.Task, 1)
	rt.OnEvent(func(e runtimetest.Event) {
		if e.Kind == runtimetest.EventStarted {
			started <- e.Task
		}
	})
	s := startServer(t, st, agentServerConfig(), "")
	startAgent(t, agentConfig("n1", newManagerList(s.addr).get, rt))
	requireTaskState(t, storeView{st}, "t1", api.TaskState_TASK_STATE_RUNNING)

	seen := <-started
	assert.Equal(t, []runtime.PortRequest{{Target: 80, Protocol: "tcp"}, {Target: 53, Protocol: "udp", HostPort: 5353}},
		seen.Spec.Ports, "ingress ports get a host port the runtime picks; host ports the published one")
	eps := getTask(st, "t1").GetStatus().GetEndpoints()
	require.Len(t, eps, 2)
	// The agent connected over loopback: the node's address is 127.0.0.1.
	assert.Equal(t, &api.TaskEndpoint{TargetPort: 80, Ip: "127.0.0.1", Port: runtimetest.FirstFakePort}, stripped(eps[0]))
	assert.Equal(t, &api.TaskEndpoint{TargetPort: 53, Protocol: api.PortProtocol_PORT_PROTOCOL_UDP, Ip: "127.0.0.1", Port: 5353}, stripped(eps[1]))
}

func stripped(e *api.TaskEndpoint) *api.TaskEndpoint {
	return &api.TaskEndpoint{TargetPort: e.TargetPort, Protocol: e.Protocol, Ip: e.Ip, Port: e.Port}
}

func TestFillNodeAddr(t *testing.T) {
	st := &api.TaskStatus{Endpoints: []*api.TaskEndpoint{{TargetPort: 80, Port: 40000}, {TargetPort: 81, Ip: "10.0.0.9", Port: 81}}}
	fillNodeAddr(st, "[::ffff:192.0.2.7]:4242")
	assert.Equal(t, "192.0.2.7", st.Endpoints[0].Ip)
	assert.Equal(t, "10.0.0.9", st.Endpoints[1].Ip, "a task's own address is kept")
	st = &api.TaskStatus{Endpoints: []*api.TaskEndpoint{{TargetPort: 80, Port: 40000}}}
	fillNodeAddr(st, "not an address")
	assert.Equal(t, "", st.Endpoints[0].Ip, "an unknown node address leaves it empty")
}
