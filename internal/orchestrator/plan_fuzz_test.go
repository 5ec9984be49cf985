package orchestrator

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/shoalhq/shoal/internal/api"
)

// FuzzPlanService checks properties of any plan over arbitrary task sets:
// a task's observed status is only written while it was never assigned,
// desired states only move forward, and after the plan no slot of a
// replicated service has two tasks wanted running. It also checks that
// planService modifies none of its inputs (the orchestrator hands it the
// store's shared objects) and that every task it updates is a copy.
func FuzzPlanService(f *testing.F) {
	f.Add([]byte{3, 0, 1, 7, 1, 0, 2, 9, 2, 1, 1, 1})
	f.Add([]byte{1, 1, 0, 10, 0, 1, 1, 7, 0, 2, 0, 1, 2, 3, 4})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 2 {
			return
		}
		now := time.Unix(1_700_000_000, 0)
		replicas := uint64(data[0] % 6)
		global := data[1]%4 == 0
		svc := &api.Service{Id: "svc", SpecVersion: 2, Spec: replicatedSpec("web", replicas)}
		if global {
			svc.Spec = globalSpec("web")
		}
		svc.Spec.Task.Restart = &api.RestartPolicy{Condition: api.RestartCondition(data[1] % 3), MaxAttempts: uint64(data[1] % 3)}
		svc.Spec.Update = &api.UpdateConfig{Parallelism: uint64(data[1] % 3)}
		if data[1]%5 < 3 {
			svc.UpdateStatus = &api.UpdateStatus{State: api.UpdateState(data[1] % 5), StartedAt: now.UnixNano() - int64(time.Minute)}
		}
		nodes := []*api.Node{
			{Id: "n0", Status: &api.NodeStatus{State: ready}},
			{Id: "n1", Status: &api.NodeStatus{State: down}},
			{Id: "n2", Status: &api.NodeStatus{State: ready}, Spec: &api.NodeSpec{Availability: drain}},
		}
		var tasks []*api.Task
		for i, b := 0, data[2:]; i+3 < len(b) && len(tasks) < 40; i += 4 {
			node := ""
			if b[i+3]%4 != 3 {
				node = fmt.Sprintf("n%d", b[i+3]%4)
			}
			st := api.TaskState(b[i+1] % 14)
			if node == "" && st >= api.TaskState_TASK_STATE_ASSIGNED && st < api.TaskState_TASK_STATE_COMPLETE {
				node = "n0"
			}
			tasks = append(tasks, &api.Task{
				Id: fmt.Sprintf("t%02d", len(tasks)), ServiceId: "svc", Slot: uint64(b[i] % 7), NodeId: node,
				SpecVersion:  uint64(b[i+3]%2 + 1),
				DesiredState: []api.TaskState{api.TaskState_TASK_STATE_RUNNING, stateShutdown, stateRemove}[b[i+2]%3],
				Status:       &api.TaskStatus{State: st, Timestamp: now.UnixNano() - int64(b[i+2])*int64(time.Second)},
				Meta:         &api.Meta{Version: 1},
			})
		}
		cfg, err := DefaultConfig().validate()
		if err != nil {
			t.Fatal(err)
		}
		cfg.DefaultRestartDelay = 0
		cluster := &api.Cluster{Id: "c", Spec: &api.ClusterSpec{Name: "default", TaskHistoryLimit: int64(data[0] % 3)}}
		inputs := func() []byte {
			var b []byte
			for _, m := range append([]proto.Message{svc, cluster}, msgs(tasks, nodes)...) {
				mb, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
				if err != nil {
					t.Fatal(err)
				}
				b = append(append(b, mb...), 0xff)
			}
			return b
		}
		before := inputs()
		p := planService(cfg, now, svc, tasks, nodes, cluster)
		if string(inputs()) != string(before) {
			t.Fatalf("planService modified its inputs")
		}
		for _, op := range p.ops {
			for _, in := range tasks {
				if op.kind != opDelete && op.task == in {
					t.Fatalf("op %v writes input task %s itself, not a copy", op.kind, in.Id)
				}
			}
		}
		if p.service == svc {
			t.Fatalf("the plan writes the input service itself, not a copy")
		}

		byID := map[string]*api.Task{}
		for _, tk := range tasks {
			byID[tk.Id] = tk
		}
		after := map[string]*api.Task{}
		for id, tk := range byID {
			after[id] = tk
		}
		for _, op := range p.ops {
			switch op.kind {
			case opCreate:
				after[op.task.Id] = op.task
			case opDelete:
				delete(after, op.task.Id)
			case opUpdate:
				old := byID[op.task.Id]
				if old == nil {
					t.Fatalf("update of unknown task %s", op.task.Id)
				}
				if !proto.Equal(old.Status, op.task.Status) && !neverAssigned(old) {
					t.Fatalf("status of assigned task %s written: %v -> %v", old.Id, old.Status, op.task.Status)
				}
				if op.task.DesiredState < old.DesiredState {
					t.Fatalf("desired state of %s moved back: %v -> %v", old.Id, old.DesiredState, op.task.DesiredState)
				}
				after[op.task.Id] = op.task
			}
		}
		if global {
			return
		}
		occ := map[uint64]int{}
		for _, tk := range after {
			if isOccupant(tk) {
				occ[tk.Slot]++
			}
		}
		for slot, n := range occ {
			if n > 1 {
				t.Fatalf("slot %d has %d occupants after the plan", slot, n)
			}
			if slot == 0 || slot > replicas {
				t.Fatalf("slot %d kept an occupant with %d replicas", slot, replicas)
			}
		}
	})
}

func msgs(tasks []*api.Task, nodes []*api.Node) []proto.Message {
	var out []proto.Message
	for _, t := range tasks {
		out = append(out, t)
	}
	for _, n := range nodes {
		out = append(out, n)
	}
	return out
}
