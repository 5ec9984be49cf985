package state

import (
	"errors"
	"fmt"
	"slices"

	"google.golang.org/protobuf/proto"

	"github.com/shoalhq/shoal/internal/api"
)

// ReadTx reads a consistent snapshot of the store: every read in one
// transaction sees the state after the same log index.
//
// Concurrency: a ReadTx belongs to the callback that received it (View,
// ViewShared, ViewAndWatch, or Update as a WriteTx). Use it only on the
// callback's goroutine and only until the callback returns; it must not be
// kept, nor handed to another goroutine. The callback runs under the store's
// read lock, which holds up every apply on this node (and with it the log's
// apply loop): it must be short, must not block (on I/O, a channel, a lock
// that a writer of the store may hold, or a store watch), and must not call
// any method of the Store, whose locks are not reentrant.
//
// Objects: what a ReadTx returns is a copy that the caller owns, may modify
// and may keep after the callback returns, except in a ViewShared callback,
// where it is the stored object itself: shared with every reader, watchers
// and snapshots, it may be kept but must not be modified at all (see
// Store.ViewShared). A nil result means the object does not exist; Find
// results are sorted by ID; Find fails only for a selector that is empty or
// does not apply to the kind.
type ReadTx interface {
	GetNode(id string) *api.Node
	GetService(id string) *api.Service
	GetTask(id string) *api.Task
	GetCluster(id string) *api.Cluster
	FindNodes(by By) ([]*api.Node, error)
	FindServices(by By) ([]*api.Service, error)
	FindTasks(by By) ([]*api.Task, error)
	FindClusters(by By) ([]*api.Cluster, error)
}

// WriteTx is a ReadTx that also records changes, for an Update callback.
// Its reads see the transaction's own changes and always return copies.
// Create fails with ErrExist if the ID (or a service's or cluster's name)
// is taken; Update and Delete fail with ErrNotFound if the object is gone,
// and Update with ErrConflict if the object's Meta.Version is not the
// current one. The same checks run again
// when the log applies the transaction, against the state of that moment;
// a service's ingress published ports are checked only then (ErrConflict).
// Create and Update store a copy of their argument, with Meta set by the
// store (the caller's Meta.Version only says which version it read): the
// caller may keep and modify the argument afterwards. A task's Status never
// moves back to an earlier state: such a write keeps the current Status.
//
// Concurrency: a WriteTx follows ReadTx's rules, and is not safe for
// concurrent use even within its callback. Its changes become visible to
// other readers only once Update has proposed them and the log has applied
// them, all together or not at all.
//
// WriteTx is one interface for every kind because it has one
// implementation and its users receive it from Update rather than implement
// it; code that needs only some of its methods declares its own smaller
// interface, which every WriteTx satisfies.
type WriteTx interface {
	ReadTx
	CreateNode(*api.Node) error
	UpdateNode(*api.Node) error
	DeleteNode(id string) error
	CreateService(*api.Service) error
	UpdateService(*api.Service) error
	DeleteService(id string) error
	CreateTask(*api.Task) error
	UpdateTask(*api.Task) error
	// ModifyTask updates task id with fn, the cheap way to change a few
	// fields of many tasks (scheduling decisions, status reports). fn runs
	// at once, on the caller's goroutine, under the same rules as the Update
	// callback, and gets a shallow copy of the task as this transaction sees
	// it, which it must not keep: it may assign any field (NodeId,
	// DesiredState, Status, ...), and may modify Status in place, but must
	// not modify Spec or the elements of Status.Endpoints in place (assign
	// new ones instead): they are shared with the stored task. If fn returns
	// an error nothing is recorded and ModifyTask returns it (ErrSkip:
	// returns nil). It fails with ErrNotFound if the task is gone, and with
	// an error if fn changed the task's ID.
	ModifyTask(id string, fn func(*api.Task) error) error
	DeleteTask(id string) error
	CreateCluster(*api.Cluster) error
	UpdateCluster(*api.Cluster) error
	DeleteCluster(id string) error
}

// readTx reads the store's tables; the View, ViewShared, ViewAndWatch or
// Update that made it holds the store's read lock while it is used. A shared
// readTx (ViewShared) returns the stored objects themselves; the others
// return copies.
type readTx struct {
	s      *Store
	shared bool
}

// lookup returns the stored object (shared: callers clone before returning it).
func (tx *readTx) lookup(kind Kind, id string) Object { return tx.s.tables[kind].get(id) }

