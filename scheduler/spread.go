package scheduler

import "fmt"

// prefGroup is one group of the decision tree of a task group with
// preferences: the described nodes that share the values of the labels of
// the preferences down to its level. Only the nodes that are candidates or
// run tasks of the service enter the tree, since the others change no count
// and take no task. The root is index 0; the leaves, one level per
// preference below it, hold the candidate slots.
type prefGroup struct {
	value   string  // label value at this level
	missing bool    // the group of the nodes without the label
	leaf    bool    // at the level of the last preference
	live    bool    // has a candidate below it
	parent  int32   // -1 for the root
	count   int32   // tasks of the service on the described nodes below it
	size    int32   // candidates (leaf) or live subgroups (inner group)
	kids    []int32 // inner group: live subgroups, a heap ordered by groupLess
	cands   []int32 // leaf: candidate slots, a heap ordered by Scheduler.less
}

// prefKey finds a subgroup while the tree is built.
type prefKey struct {
	parent  int32
	value   string
	missing bool
}

// placeSpread places the tasks of group g (the pending indices idx) over
// the candidate slots cands, which are in increasing slot order, honouring
// g's preferences. It reports whether a task was left without a node for
// want of candidates.
//
// The tree has one level per preference. A group's count is the number of
// tasks of the service recorded on its described nodes, candidates or not.
// Each task walks down from the root to the live subgroup with the lowest
// count (ties: the smaller label value, the group without the label last),
// then takes the leaf's best candidate by less. The walk back up adds the
// task to every group on the path, and drops the leaf, and the groups above
// it, from their parents' heaps once they have no candidate left. A task
// costs O(levels·log groups + log leaf size).
func (s *Scheduler) placeSpread(g *group, pending []Task, idx []int32, out []Decision, cands []int32, rej *rejections, m map[*nodeInfo]int32) bool {
	key := g.key
	levels := len(g.prefs)
	tree := append(s.tree[:0], prefGroup{parent: -1})
	s.leafOf = grow(s.leafOf, len(cands))
	ci := 0
	for slot, ni := range s.list {
		cand := ci < len(cands) && cands[ci] == int32(slot)
		c := s.svc[slot]
		if !cand && c == 0 {
			continue // adds no task and no candidate to any group
		}
		cur := int32(0)
		for l, p := range g.prefs {
			v, ok := ni.node.Labels[p.SpreadLabel]
			k := prefKey{parent: cur, value: v, missing: !ok}
			next, found := s.treeIdx[k]
			if !found {
				next = int32(len(tree))
				tree = append(tree, prefGroup{value: v, missing: !ok, leaf: l == levels-1, parent: cur})
				s.treeIdx[k] = next
			}
			cur = next
			tree[cur].count += c
		}
		if cand {
			tree[cur].size++
			s.leafOf[ci] = cur
			ci++
		}
	}

	// Children come after their parent, so a backward sweep sees every
	// group's subgroups before the group.
	nkids := int32(0)
	for i := len(tree) - 1; i > 0; i-- {
		gr := &tree[i]
		gr.live = gr.size > 0
		if gr.live {
			tree[gr.parent].size++
			nkids++
		}
	}
	tree[0].live = tree[0].size > 0
	s.treeSlots = grow(s.treeSlots, len(cands))
	s.treeKids = grow(s.treeKids, int(nkids))
	var slotOff, kidOff int32
	for i := range tree {
		gr := &tree[i]
		if gr.leaf {
			gr.cands = s.treeSlots[slotOff:slotOff:(slotOff + gr.size)]
			slotOff += gr.size
		} else {
			gr.kids = s.treeKids[kidOff:kidOff:(kidOff + gr.size)]
			kidOff += gr.size
		}
	}
	for i, slot := range cands {
		leaf := &tree[s.leafOf[i]]
		leaf.cands = append(leaf.cands, slot)
	}
	for i := 1; i < len(tree); i++ {
		if tree[i].live {
			p := &tree[tree[i].parent]
			p.kids = append(p.kids, int32(i))
		}
	}
	s.tree = tree
	for i := range tree {
		gr := &tree[i]
		for j := len(gr.cands)/2 - 1; j >= 0; j-- {
			s.down(gr.cands, j)
		}
		for j := len(gr.kids)/2 - 1; j >= 0; j-- {
			s.groupDown(gr.kids, j)
		}
	}

	unplaced := false
	for _, ti := range idx {
		t := &pending[ti]
		if _, dup := s.tasks[t.ID]; dup {
			out[ti].Reason = fmt.Sprintf("task ID %q appears more than once in this pass", t.ID)
			continue
		}
		if len(tree[0].kids) == 0 {
			unplaced = true
			continue
		}
		cur := int32(0)
		for !tree[cur].leaf {
			cur = tree[cur].kids[0]
		}
		leaf := &tree[cur]
		slot := leaf.cands[0]
		ni := s.list[slot]
		s.record(m, t.ID, t.ServiceID, ni, t.Reservations, t.HostPorts)
		s.svc[slot]++
		out[ti].NodeID = ni.node.ID
		if f := fits(ni, key.res, s.svc[slot], key.maxRep, g.ports); f != fitOK {
			// Full for this group: count it as rejected and drop it.
			rej.add(f)
			last := len(leaf.cands) - 1
			leaf.cands[0] = leaf.cands[last]
			leaf.cands = leaf.cands[:last]
		}
		s.down(leaf.cands, 0)
		// Every group on the path is at the top of its parent's heap.
		dead := len(leaf.cands) == 0
		for c := cur; c != 0; {
			tree[c].count++
			p := &tree[tree[c].parent]
			if dead {
				last := len(p.kids) - 1
				p.kids[0] = p.kids[last]
				p.kids = p.kids[:last]
				dead = len(p.kids) == 0
			}
			s.groupDown(p.kids, 0)
			c = tree[c].parent
		}
	}

	clear(tree) // drop the label values and the scratch slices
	s.tree = tree[:0]
	clear(s.treeIdx)
	return unplaced
}

// groupLess orders the subgroups of a group: fewest tasks of the service,
// then the smaller label value, the group without the label last.
func (s *Scheduler) groupLess(a, b int32) bool {
	ga, gb := &s.tree[a], &s.tree[b]
	if ga.count != gb.count {
		return ga.count < gb.count
	}
	if ga.missing != gb.missing {
		return gb.missing
	}
	return ga.value < gb.value
}

func (s *Scheduler) groupDown(h []int32, i int) {
	n := len(h)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		c := l
		if r := l + 1; r < n && s.groupLess(h[r], h[l]) {
			c = r
		}
		if !s.groupLess(h[c], h[i]) {
			return
		}
		h[i], h[c] = h[c], h[i]
		i = c
	}
}
