package scheduler

import (
	"fmt"
	"runtime"
	"testing"
)

// benchNodes builds a scheduler with n ready, active nodes spread over three
// zones and, within them, ten racks, with capacity to spare.
func benchNodes(b *testing.B, n int) *Scheduler {
	b.Helper()
	s := New()
	zones := []string{"a", "b", "c"}
	for i := range n {
		err := s.UpsertNode(Node{
			ID:        fmt.Sprintf("node%07d", i),
			Hostname:  fmt.Sprintf("host%07d", i),
			Role:      RoleWorker,
			OS:        "linux",
			Arch:      "amd64",
			State:     NodeReady,
			Labels:    map[string]string{"zone": zones[i%len(zones)], "rack": fmt.Sprintf("r%d", i/len(zones)%10)},
			Resources: Resources{NanoCPUs: 64e9, MemoryBytes: 256 << 30},
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	return s
}

func benchTasks(n, services int, tmpl Task) []Task {
	out := make([]Task, n)
	for i := range out {
		out[i] = tmpl
		out[i].ServiceID = fmt.Sprintf("service%d", i%services)
		out[i].ID = fmt.Sprintf("task%07d", i)
	}
	return out
}

// BenchmarkSchedule measures one pass from a set of pending tasks to all
// decisions, in the shapes of SwarmKit's scheduler benchmarks (one service,
// no constraints). The node set is built outside the timed region; grouping
// and placement are timed. The _spread cases are the same passes with
// placement preferences (zone; zone then rack): 1kNodes_10kTasks_spread
// against 1kNodes_10kTasks is the cost of one preference level.
func BenchmarkSchedule(b *testing.B) {
	zone := []Preference{{SpreadLabel: "zone"}}
	zoneRack := []Preference{{SpreadLabel: "zone"}, {SpreadLabel: "rack"}}
	cases := []struct {
		name         string
		nodes, tasks int
		services     int
		tmpl         Task
	}{
		{"1kNodes_1kTasks", 1e3, 1e3, 1, Task{SpecVersion: 1}},
		{"1kNodes_10kTasks", 1e3, 1e4, 1, Task{SpecVersion: 1}},
		{"10kNodes_100kTasks", 1e4, 1e5, 1, Task{SpecVersion: 1}},
		{"100kNodes_1kTasks", 1e5, 1e3, 1, Task{SpecVersion: 1}},
		{"1kNodes_10kTasks_spread", 1e3, 1e4, 1, Task{SpecVersion: 1, Preferences: zone}},
		{"1kNodes_10kTasks_spread2", 1e3, 1e4, 1, Task{SpecVersion: 1, Preferences: zoneRack}},
		{"10kNodes_100kTasks_spread", 1e4, 1e5, 1, Task{SpecVersion: 1, Preferences: zone}},
		{"100kNodes_1kTasks_spread", 1e5, 1e3, 1, Task{SpecVersion: 1, Preferences: zone}},
		// Heavier filters: 10 services, a label constraint, reservations and
		// a replica limit.
		{"10kNodes_10kTasks_filters", 1e4, 1e4, 10, Task{
			SpecVersion:        1,
			Constraints:        []Constraint{{Key: "node.labels.zone", Op: OpNotEq, Value: "c"}},
			Reservations:       Resources{NanoCPUs: 1e8, MemoryBytes: 64 << 20},
			MaxReplicasPerNode: 2,
		}},
	}
	for _, bc := range cases {
		b.Run(bc.name, func(b *testing.B) {
			pending := benchTasks(bc.tasks, bc.services, bc.tmpl)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				s := benchNodes(b, bc.nodes)
				runtime.GC()
				b.StartTimer()
				ds := s.Schedule(pending)
				b.StopTimer()
				for _, d := range ds {
					if !d.Placed() {
						b.Fatalf("task %s not placed: %s", d.TaskID, d.Reason)
					}
				}
				b.StartTimer()
			}
		})
	}
}
