package dispatch

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/state"
)

func rpcContextError(ctx, dctx context.Context) error {
	if dctx.Err() != nil {
		return status.Error(codes.Unavailable, "dispatcher stopped")
	}
	return status.FromContextError(ctx.Err()).Err()
}

// UpdateTaskStatus queues the reported statuses of the node's own tasks and
// returns once they are written to the store (in a batch with other
// reports). Reports for tasks that do not exist or are not assigned to the
// reporting node are dropped and logged: a worker may only report its own
// tasks. Reports that would move a task's state backward are ignored.
func (d *Dispatcher) UpdateTaskStatus(ctx context.Context, req *api.UpdateTaskStatusRequest) (*api.UpdateTaskStatusResponse, error) {
	dctx, exit, err := d.enter()
	if err != nil {
		return nil, err
	}
	defer exit()
	nodeID := req.GetNodeId()
	if _, err := d.lookup(nodeID, req.GetSessionId()); err != nil {
		return nil, err
	}
	now := d.cfg.Clock.Now().UnixNano()
	var accepted []queuedStatus
	d.store.View(func(tx state.ReadTx) {
		for _, u := range req.GetUpdates() {
			st := u.GetStatus()
			if u.GetTaskId() == "" || st == nil || st.GetState() < api.TaskState_TASK_STATE_ACCEPTED ||
				st.GetState() > api.TaskState_TASK_STATE_REJECTED {
				d.m.statusUpdates.WithLabelValues("invalid").Inc()
				d.log.Warn("dropping invalid task status report", "node", nodeID, "task", u.GetTaskId(), "state", st.GetState())
				continue
			}
			t := tx.GetTask(u.GetTaskId())
			if t == nil || t.GetNodeId() != nodeID {
				d.m.statusUpdates.WithLabelValues("foreign").Inc()
				d.log.Warn("dropping status report for a task not assigned to the reporting node",
					"node", nodeID, "task", u.GetTaskId())
				continue
			}
			st = proto.Clone(st).(*api.TaskStatus)
			if st.Timestamp == 0 {
				st.Timestamp = now
			}
			fillNodeAddr(st, tx.GetNode(nodeID).GetStatus().GetAddr())
			accepted = append(accepted, queuedStatus{taskID: u.GetTaskId(), nodeID: nodeID, status: st})
		}
	})
	if len(accepted) == 0 {
		return &api.UpdateTaskStatusResponse{}, nil
	}
	d.m.statusUpdates.WithLabelValues("queued").Add(float64(len(accepted)))
	res := d.batcher.add(accepted)
	select {
	case <-res.done:
		if res.err != nil {
			if dctx.Err() != nil {
				return nil, status.Error(codes.Unavailable, "dispatcher stopped before the status was written")
			}
			return nil, status.Errorf(codes.Unavailable, "writing task status: %v", res.err)
		}
		return &api.UpdateTaskStatusResponse{}, nil
	case <-dctx.Done():
		return nil, status.Error(codes.Unavailable, "dispatcher stopped before the status was written")
	case <-ctx.Done():
		return nil, rpcContextError(ctx, dctx)
	}
}
