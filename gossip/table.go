package gossip

import (
	"maps"
	"slices"
	"sync"
)

// maxPending bounds the out-of-order deltas buffered per node; beyond it the
// node's state is pulled instead, so a flood of gossip cannot grow memory.
const maxPending = 64

// nodeSet is one node's endpoint set at one version.
type nodeSet struct {
	epoch   uint64
	version uint64
	eps     map[epKey]Endpoint
	updated uint64 // table.seq when the version last moved: recency for digests
}

// table is the endpoint table: one versioned set per live node, plus the
// bookkeeping that decides when a set is stale. It does no I/O and every
// method is safe for concurrent use; those that apply state report whether
// the visible table changed. mu guards every field but self.
type table struct {
	self string

	mu      sync.Mutex
	sets    map[string]*nodeSet
	dead    map[string]bool              // failed or left per serf, until it rejoins or is reaped
	want    map[string]uint64            // highest version heard of per node
	pending map[string]map[uint64]*delta // out-of-order deltas per node, by From
	cache   []Endpoint                   // flattened, sorted table; nil when stale
	seq     uint64                       // counts version moves, to order sets by recency
	cursor  int                          // where the next digest's rotating part starts
	ids     []string                     // sorted IDs of the other sets held; nil when stale
}

func newTable(self string, epoch uint64) *table {
	t := &table{
		self:    self,
		sets:    make(map[string]*nodeSet),
		dead:    make(map[string]bool),
		want:    make(map[string]uint64),
		pending: make(map[string]map[uint64]*delta),
	}
	t.sets[self] = &nodeSet{epoch: epoch, version: epoch, eps: map[epKey]Endpoint{}}
	return t
}

// endpoints returns the sorted table (a copy).
func (t *table) endpoints() []Endpoint {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.cache == nil {
		n := 0
		for _, s := range t.sets {
			n += len(s.eps)
		}
		c := make([]Endpoint, 0, n)
		for _, s := range t.sets {
			for _, ep := range s.eps {
				c = append(c, ep)
			}
		}
		slices.SortFunc(c, compareEndpoints)
		t.cache = c
	}
	return slices.Clone(t.cache)
}

// size returns the number of endpoints in the table.
func (t *table) size() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, s := range t.sets {
		n += len(s.eps)
	}
	return n
}

// versionOf returns the version held for node (0 if none).
func (t *table) versionOf(node string) uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s := t.sets[node]; s != nil {
		return s.version
	}
	return 0
}

// local returns a copy of this node's set, its epoch and its version.
func (t *table) local() (map[epKey]Endpoint, uint64, uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.sets[t.self]
	return maps.Clone(s.eps), s.epoch, s.version
}

// setLocal installs this node's own set at a new version.
func (t *table) setLocal(eps map[epKey]Endpoint, version uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.sets[t.self]
	s.eps = eps
	s.version = version
	t.seq++
	s.updated = t.seq
	t.cache = nil
}

// applyDelta applies a gossiped delta. It reports whether the table changed
// and whether the node's state must be pulled (now: an announcement, which
// no delta follows; later: a gap that deltas in flight may still fill).
func (t *table) applyDelta(dl *delta) (changed, pullNow, pullLater bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if dl.Node == t.self || t.dead[dl.Node] {
		return false, false, false
	}
	if dl.To > t.want[dl.Node] {
		t.want[dl.Node] = dl.To
	}
	s := t.sets[dl.Node]
	if s != nil && s.version >= dl.To {
		return false, false, false // already have it
	}
	if dl.Kind == kindAnnounce {
		return false, true, false
	}
	switch {
	case s == nil && dl.From == dl.Epoch, s != nil && s.epoch < dl.Epoch && dl.From == dl.Epoch:
		// First delta of a (new incarnation of a) node: it applies to the empty set.
		s = &nodeSet{epoch: dl.Epoch, version: dl.Epoch, eps: map[epKey]Endpoint{}}
		if old := t.sets[dl.Node]; old != nil && len(old.eps) > 0 {
			changed = true
		}
		if t.sets[dl.Node] == nil {
			t.ids = nil
		}
		t.sets[dl.Node] = s
	case s == nil || s.version != dl.From:
		// A gap: keep the delta for when the missing ones arrive.
		p := t.pending[dl.Node]
		if p == nil {
			p = make(map[uint64]*delta)
			t.pending[dl.Node] = p
		}
		if len(p) >= maxPending {
			return false, true, false
		}
		p[dl.From] = dl
		return false, false, true
	}
	changed = t.stepLocked(s, dl) || changed
	changed = t.drainLocked(dl.Node, s) || changed
	if changed {
		t.cache = nil
	}
	return changed, false, s.version < t.want[dl.Node]
}

func (t *table) stepLocked(s *nodeSet, dl *delta) bool {
	changed := false
	for _, k := range dl.Removes {
		if _, ok := s.eps[k]; ok {
			delete(s.eps, k)
			changed = true
		}
	}
	for _, ep := range dl.Adds {
		if old, ok := s.eps[ep.key()]; !ok || old != ep {
			s.eps[ep.key()] = ep
			changed = true
		}
	}
	s.version = dl.To
	t.seq++
	s.updated = t.seq
	return changed
}

// drainLocked applies buffered deltas that now follow on.
func (t *table) drainLocked(node string, s *nodeSet) bool {
	p := t.pending[node]
	changed := false
	for len(p) > 0 {
		for from := range p {
			if from < s.version {
				delete(p, from)
			}
		}
		next, ok := p[s.version]
		if !ok {
			break
		}
		delete(p, s.version)
		changed = t.stepLocked(s, next) || changed
	}
	if len(p) == 0 {
		delete(t.pending, node)
	}
	return changed
}

