package state

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	memdb "github.com/hashicorp/go-memdb"
	"google.golang.org/protobuf/proto"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/errdefs"
)

// Errors returned by the store. They are the module-wide sentinels, so the
// root package's errors match them with errors.Is.
var (
	ErrNotFound = errdefs.ErrNotFound
	ErrConflict = errdefs.ErrConflict
	ErrExist    = errdefs.ErrExist
	// ErrNoLog is returned by Update on a store that has no log attached.
	ErrNoLog = errors.New("state: no log attached to the store")
)

// Log is the replicated log the store proposes its writes to.
// raftstore.Node implements it; NewInMemory makes a store with a local one.
type Log interface {
	// Propose appends data to the log and returns, once the entry is committed
	// and applied on this node, what the store's Apply returned for it. It is
	// safe for concurrent use.
	Propose(ctx context.Context, data []byte) (any, error)
}

// Config configures a Store.
type Config struct {
	// Now returns the time written into objects' Meta timestamps. Default
	// time.Now; tests inject a fixed clock for reproducible objects.
	Now func() time.Time
	// Logger receives warnings (a watcher that fell behind). Default: discard,
	// because a library must not write to the host's logs unless asked.
	Logger *slog.Logger
	// WatchBuffer is how many events a watcher may fall behind before it is
	// closed (with ErrWatchOverflow). Default 1<<20: enough for a burst of
	// a million task changes, bounded so a stuck watcher cannot eat the heap.
	WatchBuffer int
}

// Store is the object store: indexed tables of nodes, services, tasks and the
// cluster object. Reads see a consistent snapshot; writes are proposed to the
// Log and become visible only when the log applies them (Apply), on every
// member alike. Objects returned by reads are copies the caller may keep and
// modify; objects in watch events are shared and must not be modified.
type Store struct {
	cfg Config
	db  *memdb.MemDB

	logMu sync.RWMutex
	log   Log

	// pubMu orders commits with watch subscriptions, so ViewAndWatch sees
	// every change after its snapshot exactly once.
	pubMu    sync.Mutex
	watchers map[*watcher]struct{}
	index    uint64 // last applied log index
}

// New returns an empty store. Attach a log with SetLog before writing.
func New(cfg Config) *Store {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.WatchBuffer <= 0 {
		cfg.WatchBuffer = 1 << 20
	}
	db, err := memdb.NewMemDB(schema())
	if err != nil {
		panic(fmt.Sprintf("state: invalid schema: %v", err)) // a programming error, caught by every test
	}
	return &Store{cfg: cfg, db: db, watchers: map[*watcher]struct{}{}}
}

// SetLog attaches the log that Update proposes to.
func (s *Store) SetLog(l Log) {
	s.logMu.Lock()
	s.log = l
	s.logMu.Unlock()
}

// Index returns the log index of the last applied change.
func (s *Store) Index() uint64 {
	s.pubMu.Lock()
	defer s.pubMu.Unlock()
	return s.index
}

// View runs fn with a read transaction over a consistent snapshot.
func (s *Store) View(fn func(ReadTx)) {
	fn(&readTx{txn: s.db.Txn(false)})
}

// Update runs fn with a write transaction. The changes fn makes are visible to
// fn itself at once, and to everyone else only after Update has proposed
// them to the log and the log has applied them; Update returns then. If fn
// returns an error nothing is proposed. If an object fn updated was changed by
// another writer in the meantime, nothing is applied and Update returns
// ErrConflict: read again and retry (see UpdateRetry).
func (s *Store) Update(ctx context.Context, fn func(WriteTx) error) error {
	s.logMu.RLock()
	l := s.log
	s.logMu.RUnlock()
	if l == nil {
		return ErrNoLog
	}
	// The callback runs on a private O(1) snapshot of the tables, so it sees
	// its own writes through every index without holding the database's
	// writer lock, which the apply path needs for every committed entry.
	tx := &writeTx{readTx: readTx{txn: s.db.Snapshot().Txn(true)}, now: s.cfg.Now().UnixNano(), changes: map[changeKey]int{}}
	err := fn(tx)
	tx.txn.Abort()
	if err != nil {
		return err
	}
	req := tx.request()
	if len(req.Actions) == 0 {
		return nil
	}
	data, err := proto.Marshal(req)
	if err != nil {
		return fmt.Errorf("state: encode write: %w", err)
	}
	res, err := l.Propose(ctx, data)
	if err != nil {
		return err
	}
	if res == nil {
		return nil
	}
	if e, ok := res.(error); ok {
		return e
	}
	return fmt.Errorf("state: unexpected apply result %T", res)
}

