package state

import (
	"slices"
	"sort"
	"strings"
)

// table holds the objects of one kind by ID, with secondary indexes from
// index key to the set of IDs that have it. Stored objects are never
// modified: a write replaces the pointer. A table is guarded by the store's
// lock.
type table struct {
	kind Kind
	objs map[string]Object
	defs []indexDef
	idx  map[string]map[string]map[string]struct{} // index → key → IDs
	// chk, when set (Config.CheckImmutable), records every object stored.
	chk *immutChecker
}

func newTable(kind Kind, defs []indexDef) *table {
	t := &table{kind: kind, objs: map[string]Object{}, defs: defs, idx: map[string]map[string]map[string]struct{}{}}
	for _, d := range defs {
		t.idx[d.name] = map[string]map[string]struct{}{}
	}
	return t
}

func (t *table) get(id string) Object { return t.objs[id] }

// grow makes room for n more objects.
func (t *table) grow(n int) {
	objs := make(map[string]Object, len(t.objs)+n)
	for k, v := range t.objs {
		objs[k] = v
	}
	t.objs = objs
}

// put stores o, replacing the object with its ID, and returns that one.
func (t *table) put(o Object) Object {
	id := o.GetId()
	old := t.objs[id]
	if old != nil {
		t.unindex(old)
	}
	t.objs[id] = o
	if t.chk != nil {
		t.chk.stored(t.kind, old, o)
	}
	for _, d := range t.defs {
		for _, k := range d.keysOf(o) {
			set := t.idx[d.name][k]
			if set == nil {
				set = map[string]struct{}{}
				t.idx[d.name][k] = set
			}
			set[id] = struct{}{}
		}
	}
	return old
}

// del removes the object with that ID and returns it.
func (t *table) del(id string) Object {
	old := t.objs[id]
	if old != nil {
		t.unindex(old)
		delete(t.objs, id)
		if t.chk != nil {
			t.chk.removed(t.kind, old)
		}
	}
	return old
}

func (t *table) unindex(o Object) {
	id := o.GetId()
	for _, d := range t.defs {
		for _, k := range d.keysOf(o) {
			set := t.idx[d.name][k]
			delete(set, id)
			if len(set) == 0 {
				delete(t.idx[d.name], k)
			}
		}
	}
}

// candidates returns the IDs selected by b (not sorted).
func (t *table) candidates(b By, into map[string]struct{}) {
	if b.or != nil {
		for _, o := range b.or {
			t.candidates(o, into)
		}
		return
	}
	if b.index == indexID {
		if !b.prefix {
			if _, ok := t.objs[b.arg]; ok {
				into[b.arg] = struct{}{}
			}
			return
		}
		for id := range t.objs {
			if strings.HasPrefix(id, b.arg) {
				into[id] = struct{}{}
			}
		}
		return
	}
	for id := range t.idx[b.index][b.arg] {
		into[id] = struct{}{}
	}
}

// selectIDs returns the IDs selected by b, sorted. A plain selector (no Or)
// cannot name an object twice, so its IDs go straight into the slice; only
// Or needs a set to merge its parts.
func (t *table) selectIDs(b By) []string {
	if b.or != nil {
		set := map[string]struct{}{}
		t.candidates(b, set)
		return sortedIDs(set)
	}
	var ids []string
	switch {
	case b.index == indexID && !b.prefix:
		if _, ok := t.objs[b.arg]; ok {
			ids = []string{b.arg}
		}
	case b.index == indexID:
		ids = make([]string, 0, len(t.objs))
		for id := range t.objs {
			if strings.HasPrefix(id, b.arg) {
				ids = append(ids, id)
			}
		}
	default:
		set := t.idx[b.index][b.arg]
		ids = make([]string, 0, len(set))
		for id := range set {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids
}

// matches reports whether object o is selected by b.
func (t *table) matches(o Object, b By) bool {
	if b.or != nil {
		for _, x := range b.or {
			if t.matches(o, x) {
				return true
			}
		}
		return false
	}
	if b.index == indexID {
		if b.prefix {
			return strings.HasPrefix(o.GetId(), b.arg)
		}
		return o.GetId() == b.arg
	}
	for _, d := range t.defs {
		if d.name == b.index {
			return slices.Contains(d.keysOf(o), b.arg)
		}
	}
	return false
}

func sortedIDs(set map[string]struct{}) []string {
	ids := make([]string, 0, len(set))
	for id := range set {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}
