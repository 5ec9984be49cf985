package scheduler

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestHostPorts(t *testing.T) {
	web := Task{ServiceID: "web", SpecVersion: 1, HostPorts: []HostPort{{8080, ProtocolTCP}}}

	t.Run("one node: the second task is unplaceable", func(t *testing.T) {
		s := newWithNodes(t, readyNode("n1"))
		ds := s.Schedule(tasks(web, 2))
		assert.Equal(t, "n1", ds[0].NodeID)
		assert.False(t, ds[1].Placed())
		assert.Equal(t, "no suitable node (1 node has host port 8080/tcp in use)", ds[1].Reason)
	})

	t.Run("two nodes: one each", func(t *testing.T) {
		s := newWithNodes(t, readyNode("n1"), readyNode("n2"))
		ds := s.Schedule(tasks(web, 2))
		assert.Equal(t, map[string]int{"n1": 1, "n2": 1}, placements(ds))
	})

	t.Run("other services and recorded tasks count; other ports and protocols do not", func(t *testing.T) {
		s := newWithNodes(t, readyNode("n1"), readyNode("n2"), readyNode("n3"))
		require.NoError(t, s.AddTask(Task{ID: "api.1", ServiceID: "api", HostPorts: []HostPort{{8080, ProtocolTCP}}}, "n1"))
		require.NoError(t, s.AddTask(Task{ID: "dns.1", ServiceID: "dns", HostPorts: []HostPort{{8080, ProtocolUDP}}}, "n2"))
		// web needs 8080/tcp and 9000/tcp; n1 has 8080/tcp in use.
		two := web
		two.HostPorts = []HostPort{{9000, ProtocolTCP}, {8080, ProtocolTCP}}
		ds := s.Schedule(tasks(two, 3))
		assert.Equal(t, map[string]int{"n2": 1, "n3": 1}, placements(ds))
		assert.Equal(t, "no suitable node (3 nodes have a host port of 9000/tcp, 8080/tcp in use)", ds[2].Reason)

		// Removing a task frees its ports.
		require.True(t, s.RemoveTask("api.1"))
		ds = s.Schedule([]Task{{ID: "web.9", ServiceID: "web", SpecVersion: 1, HostPorts: []HostPort{{8080, ProtocolTCP}}}})
		assert.Equal(t, "n1", ds[0].NodeID)
	})

	t.Run("tasks without host ports are not limited", func(t *testing.T) {
		s := newWithNodes(t, readyNode("n1"))
		require.NoError(t, s.AddTask(Task{ID: "api.1", ServiceID: "api", HostPorts: []HostPort{{8080, ProtocolTCP}}}, "n1"))
		ds := s.Schedule(tasks(Task{ServiceID: "web", SpecVersion: 1}, 3))
		assert.Equal(t, map[string]int{"n1": 3}, placements(ds))
	})

	t.Run("invalid host ports", func(t *testing.T) {
		s := newWithNodes(t, readyNode("n1"))
		err := s.AddTask(Task{ID: "a", ServiceID: "a", HostPorts: []HostPort{{0, ProtocolTCP}}}, "n1")
		assert.ErrorIs(t, err, ErrInvalidTask)
		assert.ErrorContains(t, err, "HostPorts[0].Port must be 1-65535")
		ds := s.Schedule([]Task{{ID: "b", ServiceID: "b", HostPorts: []HostPort{{80, "sctp"}}}})
		assert.Contains(t, ds[0].Reason, `HostPorts[0].Protocol "sctp" must be "tcp" or "udp"`)
	})
}