// applyRecord installs a whole set pulled from a peer if it is newer.
func (t *table) applyRecord(r *record) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if r.Node == t.self || t.dead[r.Node] {
		return false
	}
	if r.Version > t.want[r.Node] {
		t.want[r.Node] = r.Version
	}
	s := t.sets[r.Node]
	if s != nil && s.version >= r.Version {
		return false
	}
	eps := make(map[epKey]Endpoint, len(r.Eps))
	for _, ep := range r.Eps {
		ep.Node = r.Node
		eps[ep.key()] = ep
	}
	changed := s == nil && len(eps) > 0 || s != nil && !maps.Equal(s.eps, eps)
	t.seq++
	if s == nil {
		t.ids = nil
	}
	s = &nodeSet{epoch: r.Epoch, version: r.Version, eps: eps, updated: t.seq}
	t.sets[r.Node] = s
	changed = t.drainLocked(r.Node, s) || changed
	if changed {
		t.cache = nil
	}
	return changed
}

// behind reports whether a newer version of node is known to exist.
func (t *table) behind(node string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.dead[node] {
		return false
	}
	s := t.sets[node]
	return s == nil || s.version < t.want[node]
}

// drop removes a failed or departed node's endpoints at once and refuses its
// state until it rejoins.
func (t *table) drop(node string) bool {
	if node == t.self {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.dead[node] = true
	delete(t.want, node)
	delete(t.pending, node)
	s := t.sets[node]
	if s != nil {
		t.ids = nil
	}
	delete(t.sets, node)
	if s != nil && len(s.eps) > 0 {
		t.cache = nil
		return true
	}
	return false
}

// revive accepts a node's state again after it (re)joins, and clears a
// reaped node's tombstone.
func (t *table) revive(node string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.dead, node)
}

// digest returns node -> version for every set held, this node's included.
func (t *table) digest() map[string]uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	dg := make(map[string]uint64, len(t.sets))
	for id, s := range t.sets {
		dg[id] = s.version
	}
	return dg
}

// newerThan returns the records this table holds at a higher version than
// dg says the peer has. With all set, nodes absent from dg count as version
// 0; otherwise only nodes named in dg are considered.
func (t *table) newerThan(dg map[string]uint64, all bool) []*record {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []*record
	consider := func(id string, s *nodeSet) {
		if v, ok := dg[id]; (ok || all) && s.version > v {
			r := &record{Node: id, Epoch: s.epoch, Version: s.version, Eps: make([]Endpoint, 0, len(s.eps))}
			for _, ep := range s.eps {
				r.Eps = append(r.Eps, ep)
			}
			out = append(out, r)
		}
	}
	if all {
		for id, s := range t.sets {
			consider(id, s)
		}
	} else {
		for id := range dg {
			if s := t.sets[id]; s != nil {
				consider(id, s)
			}
		}
	}
	return out
}

// versionDigest returns entries of this table's digest that encode to at
// most budget bytes, each node at most once: this node's own version, then
// the hot most recently updated sets (the changes most likely to have been
// missed; about half the budget at most), then a rotating run over the
// rest, so successive digests cover the whole table.
func (t *table) versionDigest(budget, hot int) []nodeVersion {
	t.mu.Lock()
	defer t.mu.Unlock()
	self := t.sets[t.self]
	out := []nodeVersion{{Node: t.self, Version: self.version}}
	used := nodeVersionSize(out[0])
	if len(t.sets) <= 1 {
		return out
	}
	if t.ids == nil {
		t.ids = make([]string, 0, len(t.sets)-1)
		for id := range t.sets {
			if id != t.self {
				t.ids = append(t.ids, id)
			}
		}
		slices.Sort(t.ids)
	}
	ids := t.ids
	add := func(id string) bool {
		nv := nodeVersion{Node: id, Version: t.sets[id].version}
		sz := nodeVersionSize(nv)
		if used+sz > budget {
			return false
		}
		out = append(out, nv)
		used += sz
		return true
	}
	// The hot most recently updated, by one pass keeping a small sorted
	// list; they take at most half the budget, so the rotation always
	// advances, even with long node IDs.
	var top []string
	if hot > 0 {
		top = make([]string, 0, hot+1)
		for _, id := range ids {
			u := t.sets[id].updated
			if len(top) == hot && u <= t.sets[top[hot-1]].updated {
				continue
			}
			i := len(top)
			for i > 0 && t.sets[top[i-1]].updated < u {
				i--
			}
			top = slices.Insert(top, i, id)
			if len(top) > hot {
				top = top[:hot]
			}
		}
		for i, id := range top {
			if used > budget/2 || !add(id) {
				top = top[:i] // the rest take their turn in the rotation
				break
			}
		}
	}
	start := t.cursor % len(ids)
	i := 0
	for ; i < len(ids); i++ {
		id := ids[(start+i)%len(ids)]
		if slices.Contains(top, id) {
			continue
		}
		if !add(id) {
			break
		}
	}
	t.cursor = start + i
	return out
}

// noteVersions records versions a peer reported holding and returns the
// nodes this table now knows it is behind on (skipping itself and dead
// nodes).
func (t *table) noteVersions(vs []nodeVersion) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var behind []string
	for _, nv := range vs {
		if nv.Node == t.self || t.dead[nv.Node] {
			continue
		}
		if s := t.sets[nv.Node]; s != nil && s.version >= nv.Version {
			continue
		}
		if nv.Version > t.want[nv.Node] {
			t.want[nv.Node] = nv.Version
		}
		behind = append(behind, nv.Node)
	}
	return behind
}
