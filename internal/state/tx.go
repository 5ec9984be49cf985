package state

import (
	"fmt"
	"sort"

	memdb "github.com/hashicorp/go-memdb"
	"google.golang.org/protobuf/proto"

	"github.com/shoalhq/shoal/internal/api"
)

// ReadTx reads a consistent snapshot of the store. Objects it returns are
// copies: the caller may modify and keep them. A ReadTx must not be used after
// the View or Update callback that received it returns.
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

// WriteTx is a ReadTx that also records changes. Reads see the transaction's
// own changes. Create fails with ErrExist if the ID (or a service's name) is
// taken; Update and Delete fail with ErrNotFound if the object is gone, and
// Update with ErrConflict if the object's Meta.Version is not the current
// one. The same checks run again when the log applies the transaction.
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
	DeleteTask(id string) error
	CreateCluster(*api.Cluster) error
	UpdateCluster(*api.Cluster) error
	DeleteCluster(id string) error
}

type readTx struct {
	txn *memdb.Txn
}

func (tx *readTx) get(table, id string) Object {
	raw, err := tx.txn.First(table, indexID, id)
	if err != nil || raw == nil {
		return nil
	}
	return proto.Clone(raw.(Object)).(Object)
}

func (tx *readTx) GetNode(id string) *api.Node {
	o, _ := tx.get(tableNode, id).(*api.Node)
	return o
}

func (tx *readTx) GetService(id string) *api.Service {
	o, _ := tx.get(tableService, id).(*api.Service)
	return o
}

func (tx *readTx) GetTask(id string) *api.Task {
	o, _ := tx.get(tableTask, id).(*api.Task)
	return o
}

func (tx *readTx) GetCluster(id string) *api.Cluster {
	o, _ := tx.get(tableCluster, id).(*api.Cluster)
	return o
}

// find returns copies of the matching objects, sorted by ID.
func (tx *readTx) find(table string, by By) ([]Object, error) {
	if err := by.check(table); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var out []Object
	var run func(b By) error
	run = func(b By) error {
		if b.or != nil {
			for _, o := range b.or {
				if err := run(o); err != nil {
					return err
				}
			}
			return nil
		}
		var it memdb.ResultIterator
		var err error
		if b.prefix {
			it, err = tx.txn.Get(table, b.index+"_prefix", b.arg)
		} else {
			it, err = tx.txn.Get(table, b.index, b.arg)
		}
		if err != nil {
			return err
		}
		for raw := it.Next(); raw != nil; raw = it.Next() {
			o := raw.(Object)
			if seen[o.GetId()] {
				continue
			}
			seen[o.GetId()] = true
			out = append(out, proto.Clone(o).(Object))
		}
		return nil
	}
	if err := run(by); err != nil {
		return nil, err
	}
	if by.or != nil {
		sort.Slice(out, func(i, j int) bool { return out[i].GetId() < out[j].GetId() })
	}
	return out, nil
}

func findAs[T Object](tx *readTx, table string, by By) ([]T, error) {
	objs, err := tx.find(table, by)
	if err != nil {
		return nil, err
	}
	out := make([]T, len(objs))
	for i, o := range objs {
		out[i] = o.(T)
	}
	return out, nil
}

func (tx *readTx) FindNodes(by By) ([]*api.Node, error) { return findAs[*api.Node](tx, tableNode, by) }
func (tx *readTx) FindServices(by By) ([]*api.Service, error) {
	return findAs[*api.Service](tx, tableService, by)
}
func (tx *readTx) FindTasks(by By) ([]*api.Task, error) { return findAs[*api.Task](tx, tableTask, by) }
func (tx *readTx) FindClusters(by By) ([]*api.Cluster, error) {
	return findAs[*api.Cluster](tx, tableCluster, by)
}

type changeKey struct {
	table string
	id    string
}

type change struct {
	kind api.StoreAction_Kind
	obj  Object
}

type writeTx struct {
	readTx
	now     int64
	changes map[changeKey]int // index into list
	list    []change
}

func (tx *writeTx) record(table string, kind api.StoreAction_Kind, o Object) {
	k := changeKey{table, o.GetId()}
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
	table := kind.table()
	if raw, _ := tx.txn.First(table, indexID, o.GetId()); raw != nil {
		return fmt.Errorf("%s %s: %w", kind, o.GetId(), ErrExist)
	}
	if err := checkUnique(tx.txn, o, ""); err != nil {
		return err
	}
	c := proto.Clone(o).(Object)
	setMeta(c, &api.Meta{CreatedAt: tx.now, UpdatedAt: tx.now})
	if err := tx.txn.Insert(table, c); err != nil {
		return err
	}
	tx.record(table, api.StoreAction_KIND_CREATE, c)
	return nil
}

func (tx *writeTx) update(o Object) error {
	kind := KindOf(o)
	if kind == 0 || o == nil {
		return fmt.Errorf("state: cannot store %T", o)
	}
	table := kind.table()
	raw, _ := tx.txn.First(table, indexID, o.GetId())
	if raw == nil {
		return fmt.Errorf("%s %s: %w", kind, o.GetId(), ErrNotFound)
	}
	cur := raw.(Object)
	if cur.GetMeta().GetVersion() != o.GetMeta().GetVersion() {
		return fmt.Errorf("%s %s: version %d is not the current %d: %w",
			kind, o.GetId(), o.GetMeta().GetVersion(), cur.GetMeta().GetVersion(), ErrConflict)
	}
	if err := checkUnique(tx.txn, o, o.GetId()); err != nil {
		return err
	}
	c := proto.Clone(o).(Object)
	m := &api.Meta{Version: cur.GetMeta().GetVersion(), CreatedAt: cur.GetMeta().GetCreatedAt(), UpdatedAt: tx.now}
	setMeta(c, m)
	if t, ok := c.(*api.Task); ok && t.GetStatus().GetState() < cur.(*api.Task).GetStatus().GetState() {
		t.Status = cur.(*api.Task).Status
	}
	if err := tx.txn.Insert(table, c); err != nil {
		return err
	}
	tx.record(table, api.StoreAction_KIND_UPDATE, c)
	return nil
}

func (tx *writeTx) delete(kind Kind, id string) error {
	table := kind.table()
	raw, _ := tx.txn.First(table, indexID, id)
	if raw == nil {
		return fmt.Errorf("%s %s: %w", kind, id, ErrNotFound)
	}
	if err := tx.txn.Delete(table, raw); err != nil {
		return err
	}
	tx.record(table, api.StoreAction_KIND_DELETE, raw.(Object))
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
func (tx *writeTx) CreateCluster(o *api.Cluster) error { return tx.create(o) }
func (tx *writeTx) UpdateCluster(o *api.Cluster) error { return tx.update(o) }
func (tx *writeTx) DeleteCluster(id string) error      { return tx.delete(KindCluster, id) }