func clone(o Object) Object {
	if o == nil {
		return nil
	}
	return proto.Clone(o).(Object)
}

// out returns what a read hands out: the stored object itself in a shared
// view, else a copy.
func (tx *readTx) out(o Object) Object {
	if tx.shared {
		return o
	}
	return clone(o)
}

func (tx *readTx) GetNode(id string) *api.Node {
	o, _ := tx.out(tx.lookup(KindNode, id)).(*api.Node)
	return o
}

func (tx *readTx) GetService(id string) *api.Service {
	o, _ := tx.out(tx.lookup(KindService, id)).(*api.Service)
	return o
}

func (tx *readTx) GetTask(id string) *api.Task {
	o, _ := tx.out(tx.lookup(KindTask, id)).(*api.Task)
	return o
}

func (tx *readTx) GetCluster(id string) *api.Cluster {
	o, _ := tx.out(tx.lookup(KindCluster, id)).(*api.Cluster)
	return o
}

// find returns the selected stored objects (copies unless shared), sorted by
// ID.
func (tx *readTx) find(kind Kind, by By) ([]Object, error) {
	if err := by.check(kind.table()); err != nil {
		return nil, err
	}
	t := tx.s.tables[kind]
	ids := t.selectIDs(by)
	out := make([]Object, len(ids))
	for i, id := range ids {
		out[i] = tx.out(t.get(id))
	}
	return out, nil
}

func findAs[T Object](objs []Object, err error) ([]T, error) {
	if err != nil {
		return nil, err
	}
	out := make([]T, len(objs))
	for i, o := range objs {
		out[i] = o.(T)
	}
	return out, nil
}

func (tx *readTx) FindNodes(by By) ([]*api.Node, error) {
	return findAs[*api.Node](tx.find(KindNode, by))
}
func (tx *readTx) FindServices(by By) ([]*api.Service, error) {
	return findAs[*api.Service](tx.find(KindService, by))
}
func (tx *readTx) FindTasks(by By) ([]*api.Task, error) {
	return findAs[*api.Task](tx.find(KindTask, by))
}
func (tx *readTx) FindClusters(by By) ([]*api.Cluster, error) {
	return findAs[*api.Cluster](tx.find(KindCluster, by))
}

type changeKey struct {
	table string
	id    string
}

type change struct {
	kind api.StoreAction_Kind
	obj  Object
}

// writeTx buffers a transaction's changes in an overlay over the tables, so
// its reads see its own writes without touching the shared tables.
type writeTx struct {
	readTx
	now     int64
	changes map[changeKey]int // index into list
	list    []change
	overlay map[changeKey]Object // the object as the transaction left it; nil = deleted
}

func newWriteTx(s *Store, now int64) *writeTx {
	return &writeTx{readTx: readTx{s: s}, now: now, changes: map[changeKey]int{}, overlay: map[changeKey]Object{}}
}

// current returns the object as this transaction sees it (shared; do not modify).
func (tx *writeTx) current(kind Kind, id string) Object {
	if o, ok := tx.overlay[changeKey{kind.table(), id}]; ok {
		return o
	}
	return tx.lookup(kind, id)
}

func (tx *writeTx) GetNode(id string) *api.Node {
	o, _ := clone(tx.current(KindNode, id)).(*api.Node)
	return o
}

func (tx *writeTx) GetService(id string) *api.Service {
	o, _ := clone(tx.current(KindService, id)).(*api.Service)
	return o
}

func (tx *writeTx) GetTask(id string) *api.Task {
	o, _ := clone(tx.current(KindTask, id)).(*api.Task)
	return o
}

func (tx *writeTx) GetCluster(id string) *api.Cluster {
	o, _ := clone(tx.current(KindCluster, id)).(*api.Cluster)
	return o
}

// find merges the tables with the overlay.
func (tx *writeTx) find(kind Kind, by By) ([]Object, error) {
	if err := by.check(kind.table()); err != nil {
		return nil, err
	}
	t := tx.s.tables[kind]
	set := map[string]struct{}{}
	t.candidates(by, set)
	table := kind.table()
	for k, o := range tx.overlay {
		if k.table != table {
			continue
		}
		if o != nil && t.matches(o, by) {
			set[k.id] = struct{}{}
		} else {
			delete(set, k.id)
		}
	}
	out := make([]Object, 0, len(set))
	for _, id := range sortedIDs(set) {
		out = append(out, clone(tx.current(kind, id)))
	}
	return out, nil
}

