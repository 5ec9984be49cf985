package state

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"google.golang.org/protobuf/proto"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/clock"
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

// Log is the replicated log the store proposes its writes to, and the
// caller of the store's Apply (and Restore) for every committed entry.
// raftstore.Node implements it; statetest.NewStore makes a store with an
// in-memory one.
//
// The log applies entries one at a time, in log order, from one goroutine at
// a time; Apply takes the store's write lock, so it waits for the View and
// Update callbacks in progress.
type Log interface {
	// Propose appends data to the log and returns, once the entry is committed
	// and applied on this node, what the store's Apply returned for it, so
	// that a View after Update sees the write. If it fails the entry may
	// still commit and be applied later (ctx ended, leadership lost): the
	// store passes that uncertainty on to Update's caller. data belongs to
	// the log from the call on. Propose is safe for concurrent use; the store
	// calls it holding none of its locks.
	Propose(ctx context.Context, data []byte) (any, error)
}

// Config configures a Store.
type Config struct {
	// Clock gives the time written into objects' Meta timestamps. Default
	// (nil) clock.Real(); tests inject a fake clock for reproducible
	// objects. The store reads only its Now: it has no timers.
	Clock clock.Clock
	// Logger receives warnings (a watcher that fell behind). Default: discard,
	// because a library must not write to the host's logs unless asked.
	Logger *slog.Logger
	// WatchBuffer is how many events a watcher may fall behind before it is
	// closed (with ErrWatchOverflow). Default 1<<20: enough for a burst of
	// a million task changes, bounded so a stuck watcher cannot eat the heap.
	WatchBuffer int
	// CheckImmutable turns on the immutability checker, a debug safety net:
	// the store records a digest of every object it stores and Verify (and
	// Close, which logs it) reports any stored object that was modified in
	// place, by kind and ID. Stored objects are shared with watchers and
	// ViewShared readers, so such a modification is a bug. Default false: it
	// costs a marshal and a hash per stored object. Tests turn it on.
	CheckImmutable bool
}

// Store is the object store: indexed tables of nodes, services, tasks and the
// cluster object. Reads see a consistent snapshot; writes are proposed to the
// Log and become visible only when the log applies them (Apply), on every
// member alike. Objects returned by View and Update reads are copies the
// caller may keep and modify; objects from ViewShared and in watch events are
// shared and must not be modified.
//
// A Store is safe for concurrent use by any number of goroutines. View,
// ViewShared, ViewAndWatch and Update callbacks run on the caller's
// goroutine under the store's read lock, which holds up every apply: they
// must be short, must not block, and must not call the Store's methods (see
// ReadTx).
type Store struct {
	cfg Config

	// mu guards the tables, index and recent: readers (View, the callbacks
	// of Update) share it, Apply and Restore take it alone. chk is set by New
	// and never replaced.
	mu     sync.RWMutex
	tables map[Kind]*table
	index  uint64        // last applied log index
	chk    *immutChecker // nil unless Config.CheckImmutable
	recent recentRequests

	logMu sync.RWMutex // guards log
	log   Log

	// pubMu guards watchers. Apply publishes while holding mu, so a
	// subscription made under mu's read lock (ViewAndWatch) sees every change
	// after its snapshot exactly once.
	pubMu    sync.Mutex
	watchers map[*watcher]struct{}
}

// New returns an empty store. Attach a log with SetLog before writing.
func New(cfg Config) *Store {
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.WatchBuffer <= 0 {
		cfg.WatchBuffer = 1 << 20
	}
	s := &Store{cfg: cfg, watchers: map[*watcher]struct{}{}}
	if cfg.CheckImmutable {
		s.chk = newImmutChecker()
	}
	s.tables = newTables(s.chk)
	return s
}

func newTables(chk *immutChecker) map[Kind]*table {
	tables := map[Kind]*table{}
	for kind, defs := range schema() {
		tables[kind] = newTable(kind, defs)
		tables[kind].chk = chk
	}
	return tables
}

// SetLog attaches the log that Update proposes to. It is safe to call at any
// time, concurrently with Update: an Update in progress keeps the log it
// started with.
func (s *Store) SetLog(l Log) {
	s.logMu.Lock()
	s.log = l
	s.logMu.Unlock()
}

// Index returns the log index of the last applied change.
func (s *Store) Index() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.index
}

// View runs fn, on the caller's goroutine, with a read transaction over a
// consistent snapshot, and returns when fn does. The objects it reads are
// copies fn may modify and keep. fn follows ReadTx's rules.
func (s *Store) View(fn func(ReadTx)) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	fn(&readTx{s: s})
}

