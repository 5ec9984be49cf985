package orchestrator

import (
	"maps"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/identity"
)

// Task states the reconcilers compare against.
const (
	statePending   = api.TaskState_TASK_STATE_PENDING
	stateAssigned  = api.TaskState_TASK_STATE_ASSIGNED
	stateRunning   = api.TaskState_TASK_STATE_RUNNING
	stateComplete  = api.TaskState_TASK_STATE_COMPLETE
	stateShutdown  = api.TaskState_TASK_STATE_SHUTDOWN
	stateRemove    = api.TaskState_TASK_STATE_REMOVE
	pendingMessage = "pending task scheduling"
)

// isDead reports whether the task has stopped for good (observed state
// COMPLETE or later).
func isDead(t *api.Task) bool { return t.GetStatus().GetState() >= stateComplete }

// neverAssigned reports whether the scheduler has not given the task a node
// yet: nothing runs it, so it can be stopped or deleted without a worker.
func neverAssigned(t *api.Task) bool { return t.GetStatus().GetState() < stateAssigned }

// isOccupant reports whether the task holds its slot: it is wanted running,
// whatever its observed state. A dead occupant is a task that ended and was
// not (yet) restarted.
func isOccupant(t *api.Task) bool { return t.GetDesiredState() <= stateRunning }

// endedOnItsOwn reports whether a dead task stopped without being told to:
// it completed, failed, was rejected or orphaned. A SHUTDOWN report is what
// a worker sends for a task it was asked to stop.
func endedOnItsOwn(t *api.Task) bool {
	return isDead(t) && t.GetStatus().GetState() != stateShutdown
}

// failed reports whether a dead task ended in failure for the on-failure
// restart condition: anything but COMPLETE, including a SHUTDOWN nobody
// asked for.
func failed(t *api.Task) bool { return isDead(t) && t.GetStatus().GetState() != stateComplete }

// statusTime returns when the task reached its observed state, in Unix
// nanoseconds: the status timestamp, or the last write to the task when the
// reporter set none.
func statusTime(t *api.Task) int64 {
	if ts := t.GetStatus().GetTimestamp(); ts != 0 {
		return ts
	}
	return t.GetMeta().GetUpdatedAt()
}

// newerFirst orders tasks by the time they reached their state, then by
// creation, newest first; the ID breaks ties so the order is total.
func newerFirst(a, b *api.Task) int {
	if x, y := statusTime(a), statusTime(b); x != y {
		if x > y {
			return -1
		}
		return 1
	}
	if x, y := a.GetMeta().GetCreatedAt(), b.GetMeta().GetCreatedAt(); x != y {
		if x > y {
			return -1
		}
		return 1
	}
	switch {
	case a.GetId() > b.GetId():
		return -1
	case a.GetId() < b.GetId():
		return 1
	}
	return 0
}

// fillPublishedPorts gives each port of spec that asks for no published
// port (PublishedPort 0: "any") the one the allocator gave the service: the
// entry of ep with the same target port, protocol and mode. The worker
// publishes the task's ingress ports under these numbers in the routing
// mesh, so they must travel with the task. A port the allocator has not
// allocated (yet) keeps 0; each allocated entry is used once, so two
// otherwise identical ports get distinct allocations in order.
func fillPublishedPorts(spec *api.TaskSpec, ep *api.Endpoint) {
	allocated := ep.GetPorts()
	if len(allocated) == 0 {
		return
	}
	used := make([]bool, len(allocated))
	// claim marks and returns the first unused allocation for p: one with
	// p's published port, or any published port when p asks for none.
	claim := func(p *api.PortConfig) *api.PortConfig {
		for i, a := range allocated {
			if !used[i] && samePort(p, a) && a.GetPublishedPort() != 0 &&
				(p.GetPublishedPort() == 0 || a.GetPublishedPort() == p.GetPublishedPort()) {
				used[i] = true
				return a
			}
		}
		return nil
	}
	// Ports that name their published port claim it first, so an "any"
	// port never takes the allocation of an explicit one.
	for _, p := range spec.GetPorts() {
		if p.GetPublishedPort() != 0 {
			claim(p)
		}
	}
	for _, p := range spec.GetPorts() {
		if p.GetPublishedPort() == 0 {
			if a := claim(p); a != nil {
				p.PublishedPort = a.GetPublishedPort()
			}
		}
	}
}

// samePort reports whether two port configs are for the same target port,
// protocol and publish mode.
func samePort(a, b *api.PortConfig) bool {
	return a.GetTargetPort() == b.GetTargetPort() && a.GetProtocol() == b.GetProtocol() && a.GetMode() == b.GetMode()
}

// newTask returns a task for one slot of svc, as the rest of the system
// expects new tasks: PENDING, desired RUNNING, with a copy of the service's
// task spec, its spec version and its labels. nodeID is preset for global
// services.
func newTask(svc *api.Service, slot uint64, nodeID string, now time.Time) *api.Task {
	spec := &api.TaskSpec{}
	if s := svc.GetSpec().GetTask(); s != nil {
		spec = proto.Clone(s).(*api.TaskSpec)
	}
	fillPublishedPorts(spec, svc.GetEndpoint())
	return &api.Task{
		Id:           identity.NewID(),
		ServiceId:    svc.GetId(),
		ServiceName:  svc.GetSpec().GetName(),
		Slot:         slot,
		NodeId:       nodeID,
		Spec:         spec,
		SpecVersion:  svc.GetSpecVersion(),
		DesiredState: api.TaskState_TASK_STATE_RUNNING,
		Status: &api.TaskStatus{
			State:     statePending,
			Message:   pendingMessage,
			Timestamp: now.UnixNano(),
		},
		ServiceLabels: maps.Clone(svc.GetSpec().GetLabels()),
	}
}
