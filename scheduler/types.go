package scheduler

import (
	"errors"
	"fmt"
)

// NodeState is what the managers know about a node's connection.
type NodeState int

const (
	// NodeUnknown is the state of a node the managers have not heard from yet.
	NodeUnknown NodeState = iota
	// NodeDown is a node that left or whose session expired.
	NodeDown
	// NodeReady is a node with a live session; only ready nodes get tasks.
	NodeReady
	// NodeDisconnected is a node whose heartbeats stopped recently.
	NodeDisconnected
)

// String returns the lower-case name of the state, e.g. "ready".
func (s NodeState) String() string {
	switch s {
	case NodeUnknown:
		return "unknown"
	case NodeDown:
		return "down"
	case NodeReady:
		return "ready"
	case NodeDisconnected:
		return "disconnected"
	default:
		return fmt.Sprintf("NodeState(%d)", int(s))
	}
}

// Availability is the operator's wish for a node, as in Docker swarm mode.
type Availability int

const (
	// AvailabilityActive lets the scheduler place new tasks on the node. It is
	// the zero value, so a Node literal without Availability is schedulable.
	AvailabilityActive Availability = iota
	// AvailabilityPause keeps the node's tasks but places no new ones.
	AvailabilityPause
	// AvailabilityDrain places no new tasks; the orchestrator moves the
	// existing ones away.
	AvailabilityDrain
)

// String returns "active", "pause" or "drain".
func (a Availability) String() string {
	switch a {
	case AvailabilityActive:
		return "active"
	case AvailabilityPause:
		return "pause"
	case AvailabilityDrain:
		return "drain"
	default:
		return fmt.Sprintf("Availability(%d)", int(a))
	}
}

// Node roles, the values of Node.Role and of the node.role constraint.
const (
	RoleManager = "manager"
	RoleWorker  = "worker"
)

// Resources is an amount of CPU and memory: a node's capacity or a task's
// reservation.
type Resources struct {
	NanoCPUs    int64 // 1e9 is one CPU
	MemoryBytes int64
}

// Node is what the scheduler needs to know about a node.
//
// Resources is the node's total capacity. Zero means the node did not report
// that resource: tasks without a reservation of it fit, tasks reserving any
// amount of it do not.
type Node struct {
	ID           string
	Hostname     string
	Role         string            // RoleManager, RoleWorker, or "" when not known
	Labels       map[string]string // copied by UpsertNode
	OS           string            // e.g. "linux"
	Arch         string            // e.g. "amd64"
	State        NodeState
	Availability Availability
	Resources    Resources
}

// Task is a task to place, or (with AddTask) one that occupies a node.
type Task struct {
	ID          string
	ServiceID   string
	SpecVersion uint64 // tasks of one service and version are placed as one group
	Constraints []Constraint
	// Preferences spread the tasks of the service over the values of node
	// labels, outermost first (see Preference). Tasks with different
	// preferences are placed in different groups.
	Preferences []Preference
	// Reservations is taken from the node's capacity while the task is on it.
	Reservations Resources
	// MaxReplicasPerNode limits the tasks of this service (any spec version)
	// on one node; 0 means no limit.
	MaxReplicasPerNode uint64
	// HostPorts are the ports the task binds on its node (host-mode
	// published ports): a node where a recorded task already uses one of
	// them, whatever its service, is not a candidate.
	HostPorts []HostPort
}

// Host port protocols, the values of HostPort.Protocol.
const (
	ProtocolTCP = "tcp"
	ProtocolUDP = "udp"
)

// HostPort is a port bound on a node.
type HostPort struct {
	Port     uint16
	Protocol string // ProtocolTCP or ProtocolUDP
}

// String returns e.g. "8080/tcp".
func (p HostPort) String() string { return fmt.Sprintf("%d/%s", p.Port, p.Protocol) }

// Decision is the scheduler's answer for one pending task.
type Decision struct {
	TaskID string
	// NodeID is the chosen node, or "" when the task stays pending.
	NodeID string
	// Reason explains, when NodeID is "", why the task fits nowhere, e.g.
	// "no suitable node (2 nodes drained; 3 nodes lack 1 GiB memory)".
	Reason string
}

// Placed reports whether the task was given a node.
func (d Decision) Placed() bool { return d.NodeID != "" }

// NodeUsage is what the tasks recorded on a node take from it.
type NodeUsage struct {
	Tasks    int       // number of tasks, all services
	Reserved Resources // sum of their reservations
}

var (
	// ErrInvalidNode is matched (errors.Is) by errors from UpsertNode.
	ErrInvalidNode = errors.New("invalid node")
	// ErrInvalidTask is matched (errors.Is) by errors from AddTask.
	ErrInvalidTask = errors.New("invalid task")
)

func validateNode(n *Node) error {
	fail := func(rule string) error {
		return fmt.Errorf("%w %q: %s", ErrInvalidNode, n.ID, rule)
	}
	switch {
	case n.ID == "":
		return fail("ID must not be empty")
	case n.Role != "" && n.Role != RoleManager && n.Role != RoleWorker:
		return fail(fmt.Sprintf("Role %q must be %q, %q or empty", n.Role, RoleManager, RoleWorker))
	case n.State < NodeUnknown || n.State > NodeDisconnected:
		return fail(fmt.Sprintf("State %d is not a known NodeState", int(n.State)))
	case n.Availability < AvailabilityActive || n.Availability > AvailabilityDrain:
		return fail(fmt.Sprintf("Availability %d is not a known Availability", int(n.Availability)))
	case n.Resources.NanoCPUs < 0:
		return fail("Resources.NanoCPUs must not be negative")
	case n.Resources.MemoryBytes < 0:
		return fail("Resources.MemoryBytes must not be negative")
	}
	return nil
}

// taskRule returns the rule a task breaks, or "".
func taskRule(t *Task) string {
	switch {
	case t.ID == "":
		return "ID must not be empty"
	case t.ServiceID == "":
		return "ServiceID must not be empty"
	case t.Reservations.NanoCPUs < 0:
		return "Reservations.NanoCPUs must not be negative"
	case t.Reservations.MemoryBytes < 0:
		return "Reservations.MemoryBytes must not be negative"
	}
	for i, p := range t.HostPorts {
		if p.Port == 0 {
			return fmt.Sprintf("HostPorts[%d].Port must be 1-65535", i)
		}
		if p.Protocol != ProtocolTCP && p.Protocol != ProtocolUDP {
			return fmt.Sprintf("HostPorts[%d].Protocol %q must be %q or %q", i, p.Protocol, ProtocolTCP, ProtocolUDP)
		}
	}
	return ""
}

func taskError(id, rule string) error {
	return fmt.Errorf("%w %q: %s", ErrInvalidTask, id, rule)
}
