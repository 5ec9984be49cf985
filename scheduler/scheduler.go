package scheduler

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Scheduler holds the cluster as the scheduler sees it, nodes and the tasks
// that occupy them, and places pending tasks.
//
// The state is incremental: the driver tells the Scheduler about every change
// (UpsertNode, RemoveNode, AddTask, RemoveTask) and Schedule records its own
// placements, so a pass costs O(nodes + tasks·log nodes) per group of pending
// tasks instead of rebuilding the cluster.
//
// A Scheduler is not safe for concurrent use: the driver owns it and calls
// its methods from one goroutine (or under its own lock). It starts no
// goroutines and does no I/O.
type Scheduler struct {
	nodes    map[string]*nodeInfo           // described nodes and placeholders
	list     []*nodeInfo                    // described nodes; nodeInfo.slot indexes it
	services map[string]map[*nodeInfo]int32 // service ID -> node -> tasks of it there
	tasks    map[string]taskRecord          // task ID -> where it is
	gen      uint64                         // see Generation
	changes  uint64                         // records and drops, to tell whether Schedule changed anything

	// Scratch space reused by Schedule so a pass allocates little.
	svc       []int32 // per slot: tasks of the current group's service; all zero between groups
	heap      []int32 // candidate slots
	taskGroup []int32 // per pending task: group index, -1 when invalid
	order     []int32 // pending task indices sorted by group
	groups    []group
	groupIdx  map[groupKey]int32
	rejCons   []int

	// Scratch space of a group with preferences, see placeSpread.
	tree      []prefGroup
	treeIdx   map[prefKey]int32
	leafOf    []int32 // per candidate: its leaf in tree
	treeSlots []int32 // backing array of the leaves' candidate heaps
	treeKids  []int32 // backing array of the inner groups' subgroup heaps
}

type nodeInfo struct {
	node     Node
	slot     int // index in Scheduler.list, -1 while the node is not described
	tasks    int
	reserved Resources
	ports    map[HostPort]int32 // host ports in use -> tasks using them; nil while none
}

type taskRecord struct {
	serviceID string
	node      *nodeInfo
	res       Resources
	ports     []HostPort
}

// groupKey is what tasks of one group share besides their constraints.
type groupKey struct {
	service string
	version uint64
	res     Resources
	maxRep  uint64
	ports   string // canonical form of the host ports, see portsKey
}

type group struct {
	key    groupKey
	cons   []Constraint
	prefs  []Preference
	ports  []HostPort
	next   int32 // next group with the same key, -1 at the end
	count  int32
	start  int32
	filled int32
}

// New returns an empty Scheduler.
func New() *Scheduler {
	return &Scheduler{
		nodes:    make(map[string]*nodeInfo),
		services: make(map[string]map[*nodeInfo]int32),
		tasks:    make(map[string]taskRecord),
		groupIdx: make(map[groupKey]int32),
		treeIdx:  make(map[prefKey]int32),
	}
}

// Generation returns a number that changes whenever the nodes or the tasks
// recorded on them change: UpsertNode with a different description,
// RemoveNode, AddTask, RemoveTask, and Schedule when it places or forgets a
// task. A driver holding tasks that fit nowhere retries them only when it
// differs from the value read after the last pass.
func (s *Scheduler) Generation() uint64 { return s.gen }

// UpsertNode adds a node or replaces its description (state, availability,
// labels, capacity). Tasks recorded on it stay recorded. Labels are copied.
// It returns an error wrapping ErrInvalidNode, and changes nothing, when the
// node breaks a rule: empty ID, unknown Role, State or Availability, or
// negative Resources.
func (s *Scheduler) UpsertNode(n Node) error {
	if err := validateNode(&n); err != nil {
		return err
	}
	ni := s.nodes[n.ID]
	if ni == nil {
		ni = &nodeInfo{slot: -1}
		s.nodes[n.ID] = ni
	} else if ni.slot >= 0 && sameNode(&ni.node, &n) {
		return nil // nothing changed: keep Generation so nobody retries
	}
	n.Labels = maps.Clone(n.Labels)
	ni.node = n
	if ni.slot < 0 {
		ni.slot = len(s.list)
		s.list = append(s.list, ni)
	}
	s.gen++
	return nil
}