func (tx *writeTx) FindNodes(by By) ([]*api.Node, error) {
	return findAs[*api.Node](tx.find(KindNode, by))
}
func (tx *writeTx) FindServices(by By) ([]*api.Service, error) {
	return findAs[*api.Service](tx.find(KindService, by))
}
func (tx *writeTx) FindTasks(by By) ([]*api.Task, error) {
	return findAs[*api.Task](tx.find(KindTask, by))
}
func (tx *writeTx) FindClusters(by By) ([]*api.Cluster, error) {
	return findAs[*api.Cluster](tx.find(KindCluster, by))
}

// checkUnique enforces unique service and cluster names (case-insensitive)
// as the transaction sees them. self is the ID being written.
func (tx *writeTx) checkUnique(o Object, self string) error {
	name, ok := uniqueName(o)
	if !ok {
		return nil
	}
	kind := KindOf(o)
	others, err := tx.find(kind, ByName(name))
	if err != nil {
		return err
	}
	for _, x := range others {
		if x.GetId() != self {
			return nameTaken(kind, name, x.GetId())
		}
	}
	return nil
}

func (tx *writeTx) record(table string, kind api.StoreAction_Kind, o Object) {
	k := changeKey{table, o.GetId()}
	if kind == api.StoreAction_KIND_DELETE {
		tx.overlay[k] = nil
	} else {
		tx.overlay[k] = o
	}
	if i, ok := tx.changes[k]; ok {
		prev := tx.list[i].kind
		switch {
		case prev == api.StoreAction_KIND_CREATE && kind == api.StoreAction_KIND_UPDATE:
			kind = api.StoreAction_KIND_CREATE
		case prev == api.StoreAction_KIND_CREATE && kind == api.StoreAction_KIND_DELETE:
			kind = api.StoreAction_KIND_UNKNOWN // created and deleted: nothing to do
		}
		tx.list[i] = change{kind: kind, obj: o}
		return
	}
	tx.changes[k] = len(tx.list)
	tx.list = append(tx.list, change{kind: kind, obj: o})
}

func (tx *writeTx) request() *api.StoreRequest {
	req := &api.StoreRequest{Actions: make([]*api.StoreAction, 0, len(tx.list))}
	for _, c := range tx.list {
		if c.kind == api.StoreAction_KIND_UNKNOWN {
			continue
		}
		req.Actions = append(req.Actions, StoreAction(c.kind, c.obj))
	}
	return req
}

// StoreAction wraps an object in a store action of the given kind (nil for a
// nil object). It is the one place objects become api.StoreAction, for log
// entries and for watch events sent over the wire alike.
func StoreAction(kind api.StoreAction_Kind, o Object) *api.StoreAction {
	if o == nil {
		return nil
	}
	a := &api.StoreAction{Kind: kind}
	switch v := o.(type) {
	case *api.Node:
		a.Target = &api.StoreAction_Node{Node: v}
	case *api.Service:
		a.Target = &api.StoreAction_Service{Service: v}
	case *api.Task:
		a.Target = &api.StoreAction_Task{Task: v}
	case *api.Cluster:
		a.Target = &api.StoreAction_Cluster{Cluster: v}
	}
	return a
}

func (tx *writeTx) create(o Object) error {
	kind := KindOf(o)
	if kind == 0 || o == nil {
		return fmt.Errorf("state: cannot store %T", o)
	}
	if o.GetId() == "" {
		return fmt.Errorf("state: %s has no ID", kind)
	}
	if tx.current(kind, o.GetId()) != nil {
		return fmt.Errorf("%s %s: %w", kind, o.GetId(), ErrExist)
	}
	if err := tx.checkUnique(o, ""); err != nil {
		return err
	}
	c := clone(o)
	setMeta(c, &api.Meta{CreatedAt: tx.now, UpdatedAt: tx.now})
	tx.record(kind.table(), api.StoreAction_KIND_CREATE, c)
	return nil
}

func (tx *writeTx) update(o Object) error {
	kind := KindOf(o)
	if kind == 0 || o == nil {
		return fmt.Errorf("state: cannot store %T", o)
	}
	cur := tx.current(kind, o.GetId())
	if cur == nil {
		return fmt.Errorf("%s %s: %w", kind, o.GetId(), ErrNotFound)
	}
	if cur.GetMeta().GetVersion() != o.GetMeta().GetVersion() {
		return fmt.Errorf("%s %s: version %d is not the current %d: %w",
			kind, o.GetId(), o.GetMeta().GetVersion(), cur.GetMeta().GetVersion(), ErrConflict)
	}
	if err := tx.checkUnique(o, o.GetId()); err != nil {
		return err
	}
	c := clone(o)
	setMeta(c, &api.Meta{Version: cur.GetMeta().GetVersion(), CreatedAt: cur.GetMeta().GetCreatedAt(), UpdatedAt: tx.now})
	if t, ok := c.(*api.Task); ok && t.GetStatus().GetState() < cur.(*api.Task).GetStatus().GetState() {
		t.Status = cur.(*api.Task).Status
	}
	tx.record(kind.table(), api.StoreAction_KIND_UPDATE, c)
	return nil
}