// ViewShared is View without the copies, for internal read-only callers on
// hot paths (fn follows ReadTx's rules): the objects fn reads are the
// STORED OBJECTS THEMSELVES, shared with every other reader, with watchers
// and with the next snapshot.
//
// THEY MUST NOT BE MODIFIED, NOT EVEN THEIR NESTED MESSAGES, MAPS OR SLICES
// (Spec, Status, Labels, ...), neither in fn nor later: to change an object,
// clone it (proto.Clone) and write the clone. fn and its callers may keep
// them after fn returns (they never change: a write stores a new object), but
// must not hand them to code that may modify them. When in doubt, use View.
// Tests catch violations with Config.CheckImmutable and Verify.
func (s *Store) ViewShared(fn func(ReadTx)) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	fn(&readTx{s: s, shared: true})
}

// Update runs fn, once, on the caller's goroutine, with a write transaction
// (fn follows ReadTx's rules). The changes fn makes are visible to fn itself
// at once, and to everyone else only after Update has proposed them to the
// log and the log has applied them; Update returns then. If fn returns an
// error nothing is proposed and Update returns it; if fn changes nothing,
// nothing is proposed. If an object fn updated was changed by another writer
// in the meantime, nothing is applied and Update returns ErrConflict: read
// again and retry (see UpdateRetry).
//
// An error from the log itself (ctx ended, no quorum, leadership lost: see
// the Log's Propose) does not mean that nothing was written: the entry may
// still be applied later. Such a caller reads again before deciding. Update
// is safe for concurrent use; concurrent writes are ordered by the log.
func (s *Store) Update(ctx context.Context, fn func(WriteTx) error) error {
	s.logMu.RLock()
	l := s.log
	s.logMu.RUnlock()
	if l == nil {
		return ErrNoLog
	}
	tx := newWriteTx(s, s.cfg.Clock.Now().UnixNano())
	s.mu.RLock()
	err := fn(tx)
	s.mu.RUnlock()
	if err != nil {
		return err
	}
	req := tx.request()
	if len(req.Actions) == 0 {
		return nil
	}
	req.RequestId = make([]byte, 16)
	if _, err := rand.Read(req.RequestId); err != nil {
		return fmt.Errorf("state: request ID: %w", err)
	}
	var res any
	if rl, ok := l.(RequestLog); ok {
		res, err = rl.ProposeRequest(ctx, req)
	} else {
		var data []byte
		if data, err = proto.Marshal(req); err != nil {
			return fmt.Errorf("state: encode write: %w", err)
		}
		res, err = l.Propose(ctx, data)
	}
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

// barrierLog is a log that can make reads linearizable (raftstore.Node).
// ReadBarrier is safe for concurrent use; the store calls it holding none of
// its locks.
type barrierLog interface {
	ReadBarrier(ctx context.Context) (uint64, error)
}

// ReadBarrier returns once this store has applied every write committed
// before the call, so a View after it sees them (a linearizable read). On a
// log without the capability (the in-memory log, where every write is
// applied before Update returns) it returns at once. Without a quorum it
// fails (errors.Is ErrNoQuorum); the caller may still View, knowing the
// result may be stale.
func (s *Store) ReadBarrier(ctx context.Context) error {
	s.logMu.RLock()
	l := s.log
	s.logMu.RUnlock()
	if b, ok := l.(barrierLog); ok {
		_, err := b.ReadBarrier(ctx)
		return err
	}
	return ctx.Err()
}

// UpdateRetry is Update that retries fn up to attempts times while the
// result is ErrConflict. fn may run several times, each time on a fresh
// transaction: it must read what it changes through the transaction it is
// given, and must not depend on side effects of its earlier runs.
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

// recentWindow is how many request IDs the store remembers. A duplicate
// arrives within a few retries of the original, long before this many other
// writes; 65,536 IDs cost about 2 MiB.
const recentWindow = 1 << 16

// recentRequests remembers the outcome of the last recentWindow requests.
// It only decides what a duplicate entry returns: applying a duplicate again
// would change nothing anyway (its version checks fail), so members that
// lost the table in a restore still reach the same state.
type recentRequests struct {
	results map[string]error
	order   []string // ring of IDs, oldest at next
	next    int
}

func (r *recentRequests) lookup(id []byte) (error, bool) {
	if len(id) == 0 || r.results == nil {
		return nil, false
	}
	res, ok := r.results[string(id)]
	return res, ok
}

func (r *recentRequests) add(id []byte, res error) {
	if len(id) == 0 {
		return
	}
	if r.results == nil {
		r.results = make(map[string]error, 1024)
		r.order = make([]string, 0, 1024)
	}
	key := string(id)
	if len(r.order) < recentWindow {
		r.order = append(r.order, key)
	} else {
		delete(r.results, r.order[r.next])
		r.order[r.next] = key
		r.next = (r.next + 1) % recentWindow
	}
	r.results[key] = res
}

// undo records how to revert one applied action.
type undo struct {
	kind Kind
	id   string
	old  Object // nil: the action created the object
}

// Apply applies one committed log entry. It is the raftstore.StateMachine
// method; its result (nil or an error) goes back to the proposer. Every
// member applies the same entries in the same order and reaches the same
// state: all checks here depend only on the state and the entry, and an
// entry that fails a check changes nothing.
//
// The log calls Apply, ApplyRequest and Restore from one goroutine at a time,
// with increasing indexes. Apply takes the store's write lock (it waits for
// the read callbacks in progress) and publishes the entry's events to the
// watchers before it returns; it does not wait for watchers to receive them.
func (s *Store) Apply(idx uint64, data []byte) any {
	var req api.StoreRequest
	if err := proto.Unmarshal(data, &req); err != nil {
		// An entry this store cannot decode must not stop the log: skip it but
		// advance the index.
		s.cfg.Logger.Error("state: skipping undecodable log entry", "index", idx, "err", err)
		s.mu.Lock()
		s.index = idx
		s.mu.Unlock()
		return fmt.Errorf("state: undecodable entry: %w", err)
	}
	return s.applyRequest(idx, &req)
}

// RequestLog is a Log whose entries never leave the process (statetest's
// in-memory log), so it needs no encoding. When the attached Log implements
// it, Update calls ProposeRequest instead of Propose and saves a marshal and
// an unmarshal per write.
type RequestLog interface {
	Log
	// ProposeRequest is Propose for a request that is not encoded: it
	// appends req to the log and, once it is applied on this node by
	// Store.ApplyRequest, returns what that returned. req and every object in
	// it belong to the log from the call on, and become stored objects: no
	// one may modify them afterwards. It is safe for concurrent use.
	ProposeRequest(ctx context.Context, req *api.StoreRequest) (any, error)
}

// ApplyRequest is Apply for an entry that is already decoded, the apply half
// of a RequestLog. The objects in req are stored as they are, not copied:
// the caller hands them over and must not modify them afterwards. Like
// Apply, it must be called with increasing indexes, one entry at a time.
func (s *Store) ApplyRequest(idx uint64, req *api.StoreRequest) any {
	return s.applyRequest(idx, req)
}

func (s *Store) applyRequest(idx uint64, req *api.StoreRequest) any {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.index = idx
	if res, dup := s.recent.lookup(req.RequestId); dup {
		return res
	}
	res := s.applyActions(idx, req)
	s.recent.add(req.RequestId, res)
	return res
}

// applyActions applies the actions of one entry, all or nothing (mu held).
func (s *Store) applyActions(idx uint64, req *api.StoreRequest) error {
	s.reserve(req)
	events := make([]Event, 0, len(req.Actions))
	undos := make([]undo, 0, len(req.Actions))
	for _, a := range req.Actions {
		ev, u, err := s.applyAction(idx, a)
		if err != nil {
			for i := len(undos) - 1; i >= 0; i-- {
				t := s.tables[undos[i].kind]
				if undos[i].old == nil {
					t.del(undos[i].id)
				} else {
					t.put(undos[i].old)
				}
			}
			return err
		}
		undos = append(undos, u)
		events = append(events, ev)
	}
	s.publish(events)
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

// applyAction applies one action to the tables (mu held). The decoded object
// is stored as it is: it belongs to this entry alone.
func (s *Store) applyAction(idx uint64, a *api.StoreAction) (Event, undo, error) {
	o, err := actionObject(a)
	if err != nil {
		return Event{}, undo{}, err
	}
	kind := KindOf(o)
	t := s.tables[kind]
	id := o.GetId()
	if id == "" {
		return Event{}, undo{}, fmt.Errorf("state: %s has no ID", kind)
	}
	cur := t.get(id)
	switch a.Kind {
	case api.StoreAction_KIND_CREATE:
		if cur != nil {
			return Event{}, undo{}, fmt.Errorf("%s %s: %w", kind, id, ErrExist)
		}
		if err := s.checkUnique(t, o, ""); err != nil {
			return Event{}, undo{}, err
		}
		m := o.GetMeta()
		if m == nil {
			m = &api.Meta{}
			setMeta(o, m)
		}
		m.Version = idx
		t.put(o)
		return Event{Action: ActionCreate, Kind: kind, Index: idx, Object: o}, undo{kind: kind, id: id}, nil
	case api.StoreAction_KIND_UPDATE:
		if cur == nil {
			return Event{}, undo{}, fmt.Errorf("%s %s: %w", kind, id, ErrNotFound)
		}
		if cur.GetMeta().GetVersion() != o.GetMeta().GetVersion() {
			return Event{}, undo{}, fmt.Errorf("%s %s: version %d is not the current %d: %w",
				kind, id, o.GetMeta().GetVersion(), cur.GetMeta().GetVersion(), ErrConflict)
		}
		if err := s.checkUnique(t, o, id); err != nil {
			return Event{}, undo{}, err
		}
		m := o.GetMeta()
		if m == nil {
			m = &api.Meta{}
			setMeta(o, m)
		}
		m.Version = idx
		m.CreatedAt = cur.GetMeta().GetCreatedAt()
		if nt, ok := o.(*api.Task); ok {
			// Task state only moves forward: a report that would move it back is
			// late or duplicated, and is ignored.
			if old := cur.(*api.Task); nt.GetStatus().GetState() < old.GetStatus().GetState() {
				nt.Status = old.Status
			}
		}
		t.put(o)
		return Event{Action: ActionUpdate, Kind: kind, Index: idx, Object: o, Old: cur}, undo{kind: kind, id: id, old: cur}, nil
	case api.StoreAction_KIND_DELETE:
		if cur == nil {
			return Event{}, undo{}, fmt.Errorf("%s %s: %w", kind, id, ErrNotFound)
		}
		t.del(id)
		return Event{Action: ActionDelete, Kind: kind, Index: idx, Object: cur}, undo{kind: kind, id: id, old: cur}, nil
	}
	return Event{}, undo{}, fmt.Errorf("state: unknown store action kind %v", a.Kind)
}

// reserve grows a table's maps ahead of an entry that creates many objects
// (a bulk create of tasks or nodes), instead of letting them rehash many
// times while the entry is applied.
func (s *Store) reserve(req *api.StoreRequest) {
	if len(req.Actions) < 1024 {
		return
	}
	creates := map[Kind]int{}
	for _, a := range req.Actions {
		if a.Kind == api.StoreAction_KIND_CREATE {
			if o, err := actionObject(a); err == nil {
				creates[KindOf(o)]++
			}
		}
	}
	for kind, n := range creates {
		if t := s.tables[kind]; t != nil && n > len(t.objs) {
			t.grow(n)
		}
	}
}

// uniqueName returns the name that must be unique for o's kind.
func uniqueName(o Object) (string, bool) {
	switch v := o.(type) {
	case *api.Service:
		return v.GetSpec().GetName(), v.GetSpec().GetName() != ""
	case *api.Cluster:
		return v.GetSpec().GetName(), v.GetSpec().GetName() != ""
	}
	return "", false
}

func nameTaken(kind Kind, name, by string) error {
	return fmt.Errorf("%s name %q is used by %s %s: %w", kind, name, kind, by, ErrExist)
}

// checkUnique enforces unique service and cluster names (case-insensitive)
// and, for services, unique ingress published ports, at apply time. self is
// the ID being written ("" on create). Two managers may allocate the same
// free port for two writes at once: the second to apply fails here with
// ErrConflict, and its writer plans again.
func (s *Store) checkUnique(t *table, o Object, self string) error {
	if t.kind == KindService {
		for _, k := range publishedPorts(o) {
			for id := range t.idx[indexPublished][k] {
				if id != self {
					return fmt.Errorf("published port %s is already used by service %s: %w", k, id, ErrConflict)
				}
			}
		}
	}
	return s.checkUniqueName(t, o, self)
}

func (s *Store) checkUniqueName(t *table, o Object, self string) error {
	name, ok := uniqueName(o)
	if !ok {
		return nil
	}
	set := map[string]struct{}{}
	t.candidates(ByName(name), set)
	for id := range set {
		if id != self {
			return nameTaken(t.kind, name, id)
		}
	}
	return nil
}

// Snapshot returns the whole state, encoded. It is the raftstore.StateMachine
// method; it is CaptureSnapshot()().
func (s *Store) Snapshot() ([]byte, error) {
	return s.CaptureSnapshot()()
}

// CaptureSnapshot captures the whole state at this moment and returns a
// function that encodes it, exactly as Snapshot does. It is the raftstore
// SnapshotCapturer method: the raft loop calls it right after applying
// entries, so it is cheap (under the read lock it only copies the tables'
// object pointers, O(n), no encoding), and the returned function does the
// sorting and encoding, on any goroutine, concurrently with later Apply
// calls: that is safe because stored objects are never modified (a write
// stores a new object), so the captured ones keep the state of the moment.
// The function may be called more than once.
func (s *Store) CaptureSnapshot() func() ([]byte, error) {
	var c capture
	s.mu.RLock()
	c.nodes = objects(s.tables[KindNode])
	c.services = objects(s.tables[KindService])
	c.tasks = objects(s.tables[KindTask])
	c.clusters = objects(s.tables[KindCluster])
	s.mu.RUnlock()
	var once sync.Once
	return func() ([]byte, error) {
		once.Do(c.sort) // sorting in place: once, even with concurrent calls
		return c.encode()
	}
}

// capture is the state at one moment: the stored objects of each kind.
type capture struct {
	nodes, services, tasks, clusters []Object
}

func objects(t *table) []Object {
	out := make([]Object, 0, len(t.objs))
	for _, o := range t.objs {
		out = append(out, o)
	}
	return out
}

func byID(a, b Object) int { return strings.Compare(a.GetId(), b.GetId()) }

func (c *capture) sort() {
	for _, objs := range [][]Object{c.nodes, c.services, c.tasks, c.clusters} {
		slices.SortFunc(objs, byID)
	}
}

// encode returns the captured objects as a deterministic api.StoreSnapshot,
// each kind sorted by ID, so members with the same state produce the same
// bytes. (Deterministic only costs anything for map fields, the labels:
// their keys are sorted.)
func (c *capture) encode() ([]byte, error) {
	snap := api.StoreSnapshot{
		Nodes:    make([]*api.Node, len(c.nodes)),
		Services: make([]*api.Service, len(c.services)),
		Tasks:    make([]*api.Task, len(c.tasks)),
		Clusters: make([]*api.Cluster, len(c.clusters)),
	}
	for i, o := range c.nodes {
		snap.Nodes[i] = o.(*api.Node)
	}
	for i, o := range c.services {
		snap.Services[i] = o.(*api.Service)
	}
	for i, o := range c.tasks {
		snap.Tasks[i] = o.(*api.Task)
	}
	for i, o := range c.clusters {
		snap.Clusters[i] = o.(*api.Cluster)
	}
	return proto.MarshalOptions{Deterministic: true}.Marshal(&snap)
}

// Restore replaces the whole state with a snapshot taken at log index idx.
// Watchers are closed (their channels close with ErrWatchReset), because
// they cannot be told the difference in events: they view and watch again.
// A snapshot that does not decode changes nothing. The log calls it as it
// calls Apply (see there); it takes the store's write lock.
func (s *Store) Restore(idx uint64, data []byte) error {
	var snap api.StoreSnapshot
	if err := proto.Unmarshal(data, &snap); err != nil {
		return fmt.Errorf("state: decode snapshot: %w", err)
	}
	tables := newTables(nil)
	for _, o := range snap.Nodes {
		tables[KindNode].put(o)
	}
	for _, o := range snap.Services {
		tables[KindService].put(o)
	}
	for _, o := range snap.Tasks {
		tables[KindTask].put(o)
	}
	for _, o := range snap.Clusters {
		tables[KindCluster].put(o)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.chk != nil {
		s.chk.retireAll()
		for _, t := range tables {
			t.chk = s.chk
			for _, o := range t.objs {
				s.chk.stored(t.kind, nil, o)
			}
		}
	}
	s.tables = tables
	s.index = idx
	s.pubMu.Lock()
	for w := range s.watchers {
		w.close(ErrWatchReset)
		delete(s.watchers, w)
	}
	s.pubMu.Unlock()
	return nil
}

// Close closes every watcher (their channels close with ErrStoreClosed).
// The store stays readable and writable; watches started afterwards work as
// before. Close is safe to call more than once and from any goroutine. With
// Config.CheckImmutable it also runs Verify and logs any violation at error
// level.
func (s *Store) Close() {
	s.pubMu.Lock()
	for w := range s.watchers {
		w.close(ErrStoreClosed)
		delete(s.watchers, w)
	}
	s.pubMu.Unlock()
	if err := s.Verify(); err != nil {
		s.cfg.Logger.Error("state: stored objects were modified in place", "err", err)
	}
}