func sameNode(a, b *Node) bool {
	return a.ID == b.ID && a.Hostname == b.Hostname && a.Role == b.Role && a.OS == b.OS &&
		a.Arch == b.Arch && a.State == b.State && a.Availability == b.Availability &&
		a.Resources == b.Resources && maps.Equal(a.Labels, b.Labels)
}

// RemoveNode forgets a node: no task is placed on it any more. Tasks still
// recorded on it keep their accounting until RemoveTask, so a node that
// comes back with UpsertNode is seen with its tasks. It reports whether the
// node was known.
func (s *Scheduler) RemoveNode(id string) bool {
	ni := s.nodes[id]
	if ni == nil || ni.slot < 0 {
		return false
	}
	last := len(s.list) - 1
	moved := s.list[last]
	s.list[ni.slot] = moved
	moved.slot = ni.slot
	s.list[last] = nil
	s.list = s.list[:last]
	ni.slot = -1
	if ni.tasks == 0 {
		delete(s.nodes, id)
	}
	s.gen++
	return true
}

// AddTask records a task that occupies a node (assigned or running): it
// counts for spread and max-replicas and its reservations are taken from the
// node's capacity. The node may be described later with UpsertNode. Adding a
// task ID that is already recorded moves it. It returns an error wrapping
// ErrInvalidTask, and changes nothing, when the task has no ID or service ID,
// has negative reservations, or nodeID is empty.
func (s *Scheduler) AddTask(t Task, nodeID string) error {
	if rule := taskRule(&t); rule != "" {
		return taskError(t.ID, rule)
	}
	if nodeID == "" {
		return taskError(t.ID, "node ID must not be empty")
	}
	if old, ok := s.tasks[t.ID]; ok {
		s.drop(t.ID, old)
	}
	ni := s.nodes[nodeID]
	if ni == nil {
		ni = &nodeInfo{node: Node{ID: nodeID}, slot: -1}
		s.nodes[nodeID] = ni
	}
	s.record(s.serviceMap(t.ServiceID), t.ID, t.ServiceID, ni, t.Reservations, t.HostPorts)
	s.gen++
	return nil
}

// RemoveTask forgets a recorded task: it stopped, was removed, or the commit
// of a Schedule decision for it failed. It reports whether it was recorded.
func (s *Scheduler) RemoveTask(taskID string) bool {
	rec, ok := s.tasks[taskID]
	if !ok {
		return false
	}
	s.drop(taskID, rec)
	s.gen++
	return true
}

// Usage returns what the recorded tasks take from a node, and whether the
// node is known (described, or referenced by a recorded task).
func (s *Scheduler) Usage(nodeID string) (NodeUsage, bool) {
	ni := s.nodes[nodeID]
	if ni == nil {
		return NodeUsage{}, false
	}
	return NodeUsage{Tasks: ni.tasks, Reserved: ni.reserved}, true
}

// ServiceTasks returns the number of recorded tasks of a service on a node.
func (s *Scheduler) ServiceTasks(serviceID, nodeID string) int {
	ni := s.nodes[nodeID]
	if ni == nil {
		return 0
	}
	return int(s.services[serviceID][ni])
}

// NodeCount returns the number of described nodes.
func (s *Scheduler) NodeCount() int { return len(s.list) }

// TaskCount returns the number of recorded tasks.
func (s *Scheduler) TaskCount() int { return len(s.tasks) }

func (s *Scheduler) serviceMap(serviceID string) map[*nodeInfo]int32 {
	m := s.services[serviceID]
	if m == nil {
		m = make(map[*nodeInfo]int32)
		s.services[serviceID] = m
	}
	return m
}