// UpdateRetry is Update that retries fn up to attempts times while the
// result is ErrConflict.
func (s *Store) UpdateRetry(ctx context.Context, attempts int, fn func(WriteTx) error) error {
	var err error
	for i := 0; i < max(attempts, 1); i++ {
		err = s.Update(ctx, fn)
		if !errors.Is(err, ErrConflict) {
			return err
		}
	}
	return err
}

// applyError is an apply outcome: the write was rejected and changed nothing.
func applyError(format string, args ...any) error { return fmt.Errorf(format, args...) }

// Apply applies one committed log entry. It is the raftstore.StateMachine
// method; its result (nil or an error) goes back to the proposer. Every
// member applies the same entries in the same order and reaches the same
// state: all checks here depend only on the state and the entry.
func (s *Store) Apply(idx uint64, data []byte) any {
	var req api.StoreRequest
	if err := proto.Unmarshal(data, &req); err != nil {
		// An entry this store cannot decode was written by something else; it
		// must not stop the log. Skip it but advance the index.
		s.cfg.Logger.Error("state: skipping undecodable log entry", "index", idx, "err", err)
		s.pubMu.Lock()
		s.index = idx
		s.pubMu.Unlock()
		return fmt.Errorf("state: undecodable entry: %w", err)
	}
	txn := s.db.Txn(true)
	events := make([]Event, 0, len(req.Actions))
	for _, a := range req.Actions {
		ev, err := applyAction(txn, idx, a)
		if err != nil {
			txn.Abort()
			s.pubMu.Lock()
			s.index = idx
			s.pubMu.Unlock()
			return err
		}
		events = append(events, ev)
	}
	s.pubMu.Lock()
	txn.Commit()
	s.index = idx
	s.publish(events)
	s.pubMu.Unlock()
	return nil
}

func actionObject(a *api.StoreAction) (Object, error) {
	switch t := a.Target.(type) {
	case *api.StoreAction_Node:
		return t.Node, nil
	case *api.StoreAction_Service:
		return t.Service, nil
	case *api.StoreAction_Task:
		return t.Task, nil
	case *api.StoreAction_Cluster:
		return t.Cluster, nil
	}
	return nil, fmt.Errorf("state: store action has no object")
}

func applyAction(txn *memdb.Txn, idx uint64, a *api.StoreAction) (Event, error) {
	obj, err := actionObject(a)
	if err != nil {
		return Event{}, err
	}
	kind := KindOf(obj)
	table := kind.table()
	id := obj.GetId()
	raw, err := txn.First(table, indexID, id)
	if err != nil {
		return Event{}, err
	}
	var cur Object
	if raw != nil {
		cur = raw.(Object)
	}
	switch a.Kind {
	case api.StoreAction_KIND_CREATE:
		if cur != nil {
			return Event{}, fmt.Errorf("%s %s: %w", kind, id, ErrExist)
		}
		if err := checkUnique(txn, obj, ""); err != nil {
			return Event{}, err
		}
		o := proto.Clone(obj).(Object)
		m := proto.Clone(o.GetMeta()).(*api.Meta)
		m.Version = idx
		setMeta(o, m)
		if err := txn.Insert(table, o); err != nil {
			return Event{}, err
		}
		return Event{Action: ActionCreate, Kind: kind, Index: idx, Object: o}, nil
	case api.StoreAction_KIND_UPDATE:
		if cur == nil {
			return Event{}, fmt.Errorf("%s %s: %w", kind, id, ErrNotFound)
		}
		if cur.GetMeta().GetVersion() != obj.GetMeta().GetVersion() {
			return Event{}, fmt.Errorf("%s %s: version %d is not the current %d: %w",
				kind, id, obj.GetMeta().GetVersion(), cur.GetMeta().GetVersion(), ErrConflict)
		}
		if err := checkUnique(txn, obj, id); err != nil {
			return Event{}, err
		}
		o := proto.Clone(obj).(Object)
		m := proto.Clone(o.GetMeta()).(*api.Meta)
		m.Version = idx
		m.CreatedAt = cur.GetMeta().GetCreatedAt()
		setMeta(o, m)
		if t, ok := o.(*api.Task); ok {
			// Task state only moves forward: a report that would move it back is
			// late or duplicated, and is ignored.
			old := cur.(*api.Task)
			if t.GetStatus().GetState() < old.GetStatus().GetState() {
				t.Status = old.Status
			}
		}
		if err := txn.Insert(table, o); err != nil {
			return Event{}, err
		}
		return Event{Action: ActionUpdate, Kind: kind, Index: idx, Object: o, Old: cur}, nil
	case api.StoreAction_KIND_DELETE:
		if cur == nil {
			return Event{}, fmt.Errorf("%s %s: %w", kind, id, ErrNotFound)
		}
		if err := txn.Delete(table, cur); err != nil {
			return Event{}, err
		}
		return Event{Action: ActionDelete, Kind: kind, Index: idx, Object: cur}, nil
	}
	return Event{}, fmt.Errorf("state: unknown store action kind %v", a.Kind)
}

