package scheduler

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// refNode and refScheduler form a deliberately naive model of the
// scheduler: every task scans every node. The real Scheduler must make the
// same decisions.
type refNode struct {
	n        Node
	removed  bool
	tasks    int
	reserved Resources
	svc      map[string]int
}

type refTask struct {
	node string
	svc  string
	res  Resources
}

type refScheduler struct {
	nodes map[string]*refNode
	order []string
	tasks map[string]refTask
}

func newRef() *refScheduler {
	return &refScheduler{nodes: map[string]*refNode{}, tasks: map[string]refTask{}}
}

func (r *refScheduler) node(id string) *refNode {
	rn := r.nodes[id]
	if rn == nil {
		rn = &refNode{n: Node{ID: id}, removed: true, svc: map[string]int{}}
		r.nodes[id] = rn
		r.order = append(r.order, id)
	}
	return rn
}

func (r *refScheduler) upsert(n Node) {
	rn := r.node(n.ID)
	rn.n = n
	rn.removed = false
}

func (r *refScheduler) add(id, svc string, res Resources, node string) {
	r.remove(id)
	rn := r.node(node)
	rn.tasks++
	rn.reserved.NanoCPUs += res.NanoCPUs
	rn.reserved.MemoryBytes += res.MemoryBytes
	rn.svc[svc]++
	r.tasks[id] = refTask{node: node, svc: svc, res: res}
}

func (r *refScheduler) remove(id string) {
	t, ok := r.tasks[id]
	if !ok {
		return
	}
	rn := r.nodes[t.node]
	rn.tasks--
	rn.reserved.NanoCPUs -= t.res.NanoCPUs
	rn.reserved.MemoryBytes -= t.res.MemoryBytes
	rn.svc[t.svc]--
	delete(r.tasks, id)
}

func (r *refScheduler) eligible(rn *refNode, t *Task) bool {
	if rn.removed || rn.n.State != NodeReady || rn.n.Availability != AvailabilityActive {
		return false
	}
	for _, c := range t.Constraints {
		cc, err := compileConstraint(c)
		if err != nil || !cc.matches(&rn.n) {
			return false
		}
	}
	if t.Reservations.NanoCPUs > 0 && rn.n.Resources.NanoCPUs-rn.reserved.NanoCPUs < t.Reservations.NanoCPUs {
		return false
	}
	if t.Reservations.MemoryBytes > 0 && rn.n.Resources.MemoryBytes-rn.reserved.MemoryBytes < t.Reservations.MemoryBytes {
		return false
	}
	return t.MaxReplicasPerNode == 0 || uint64(rn.svc[t.ServiceID]) < t.MaxReplicasPerNode
}

func (r *refScheduler) schedule(pending []Task) []string {
	for i := range pending {
		r.remove(pending[i].ID)
	}
	// Groups in order of first appearance.
	var keys []string
	members := map[string][]int{}
	for i, t := range pending {
		k := fmt.Sprintf("%s|%d|%v|%d|%v|%v", t.ServiceID, t.SpecVersion, t.Reservations, t.MaxReplicasPerNode, t.Constraints, t.Preferences)
		if _, ok := members[k]; !ok {
			keys = append(keys, k)
		}
		members[k] = append(members[k], i)
	}
	out := make([]string, len(pending))
	for _, k := range keys {
		for _, i := range members[k] {
			t := &pending[i]
			if _, dup := r.tasks[t.ID]; dup {
				continue
			}
			var best *refNode
			for _, id := range r.order {
				rn := r.nodes[id]
				if !r.eligible(rn, t) {
					continue
				}
				if best == nil {
					best = rn
					continue
				}
				if c := r.comparePreferences(t, rn, best); c != 0 {
					if c < 0 {
						best = rn
					}
					continue
				}
				if rn.svc[t.ServiceID] < best.svc[t.ServiceID] ||
					rn.svc[t.ServiceID] == best.svc[t.ServiceID] && (rn.tasks < best.tasks ||
						rn.tasks == best.tasks && rn.n.ID < best.n.ID) {
					best = rn
				}
			}
			if best != nil {
				out[i] = best.n.ID
				r.add(t.ID, t.ServiceID, t.Reservations, best.n.ID)
			}
		}
	}
	return out
}

