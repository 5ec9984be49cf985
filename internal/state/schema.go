package state

import (
	"fmt"
	"strings"

	memdb "github.com/hashicorp/go-memdb"
	"google.golang.org/protobuf/proto"

	"github.com/shoalhq/shoal/internal/api"
)

// Table names.
const (
	tableNode    = "node"
	tableService = "service"
	tableTask    = "task"
	tableCluster = "cluster"
)

// Index names. Not every table has every index; see schema().
const (
	indexID           = "id"
	indexName         = "name"
	indexServiceID    = "service_id"
	indexNodeID       = "node_id"
	indexSlot         = "slot"
	indexDesiredState = "desired_state"
	indexTaskState    = "task_state"
	indexRole         = "role"
)

// Kind names the type of a stored object.
type Kind int

// Object kinds.
const (
	KindNode Kind = iota + 1
	KindService
	KindTask
	KindCluster
)

func (k Kind) String() string {
	switch k {
	case KindNode:
		return "node"
	case KindService:
		return "service"
	case KindTask:
		return "task"
	case KindCluster:
		return "cluster"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

func (k Kind) table() string { return k.String() }

// Object is one of *api.Node, *api.Service, *api.Task, *api.Cluster.
type Object interface {
	proto.Message
	GetId() string
	GetMeta() *api.Meta
}

// KindOf returns the kind of a stored object, or 0 for anything else.
func KindOf(o Object) Kind {
	switch o.(type) {
	case *api.Node:
		return KindNode
	case *api.Service:
		return KindService
	case *api.Task:
		return KindTask
	case *api.Cluster:
		return KindCluster
	}
	return 0
}

func setMeta(o Object, m *api.Meta) {
	switch v := o.(type) {
	case *api.Node:
		v.Meta = m
	case *api.Service:
		v.Meta = m
	case *api.Task:
		v.Meta = m
	case *api.Cluster:
		v.Meta = m
	}
}

// strIndexer indexes objects by a string key computed by fn. fn returns
// false when the object has no value for the index.
type strIndexer struct {
	fn func(o any) (string, bool)
}

func (ix strIndexer) FromObject(o any) (bool, []byte, error) {
	v, ok := ix.fn(o)
	if !ok {
		return false, nil, nil
	}
	return true, []byte(v + "\x00"), nil
}

func (ix strIndexer) FromArgs(args ...any) ([]byte, error) {
	if len(args) != 1 {
		return nil, fmt.Errorf("index takes one argument, got %d", len(args))
	}
	s, ok := args[0].(string)
	if !ok {
		return nil, fmt.Errorf("index argument must be a string, got %T", args[0])
	}
	return []byte(s + "\x00"), nil
}

func (ix strIndexer) PrefixFromArgs(args ...any) ([]byte, error) {
	b, err := ix.FromArgs(args...)
	if err != nil {
		return nil, err
	}
	return b[:len(b)-1], nil
}

func idIndex() *memdb.IndexSchema {
	return &memdb.IndexSchema{Name: indexID, Unique: true, Indexer: strIndexer{func(o any) (string, bool) {
		return o.(Object).GetId(), true
	}}}
}

func index(name string, fn func(o any) (string, bool)) *memdb.IndexSchema {
	return &memdb.IndexSchema{Name: name, AllowMissing: true, Indexer: strIndexer{fn}}
}

func slotKey(serviceID string, slot uint64) string { return fmt.Sprintf("%s/%d", serviceID, slot) }

func enumKey(n int32) string { return fmt.Sprintf("%d", n) }

func schema() *memdb.DBSchema {
	return &memdb.DBSchema{Tables: map[string]*memdb.TableSchema{
		tableNode: {Name: tableNode, Indexes: map[string]*memdb.IndexSchema{
			indexID: idIndex(),
			indexName: index(indexName, func(o any) (string, bool) {
				h := o.(*api.Node).GetDescription().GetHostname()
				return strings.ToLower(h), h != ""
			}),
			indexRole: index(indexRole, func(o any) (string, bool) {
				return enumKey(int32(o.(*api.Node).GetRole())), true
			}),
		}},
		tableService: {Name: tableService, Indexes: map[string]*memdb.IndexSchema{
			indexID: idIndex(),
			indexName: index(indexName, func(o any) (string, bool) {
				n := o.(*api.Service).GetSpec().GetName()
				return strings.ToLower(n), n != ""
			}),
		}},
		tableTask: {Name: tableTask, Indexes: map[string]*memdb.IndexSchema{
			indexID: idIndex(),
			indexServiceID: index(indexServiceID, func(o any) (string, bool) {
				t := o.(*api.Task)
				return t.GetServiceId(), t.GetServiceId() != ""
			}),
			indexNodeID: index(indexNodeID, func(o any) (string, bool) {
				t := o.(*api.Task)
				return t.GetNodeId(), t.GetNodeId() != ""
			}),
			indexSlot: index(indexSlot, func(o any) (string, bool) {
				t := o.(*api.Task)
				return slotKey(t.GetServiceId(), t.GetSlot()), t.GetServiceId() != ""
			}),
			indexDesiredState: index(indexDesiredState, func(o any) (string, bool) {
				return enumKey(int32(o.(*api.Task).GetDesiredState())), true
			}),
			indexTaskState: index(indexTaskState, func(o any) (string, bool) {
				return enumKey(int32(o.(*api.Task).GetStatus().GetState())), true
			}),
		}},
		tableCluster: {Name: tableCluster, Indexes: map[string]*memdb.IndexSchema{
			indexID: idIndex(),
			indexName: index(indexName, func(o any) (string, bool) {
				n := o.(*api.Cluster).GetSpec().GetName()
				return strings.ToLower(n), n != ""
			}),
		}},
	}}
}

// By selects objects in a Find call.
type By struct {
	index  string
	arg    string
	prefix bool
	or     []By
	// tables lists the tables the selector applies to; nil means all.
	tables []string
}

// All selects every object of the kind.
func All() By { return By{index: indexID, prefix: true} }

// ByIDPrefix selects objects whose ID starts with p.
func ByIDPrefix(p string) By { return By{index: indexID, arg: p, prefix: true} }

// ByName selects services, clusters (by spec name) or nodes (by hostname),
// case-insensitively.
func ByName(name string) By {
	return By{index: indexName, arg: strings.ToLower(name), tables: []string{tableNode, tableService, tableCluster}}
}

// ByServiceID selects the tasks of a service.
func ByServiceID(id string) By {
	return By{index: indexServiceID, arg: id, tables: []string{tableTask}}
}

// ByNodeID selects the tasks assigned to a node.
func ByNodeID(id string) By { return By{index: indexNodeID, arg: id, tables: []string{tableTask}} }

// BySlot selects the tasks of one slot of a replicated service.
func BySlot(serviceID string, slot uint64) By {
	return By{index: indexSlot, arg: slotKey(serviceID, slot), tables: []string{tableTask}}
}

// ByDesiredState selects tasks by desired state.
func ByDesiredState(s api.TaskState) By {
	return By{index: indexDesiredState, arg: enumKey(int32(s)), tables: []string{tableTask}}
}

// ByTaskState selects tasks by their observed state (Status.State).
func ByTaskState(s api.TaskState) By {
	return By{index: indexTaskState, arg: enumKey(int32(s)), tables: []string{tableTask}}
}

// ByRole selects nodes by role.
func ByRole(r api.NodeRole) By {
	return By{index: indexRole, arg: enumKey(int32(r)), tables: []string{tableNode}}
}

// Or selects objects matched by any of bys (each object once).
func Or(bys ...By) By { return By{or: bys} }

func (b By) check(table string) error {
	if b.or != nil {
		for _, o := range b.or {
			if err := o.check(table); err != nil {
				return err
			}
		}
		return nil
	}
	if b.index == "" {
		return fmt.Errorf("state: empty selector")
	}
	if b.tables == nil {
		return nil
	}
	for _, t := range b.tables {
		if t == table {
			return nil
		}
	}
	return fmt.Errorf("state: selector %q does not apply to %ss", b.index, table)
}