func (s *Scheduler) record(m map[*nodeInfo]int32, taskID, serviceID string, ni *nodeInfo, res Resources, ports []HostPort) {
	if len(ports) > 0 {
		ports = append([]HostPort(nil), ports...)
		if ni.ports == nil {
			ni.ports = make(map[HostPort]int32)
		}
		for _, p := range ports {
			ni.ports[p]++
		}
	}
	s.tasks[taskID] = taskRecord{serviceID: serviceID, node: ni, res: res, ports: ports}
	s.changes++
	ni.tasks++
	ni.reserved.NanoCPUs += res.NanoCPUs
	ni.reserved.MemoryBytes += res.MemoryBytes
	m[ni]++
}

func (s *Scheduler) drop(taskID string, rec taskRecord) {
	delete(s.tasks, taskID)
	s.changes++
	ni := rec.node
	ni.tasks--
	ni.reserved.NanoCPUs -= rec.res.NanoCPUs
	ni.reserved.MemoryBytes -= rec.res.MemoryBytes
	for _, p := range rec.ports {
		if ni.ports[p] <= 1 {
			delete(ni.ports, p)
		} else {
			ni.ports[p]--
		}
	}
	if len(ni.ports) == 0 {
		ni.ports = nil
	}
	if m := s.services[rec.serviceID]; m != nil {
		if m[ni] <= 1 {
			delete(m, ni)
			if len(m) == 0 {
				delete(s.services, rec.serviceID)
			}
		} else {
			m[ni]--
		}
	}
	if ni.tasks == 0 && ni.slot < 0 {
		delete(s.nodes, ni.node.ID)
	}
}

// Schedule places pending tasks and returns one Decision per task, in the
// order of pending.
//
// Tasks with the same service, spec version, constraints, preferences,
// reservations, max-replicas limit and host ports form a group, placed in
// one pass: the nodes are filtered once (ready, active, constraints, free
// CPU and memory, max replicas per node, host ports free) and the group's
// tasks go one by one to the candidate with the fewest tasks of the
// service, then the fewest tasks in total, then the smallest node ID. With
// preferences, each task first goes, level by level, to the label value
// group with the fewest tasks of the service that has a candidate (see the
// package doc). Groups are placed in the order their first task appears.
//
// Every placement is recorded as if by AddTask; the driver calls RemoveTask
// when it cannot commit one. A pending task whose ID is recorded is first
// forgotten, since a pending task occupies no node. A task that fits nowhere
// gets NodeID "" and a Reason counting, per filter, the nodes that rejected
// it (each node under the first filter it fails). Invalid tasks,
// constraints and preferences get a Reason naming the rule they break. The result depends
// only on the Scheduler's state and pending, never on map order or time.
func (s *Scheduler) Schedule(pending []Task) []Decision {
	out := make([]Decision, len(pending))
	if len(pending) == 0 {
		return out
	}
	before := s.changes
	s.groupTasks(pending, out)
	for gi := range s.groups {
		g := &s.groups[gi]
		s.placeGroup(g, pending, s.order[g.start:g.start+g.count], out)
	}
	if s.changes != before {
		s.gen++
	}
	clear(s.groups) // drop references to the caller's constraint and port slices
	s.groups = s.groups[:0]
	clear(s.groupIdx)
	return out
}