// refLabel is a node's value of a label; the nodes without it share the
// missing value, which sorts after every real value.
type refLabel struct {
	missing bool
	value   string
}

func refValue(n *Node, key string) refLabel {
	v, ok := n.Labels[key]
	return refLabel{missing: !ok, value: v}
}

// samePath reports whether two nodes have the same values of the first k
// preference labels.
func samePath(a, b *Node, prefs []Preference, k int) bool {
	for _, p := range prefs[:k] {
		if refValue(a, p.SpreadLabel) != refValue(b, p.SpreadLabel) {
			return false
		}
	}
	return true
}

// groupCount counts the tasks of the service on the described nodes that
// share n's values of the first k preference labels.
func (r *refScheduler) groupCount(svc string, n *Node, prefs []Preference, k int) int {
	total := 0
	for _, id := range r.order {
		rn := r.nodes[id]
		if !rn.removed && samePath(&rn.n, n, prefs, k) {
			total += rn.svc[svc]
		}
	}
	return total
}

// comparePreferences orders two eligible nodes by their groups, level by
// level: the group with fewer tasks of the service first, then the smaller
// label value, nodes without the label last. 0 means they share every group.
// Picking the least node this way is the tree walk of the real scheduler
// stated without a tree: a group without an eligible node never holds the
// least node.
func (r *refScheduler) comparePreferences(t *Task, a, b *refNode) int {
	for k, p := range t.Preferences {
		ca, cb := r.groupCount(t.ServiceID, &a.n, t.Preferences, k+1), r.groupCount(t.ServiceID, &b.n, t.Preferences, k+1)
		if ca != cb {
			if ca < cb {
				return -1
			}
			return 1
		}
		va, vb := refValue(&a.n, p.SpreadLabel), refValue(&b.n, p.SpreadLabel)
		switch {
		case va == vb:
			continue
		case va.missing:
			return 1
		case vb.missing:
			return -1
		case va.value < vb.value:
			return -1
		default:
			return 1
		}
	}
	return 0
}

func randomNode(rng *rand.Rand, id string) Node {
	roles := []string{RoleManager, RoleWorker, ""}
	n := Node{
		ID:           id,
		Hostname:     []string{"alpha", "Beta", "gamma"}[rng.IntN(3)],
		Role:         roles[rng.IntN(len(roles))],
		OS:           []string{"linux", "windows"}[rng.IntN(2)],
		Arch:         []string{"amd64", "arm64"}[rng.IntN(2)],
		State:        []NodeState{NodeReady, NodeReady, NodeReady, NodeDown, NodeUnknown, NodeDisconnected}[rng.IntN(6)],
		Availability: []Availability{AvailabilityActive, AvailabilityActive, AvailabilityActive, AvailabilityPause, AvailabilityDrain}[rng.IntN(5)],
		Resources:    Resources{NanoCPUs: int64(rng.IntN(5)) * 1e9, MemoryBytes: int64(rng.IntN(5)) << 30},
	}
	if rng.IntN(3) > 0 {
		n.Labels = map[string]string{"zone": []string{"a", "b", "c", ""}[rng.IntN(4)]}
	}
	if rng.IntN(2) > 0 {
		if n.Labels == nil {
			n.Labels = map[string]string{}
		}
		n.Labels["rack"] = []string{"r1", "r2"}[rng.IntN(2)]
	}
	return n
}

func randomTemplate(rng *rand.Rand) Task {
	cons := [][]string{nil, nil, {"node.labels.zone==a"}, {"node.labels.zone!=b"},
		{"node.role==manager"}, {"node.platform.arch==AMD64", "node.hostname!=beta"}, {"node.platform.os==linux"}}
	t := Task{
		ServiceID:          fmt.Sprintf("s%d", rng.IntN(3)),
		SpecVersion:        uint64(rng.IntN(2)),
		MaxReplicasPerNode: uint64(rng.IntN(4)),
	}
	if c := cons[rng.IntN(len(cons))]; c != nil {
		t.Constraints, _ = ParseConstraints(c)
	}
	prefs := [][]string{nil, nil, {"spread=node.labels.zone"}, {"spread=node.labels.rack"},
		{"spread=node.labels.zone", "spread=node.labels.rack"}, {"spread=node.labels.rack", "spread=node.labels.zone"},
		{"spread=node.labels.none"}}
	if p := prefs[rng.IntN(len(prefs))]; p != nil {
		t.Preferences, _ = ParsePreferences(p)
	}
	if rng.IntN(2) == 0 {
		t.Reservations = Resources{NanoCPUs: int64(rng.IntN(3)) * 5e8, MemoryBytes: int64(rng.IntN(3)) << 29}
	}
	return t
}

