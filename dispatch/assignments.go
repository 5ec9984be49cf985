package dispatch

import (
	"context"
	"errors"
	"sort"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/state"
)

// assignable reports whether t belongs in nodeID's assignment set.
func assignable(t *api.Task, nodeID string) bool {
	if t == nil || t.GetNodeId() != nodeID {
		return false
	}
	st := t.GetStatus().GetState()
	if st < api.TaskState_TASK_STATE_ASSIGNED {
		return false
	}
	dead := st >= api.TaskState_TASK_STATE_COMPLETE
	return !(dead && t.GetDesiredState() >= api.TaskState_TASK_STATE_SHUTDOWN)
}

// Assignments streams the node's assignment set: a TYPE_COMPLETE message at
// once, then TYPE_INCREMENTAL messages as tasks are added, changed or
// removed. The stream ends with the session.
func (d *Dispatcher) Assignments(req *api.AssignmentsRequest, stream grpc.ServerStreamingServer[api.AssignmentsMessage]) error {
	dctx, exit, err := d.enter()
	if err != nil {
		return err
	}
	defer exit()
	s, err := d.lookup(req.GetNodeId(), req.GetSessionId())
	if err != nil {
		return err
	}
	for {
		err := d.streamAssignments(dctx, s, stream)
		if errors.Is(err, state.ErrWatchReset) || errors.Is(err, state.ErrWatchOverflow) {
			// The store was restored or we fell behind: start over with a
			// complete set, which the agent reconciles against.
			d.log.Info("assignments watch restarted", "node", s.nodeID, "reason", err)
			continue
		}
		if errors.Is(err, state.ErrStoreClosed) {
			return status.Error(codes.Unavailable, "store closed")
		}
		return err
	}
}

func (d *Dispatcher) streamAssignments(dctx context.Context, s *session, stream grpc.ServerStreamingServer[api.AssignmentsMessage]) error {
	ctx := stream.Context()
	nodeID := s.nodeID
	var initial []*api.Task
	filter := func(e state.Event) bool {
		t := e.Task()
		if t == nil {
			return false
		}
		if t.GetNodeId() == nodeID {
			return true
		}
		old, _ := e.Old.(*api.Task)
		return old != nil && old.GetNodeId() == nodeID
	}
	w := d.store.ViewAndWatch(func(tx state.ReadTx) {
		tasks, err := tx.FindTasks(state.ByNodeID(nodeID))
		if err != nil {
			return
		}
		for _, t := range tasks {
			if assignable(t, nodeID) {
				initial = append(initial, t)
			}
		}
	}, filter)
	defer w.Cancel()

	sent := make(map[string]*api.Task, len(initial))
	for _, t := range initial {
		sent[t.GetId()] = t
	}
	if err := stream.Send(&api.AssignmentsMessage{Type: api.AssignmentsMessage_TYPE_COMPLETE, Update: initial}); err != nil {
		return err
	}

	changes := map[string]*api.Task{} // nil value: remove
	apply := func(e state.Event) {
		t := e.Task()
		id := t.GetId()
		if e.Action == state.ActionDelete || !assignable(t, nodeID) {
			if _, ok := sent[id]; ok {
				delete(sent, id)
				changes[id] = nil
			}
			return
		}
		prev, ok := sent[id]
		if ok && prev.GetDesiredState() == t.GetDesiredState() && prev.GetSpecVersion() == t.GetSpecVersion() &&
			proto.Equal(prev.GetSpec(), t.GetSpec()) {
			return // only the status changed: the agent reported it itself
		}
		sent[id] = t
		changes[id] = t
	}
	for {
		select {
		case <-s.done:
			return s.err
		case <-dctx.Done():
			return status.Error(codes.Unavailable, "dispatcher stopped")
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case e, ok := <-w.C:
			if !ok {
				return w.Err()
			}
			apply(e)
			// Take every event already delivered, so one transaction (or a burst
			// of them) becomes one message.
			closed := false
		drain:
			for {
				select {
				case e, ok := <-w.C:
					if !ok {
						closed = true
						break drain
					}
					apply(e)
				default:
					break drain
				}
			}
			if len(changes) > 0 {
				msg := &api.AssignmentsMessage{Type: api.AssignmentsMessage_TYPE_INCREMENTAL}
				ids := make([]string, 0, len(changes))
				for id := range changes {
					ids = append(ids, id)
				}
				sort.Strings(ids)
				for _, id := range ids {
					if t := changes[id]; t != nil {
						msg.Update = append(msg.Update, t)
					} else {
						msg.Remove = append(msg.Remove, id)
					}
				}
				clear(changes)
				if err := stream.Send(msg); err != nil {
					return err
				}
			}
			if closed {
				return w.Err()
			}
		}
	}
}