func (tx *writeTx) delete(kind Kind, id string) error {
	cur := tx.current(kind, id)
	if cur == nil {
		return fmt.Errorf("%s %s: %w", kind, id, ErrNotFound)
	}
	tx.record(kind.table(), api.StoreAction_KIND_DELETE, cur)
	return nil
}

func (tx *writeTx) CreateNode(o *api.Node) error       { return tx.create(o) }
func (tx *writeTx) UpdateNode(o *api.Node) error       { return tx.update(o) }
func (tx *writeTx) DeleteNode(id string) error         { return tx.delete(KindNode, id) }
func (tx *writeTx) CreateService(o *api.Service) error { return tx.create(o) }
func (tx *writeTx) UpdateService(o *api.Service) error { return tx.update(o) }
func (tx *writeTx) DeleteService(id string) error      { return tx.delete(KindService, id) }
func (tx *writeTx) CreateTask(o *api.Task) error       { return tx.create(o) }
func (tx *writeTx) UpdateTask(o *api.Task) error       { return tx.update(o) }
func (tx *writeTx) DeleteTask(id string) error         { return tx.delete(KindTask, id) }

// shallowTask copies a task's fields; nested messages are shared, except
// Status, which is copied (ModifyTask callbacks may change it in place), and
// Meta, which the caller replaces. TestShallowTaskCopiesEveryField fails if
// a field is added to Task and not here.
func shallowTask(t *api.Task) *api.Task {
	return &api.Task{
		Id:           t.Id,
		Meta:         t.Meta,
		ServiceId:    t.ServiceId,
		ServiceName:  t.ServiceName,
		Slot:         t.Slot,
		NodeId:       t.NodeId,
		Spec:         t.Spec,
		SpecVersion:  t.SpecVersion,
		DesiredState: t.DesiredState,
		Status:       copyStatus(t.Status),
		// ServiceLabels is shared, like Spec: set once, never modified.
		ServiceLabels: t.ServiceLabels,
	}
}

func copyStatus(s *api.TaskStatus) *api.TaskStatus {
	if s == nil {
		return nil
	}
	// Endpoints are shared with the stored status (immutable): a callback may
	// replace the slice, or append (clipped, so appending copies), but must
	// not modify its elements.
	return &api.TaskStatus{State: s.State, Timestamp: s.Timestamp, Message: s.Message, Err: s.Err, ExitCode: s.ExitCode,
		Endpoints: slices.Clip(s.Endpoints), Health: s.Health, HealthOutput: s.HealthOutput, HealthSeq: s.HealthSeq}
}

// ErrSkip, returned by a ModifyTask callback, leaves the task as it is.
var ErrSkip = errors.New("state: skip")

func (tx *writeTx) ModifyTask(id string, fn func(*api.Task) error) error {
	cur, _ := tx.current(KindTask, id).(*api.Task)
	if cur == nil {
		return fmt.Errorf("%s %s: %w", KindTask, id, ErrNotFound)
	}
	t := shallowTask(cur)
	if err := fn(t); err != nil {
		if errors.Is(err, ErrSkip) {
			return nil
		}
		return err
	}
	if t.Id != id {
		return fmt.Errorf("state: ModifyTask: the callback changed the task ID")
	}
	t.Meta = &api.Meta{Version: cur.GetMeta().GetVersion(), CreatedAt: cur.GetMeta().GetCreatedAt(), UpdatedAt: tx.now}
	if t.GetStatus().GetState() < cur.GetStatus().GetState() {
		t.Status = cur.Status
	}
	tx.record(tableTask, api.StoreAction_KIND_UPDATE, t)
	return nil
}
func (tx *writeTx) CreateCluster(o *api.Cluster) error { return tx.create(o) }
func (tx *writeTx) UpdateCluster(o *api.Cluster) error { return tx.update(o) }
func (tx *writeTx) DeleteCluster(id string) error      { return tx.delete(KindCluster, id) }