// groupTasks validates the pending tasks, sorts them into groups and fills
// s.order with their indices, group by group.
func (s *Scheduler) groupTasks(pending []Task, out []Decision) {
	s.taskGroup = grow(s.taskGroup, len(pending))
	last := int32(-1)
	for i := range pending {
		t := &pending[i]
		out[i].TaskID = t.ID
		if rule := taskRule(t); rule != "" {
			out[i].Reason = taskError(t.ID, rule).Error()
			s.taskGroup[i] = -1
			continue
		}
		if old, ok := s.tasks[t.ID]; ok {
			s.drop(t.ID, old)
		}
		key := groupKey{service: t.ServiceID, version: t.SpecVersion, res: t.Reservations, maxRep: t.MaxReplicasPerNode,
			ports: portsKey(t.HostPorts)}
		if last >= 0 && s.groups[last].key == key && constraintsEqual(s.groups[last].cons, t.Constraints) &&
			preferencesEqual(s.groups[last].prefs, t.Preferences) {
			s.groups[last].count++
			s.taskGroup[i] = last
			continue
		}
		head, ok := s.groupIdx[key]
		found := int32(-1)
		for gi := head; ok && gi >= 0; gi = s.groups[gi].next {
			if constraintsEqual(s.groups[gi].cons, t.Constraints) && preferencesEqual(s.groups[gi].prefs, t.Preferences) {
				found = gi
				break
			}
		}
		if found < 0 {
			next := int32(-1)
			if ok {
				next = head
			}
			found = int32(len(s.groups))
			s.groups = append(s.groups, group{key: key, cons: t.Constraints, prefs: t.Preferences, ports: t.HostPorts, next: next})
			s.groupIdx[key] = found
		}
		s.groups[found].count++
		s.taskGroup[i] = found
		last = found
	}
	var start int32
	for gi := range s.groups {
		s.groups[gi].start = start
		start += s.groups[gi].count
	}
	s.order = grow(s.order, int(start))
	for i, gi := range s.taskGroup[:len(pending)] {
		if gi < 0 {
			continue
		}
		g := &s.groups[gi]
		s.order[g.start+g.filled] = int32(i)
		g.filled++
	}
}

func grow(b []int32, n int) []int32 {
	if cap(b) < n {
		return make([]int32, n)
	}
	return b[:n]
}