// checkAgainstReference runs a random scenario of several passes, with node
// and task churn between them, on both schedulers.
func checkAgainstReference(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	s, ref := New(), newRef()
	nodeIDs := make([]string, 1+rng.IntN(12))
	for i := range nodeIDs {
		nodeIDs[i] = fmt.Sprintf("n%02d", rng.IntN(40))
	}
	taskSeq := 0
	var placed []string
	for pass := range 4 {
		for range rng.IntN(6) + 1 {
			switch rng.IntN(6) {
			case 0, 1, 2:
				n := randomNode(rng, nodeIDs[rng.IntN(len(nodeIDs))])
				require.NoError(t, s.UpsertNode(n))
				ref.upsert(n)
			case 3:
				id := nodeIDs[rng.IntN(len(nodeIDs))]
				s.RemoveNode(id)
				if rn := ref.nodes[id]; rn != nil {
					rn.removed = true
				}
			case 4:
				tmpl := randomTemplate(rng)
				tmpl.ID = fmt.Sprintf("pre%d", rng.IntN(10))
				node := nodeIDs[rng.IntN(len(nodeIDs))]
				require.NoError(t, s.AddTask(tmpl, node))
				ref.add(tmpl.ID, tmpl.ServiceID, tmpl.Reservations, node)
			case 5:
				if len(placed) > 0 {
					id := placed[rng.IntN(len(placed))]
					s.RemoveTask(id)
					ref.remove(id)
				}
			}
		}
		var pending []Task
		for range rng.IntN(4) + 1 {
			tmpl := randomTemplate(rng)
			for range rng.IntN(8) + 1 {
				task := tmpl
				taskSeq++
				task.ID = fmt.Sprintf("t%d", taskSeq)
				if rng.IntN(20) == 0 {
					task.ID = fmt.Sprintf("pre%d", rng.IntN(10)) // already recorded, or a duplicate
				}
				pending = append(pending, task)
			}
		}
		rng.Shuffle(len(pending), func(i, j int) { pending[i], pending[j] = pending[j], pending[i] })

		got := s.Schedule(pending)
		want := ref.schedule(pending)
		require.Len(t, got, len(pending))
		for i, d := range got {
			require.Equal(t, pending[i].ID, d.TaskID)
			require.Equal(t, want[i], d.NodeID, "seed %d pass %d task %d (%s)", seed, pass, i, d.TaskID)
			if d.Placed() {
				require.Empty(t, d.Reason)
				placed = append(placed, d.TaskID)
			} else {
				require.True(t, strings.HasPrefix(d.Reason, "no suitable node (") ||
					strings.Contains(d.Reason, "appears more than once"), d.Reason)
			}
		}
		require.Equal(t, len(ref.tasks), s.TaskCount())
		for id, rn := range ref.nodes {
			u, ok := s.Usage(id)
			if rn.tasks == 0 && rn.removed {
				require.False(t, ok, "node %s should be forgotten", id)
				continue
			}
			require.True(t, ok, id)
			require.Equal(t, NodeUsage{Tasks: rn.tasks, Reserved: rn.reserved}, u, id)
			for svc, c := range rn.svc {
				require.Equal(t, c, s.ServiceTasks(svc, id))
			}
		}
	}
}

func TestMatchesReferenceModel(t *testing.T) {
	for seed := range uint64(300) {
		checkAgainstReference(t, seed)
	}
}

func FuzzScheduleMatchesReference(f *testing.F) {
	for _, seed := range []uint64{1, 2, 3, 42} {
		f.Add(seed)
	}
	f.Fuzz(checkAgainstReference)
}