// checkUnique enforces unique service names (case-insensitive) and cluster
// names. self is the ID of the object being updated ("" on create).
func checkUnique(txn *memdb.Txn, o Object, self string) error {
	var name string
	switch v := o.(type) {
	case *api.Service:
		name = v.GetSpec().GetName()
	case *api.Cluster:
		name = v.GetSpec().GetName()
	default:
		return nil
	}
	if name == "" {
		return nil
	}
	kind := KindOf(o)
	it, err := txn.Get(kind.table(), indexName, ByName(name).arg)
	if err != nil {
		return err
	}
	for raw := it.Next(); raw != nil; raw = it.Next() {
		if raw.(Object).GetId() != self {
			return fmt.Errorf("%s name %q is used by %s %s: %w", kind, name, kind, raw.(Object).GetId(), ErrExist)
		}
	}
	return nil
}

// Snapshot returns the whole state, encoded. It is the raftstore.StateMachine
// method.
func (s *Store) Snapshot() ([]byte, error) {
	var snap api.StoreSnapshot
	txn := s.db.Txn(false)
	for _, k := range []Kind{KindNode, KindService, KindTask, KindCluster} {
		it, err := txn.Get(k.table(), indexID+"_prefix", "")
		if err != nil {
			return nil, err
		}
		for raw := it.Next(); raw != nil; raw = it.Next() {
			switch v := raw.(type) {
			case *api.Node:
				snap.Nodes = append(snap.Nodes, v)
			case *api.Service:
				snap.Services = append(snap.Services, v)
			case *api.Task:
				snap.Tasks = append(snap.Tasks, v)
			case *api.Cluster:
				snap.Clusters = append(snap.Clusters, v)
			}
		}
	}
	return proto.MarshalOptions{Deterministic: true}.Marshal(&snap)
}

// Restore replaces the whole state with a snapshot taken at log index idx.
// Watchers are closed (their channels close with ErrWatchReset), because
// they cannot be told the difference in events: they view and watch again.
func (s *Store) Restore(idx uint64, data []byte) error {
	var snap api.StoreSnapshot
	if err := proto.Unmarshal(data, &snap); err != nil {
		return fmt.Errorf("state: decode snapshot: %w", err)
	}
	txn := s.db.Txn(true)
	for _, k := range []Kind{KindNode, KindService, KindTask, KindCluster} {
		if _, err := txn.DeleteAll(k.table(), indexID+"_prefix", ""); err != nil {
			txn.Abort()
			return err
		}
	}
	insert := func(table string, o Object) error { return txn.Insert(table, o) }
	for _, o := range snap.Nodes {
		if err := insert(tableNode, o); err != nil {
			txn.Abort()
			return err
		}
	}
	for _, o := range snap.Services {
		if err := insert(tableService, o); err != nil {
			txn.Abort()
			return err
		}
	}
	for _, o := range snap.Tasks {
		if err := insert(tableTask, o); err != nil {
			txn.Abort()
			return err
		}
	}
	for _, o := range snap.Clusters {
		if err := insert(tableCluster, o); err != nil {
			txn.Abort()
			return err
		}
	}
	s.pubMu.Lock()
	txn.Commit()
	s.index = idx
	for w := range s.watchers {
		w.close(ErrWatchReset)
		delete(s.watchers, w)
	}
	s.pubMu.Unlock()
	return nil
}

// Close closes every watcher. The store stays readable.
func (s *Store) Close() {
	s.pubMu.Lock()
	defer s.pubMu.Unlock()
	for w := range s.watchers {
		w.close(ErrStoreClosed)
		delete(s.watchers, w)
	}
}