func constraintsEqual(a, b []Constraint) bool {
	if len(a) != len(b) {
		return false
	}
	if len(a) == 0 || &a[0] == &b[0] {
		return true
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// fit is the result of the resource and max-replicas filters.
type fit uint8

const (
	fitOK fit = iota
	fitCPU
	fitMemory
	fitMaxReplicas
	fitHostPort
)

// portsKey is a canonical form of a task's host ports, so tasks asking for
// the same ports share a group whatever their order.
func portsKey(ports []HostPort) string {
	if len(ports) == 0 {
		return ""
	}
	list := make([]string, len(ports))
	for i, p := range ports {
		list[i] = p.String()
	}
	slices.Sort(list)
	return strings.Join(list, ",")
}

func fits(ni *nodeInfo, res Resources, svcCount int32, maxRep uint64, ports []HostPort) fit {
	if res.NanoCPUs > 0 && ni.node.Resources.NanoCPUs-ni.reserved.NanoCPUs < res.NanoCPUs {
		return fitCPU
	}
	if res.MemoryBytes > 0 && ni.node.Resources.MemoryBytes-ni.reserved.MemoryBytes < res.MemoryBytes {
		return fitMemory
	}
	if maxRep > 0 && uint64(svcCount) >= maxRep {
		return fitMaxReplicas
	}
	if ni.ports != nil {
		for _, p := range ports {
			if ni.ports[p] > 0 {
				return fitHostPort
			}
		}
	}
	return fitOK
}

// placeGroup filters the nodes once for group g and spreads its tasks (the
// pending indices idx) over the candidates with a heap.
func (s *Scheduler) placeGroup(g *group, pending []Task, idx []int32, out []Decision) {
	cons := make([]compiled, len(g.cons))
	for i, c := range g.cons {
		cc, err := compileConstraint(c)
		if err != nil {
			for _, ti := range idx {
				out[ti].Reason = taskError(pending[ti].ID, err.Error()).Error()
			}
			return
		}
		cons[i] = cc
	}
	for _, p := range g.prefs {
		if err := p.Validate(); err != nil {
			for _, ti := range idx {
				out[ti].Reason = taskError(pending[ti].ID, err.Error()).Error()
			}
			return
		}
	}
	key := g.key
	m := s.serviceMap(key.service)
	s.svc = grow(s.svc, len(s.list)) // all zero: see the reset below
	for ni, c := range m {
		if ni.slot >= 0 {
			s.svc[ni.slot] = c
		}
	}

	rej := rejections{constraint: growInts(&s.rejCons, len(cons))}
	h := s.heap[:0]
	for slot, ni := range s.list {
		nd := &ni.node
		if nd.State != NodeReady {
			rej.notReady++
			continue
		}
		switch nd.Availability {
		case AvailabilityPause:
			rej.paused++
			continue
		case AvailabilityDrain:
			rej.drained++
			continue
		}
		if failed := failedConstraint(cons, nd); failed >= 0 {
			rej.constraint[failed]++
			continue
		}
		if f := fits(ni, key.res, s.svc[slot], key.maxRep, g.ports); f != fitOK {
			rej.add(f)
			continue
		}
		h = append(h, int32(slot))
	}
	var unplaced bool
	if len(g.prefs) > 0 {
		unplaced = s.placeSpread(g, pending, idx, out, h, &rej, m)
	} else {
		unplaced = s.placeNodes(g, pending, idx, out, h, &rej, m)
	}
	if unplaced {
		reason := rej.explain(cons, key, g.ports, len(s.list))
		for _, ti := range idx {
			if out[ti].NodeID == "" && out[ti].Reason == "" {
				out[ti].Reason = reason
			}
		}
	}

	s.heap = h[:0]
	for ni := range m {
		if ni.slot >= 0 {
			s.svc[ni.slot] = 0
		}
	}
	if len(m) == 0 {
		delete(s.services, key.service)
	}
}

// placeNodes spreads the tasks of group g (the pending indices idx) over the
// candidate slots h with a heap ordered by less. It reports whether a task
// was left without a node for want of candidates.
func (s *Scheduler) placeNodes(g *group, pending []Task, idx []int32, out []Decision, h []int32, rej *rejections, m map[*nodeInfo]int32) bool {
	key := g.key
	for i := len(h)/2 - 1; i >= 0; i-- {
		s.down(h, i)
	}
	unplaced := false
	for _, ti := range idx {
		t := &pending[ti]
		if _, dup := s.tasks[t.ID]; dup {
			out[ti].Reason = fmt.Sprintf("task ID %q appears more than once in this pass", t.ID)
			continue
		}
		if len(h) == 0 {
			unplaced = true
			continue
		}
		slot := h[0]
		ni := s.list[slot]
		s.record(m, t.ID, t.ServiceID, ni, t.Reservations, t.HostPorts)
		s.svc[slot]++
		out[ti].NodeID = ni.node.ID
		if f := fits(ni, key.res, s.svc[slot], key.maxRep, g.ports); f != fitOK {
			// Full for this group: count it as rejected and drop it.
			rej.add(f)
			last := len(h) - 1
			h[0] = h[last]
			h = h[:last]
		}
		s.down(h, 0)
	}
	return unplaced
}

func failedConstraint(cons []compiled, n *Node) int {
	for i := range cons {
		if !cons[i].matches(n) {
			return i
		}
	}
	return -1
}

func growInts(b *[]int, n int) []int {
	if cap(*b) < n {
		*b = make([]int, n)
	}
	r := (*b)[:n]
	clear(r)
	return r
}

// less orders candidate slots: fewest tasks of the service, then fewest
// tasks in total, then smallest node ID.
func (s *Scheduler) less(a, b int32) bool {
	if ca, cb := s.svc[a], s.svc[b]; ca != cb {
		return ca < cb
	}
	na, nb := s.list[a], s.list[b]
	if na.tasks != nb.tasks {
		return na.tasks < nb.tasks
	}
	return na.node.ID < nb.node.ID
}

func (s *Scheduler) down(h []int32, i int) {
	n := len(h)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		c := l
		if r := l + 1; r < n && s.less(h[r], h[l]) {
			c = r
		}
		if !s.less(h[c], h[i]) {
			return
		}
		h[i], h[c] = h[c], h[i]
		i = c
	}
}
