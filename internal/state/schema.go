package state

import (
	"fmt"
	"strings"

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
	indexID        = "id"
	indexName      = "name"
	indexServiceID = "service_id"
	indexNodeID    = "node_id"
	indexRole      = "role"
	indexPublished = "published_port"
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

// Object is one of *api.Node, *api.Service, *api.Task, *api.Cluster. Once
// stored, an object is never modified (see the package doc).
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

// indexDef computes the key an object has in one secondary index; ok is
// false when the object has no value for it. A multi-valued index sets keys
// instead: the object is found under each of them.
type indexDef struct {
	name string
	key  func(o Object) (key string, ok bool)
	keys func(o Object) []string
}

// keysOf returns the keys o has in d.
func (d indexDef) keysOf(o Object) []string {
	if d.keys != nil {
		return d.keys(o)
	}
	if k, ok := d.key(o); ok {
		return []string{k}
	}
	return nil
}

// PublishedPortKey is the key of an ingress published port in the
// published-port index ("8080/tcp").
func PublishedPortKey(port uint32, proto api.PortProtocol) string {
	p := "tcp"
	if proto == api.PortProtocol_PORT_PROTOCOL_UDP {
		p = "udp"
	}
	return fmt.Sprintf("%d/%s", port, p)
}

// publishedPorts lists the ingress ports a service has published (as
// allocated): the routing mesh binds them on every node, so no two services
// may share one.
func publishedPorts(o Object) []string {
	var out []string
	for _, p := range o.(*api.Service).GetEndpoint().GetPorts() {
		if p.GetMode() == api.PublishMode_PUBLISH_MODE_INGRESS && p.GetPublishedPort() != 0 {
			out = append(out, PublishedPortKey(p.GetPublishedPort(), p.GetProtocol()))
		}
	}
	return out
}

// schema lists each kind's secondary indexes (the ID is the primary key).
func schema() map[Kind][]indexDef {
	return map[Kind][]indexDef{
		KindNode: {
			{name: indexName, key: func(o Object) (string, bool) {
				h := o.(*api.Node).GetDescription().GetHostname()
				return strings.ToLower(h), h != ""
			}},
			{name: indexRole, key: func(o Object) (string, bool) {
				return enumKey(int32(o.(*api.Node).GetRole())), true
			}},
		},
		KindService: {
			{name: indexName, key: func(o Object) (string, bool) {
				n := o.(*api.Service).GetSpec().GetName()
				return strings.ToLower(n), n != ""
			}},
			{name: indexPublished, keys: publishedPorts},
		},
		KindTask: {
			{name: indexServiceID, key: func(o Object) (string, bool) {
				t := o.(*api.Task)
				return t.GetServiceId(), t.GetServiceId() != ""
			}},
			{name: indexNodeID, key: func(o Object) (string, bool) {
				t := o.(*api.Task)
				return t.GetNodeId(), t.GetNodeId() != ""
			}},
		},
		KindCluster: {
			{name: indexName, key: func(o Object) (string, bool) {
				n := o.(*api.Cluster).GetSpec().GetName()
				return strings.ToLower(n), n != ""
			}},
		},
	}
}

func enumKey(n int32) string { return fmt.Sprintf("%d", n) }

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

// ByPublishedPort selects the service that publishes an ingress port (key
// from PublishedPortKey).
func ByPublishedPort(key string) By {
	return By{index: indexPublished, arg: key, tables: []string{tableService}}
}

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
