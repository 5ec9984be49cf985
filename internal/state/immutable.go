package state

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"

	"google.golang.org/protobuf/proto"
)

// retiredWindow is how many replaced or deleted objects the immutability
// checker keeps watching after they left the tables: a reader that kept a
// shared object may still modify it by mistake after a write replaced it.
// Tests write far fewer objects than this; the bound keeps a long test's
// memory flat.
const retiredWindow = 1 << 16

// immutChecker is the debug safety net behind Config.CheckImmutable: it
// records a digest of every object the moment it is stored and checks later
// that the object still has it. Stored objects are shared with watchers and
// with ViewShared readers, so a modification in place would change what
// every other reader (and the next snapshot) sees without going through the
// log; the checker turns such a bug into an error naming the object.
//
// The tables call it while the store's write lock is held; Verify holds the
// read lock. Its own mutex guards its state, so concurrent Verify calls are
// safe too.
type immutChecker struct {
	mu      sync.Mutex
	live    map[checkKey]checked
	retired []checked // ring of objects that left the tables, oldest at next
	next    int
	// violations are the modifications found so far, each reported once.
	violations []error
}

type checkKey struct {
	kind Kind
	id   string
}

type checked struct {
	kind Kind
	obj  Object
	sum  [sha256.Size]byte
}

func newImmutChecker() *immutChecker {
	return &immutChecker{live: map[checkKey]checked{}}
}

func digest(o Object) [sha256.Size]byte {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(o)
	if err != nil {
		// Not expected for these messages; a digest of the error text still
		// changes if the object does.
		b = []byte(err.Error())
	}
	return sha256.Sum256(b)
}

// check compares c's object with its digest; on a difference it records a
// violation and adopts the new digest, so each modification is reported once.
func (k *immutChecker) check(c *checked) {
	if sum := digest(c.obj); sum != c.sum {
		k.violations = append(k.violations, fmt.Errorf(
			"state: stored %s %s (version %d) was modified in place after it was stored; clone it (proto.Clone) and write the clone",
			c.kind, c.obj.GetId(), c.obj.GetMeta().GetVersion()))
		c.sum = sum
	}
}

// stored records o, just put into its table, replacing old (nil when o is
// new).
func (k *immutChecker) stored(kind Kind, old, o Object) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if old != nil {
		k.retire(kind, old)
	}
	k.live[checkKey{kind, o.GetId()}] = checked{kind: kind, obj: o, sum: digest(o)}
}

// removed records that old left its table.
func (k *immutChecker) removed(kind Kind, old Object) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.retire(kind, old)
}

// retire checks the live entry of old and moves it to the retired ring
// (mu held).
func (k *immutChecker) retire(kind Kind, old Object) {
	key := checkKey{kind, old.GetId()}
	c, ok := k.live[key]
	if !ok || c.obj != old {
		return
	}
	delete(k.live, key)
	k.check(&c)
	if len(k.retired) < retiredWindow {
		k.retired = append(k.retired, c)
		return
	}
	k.check(&k.retired[k.next])
	k.retired[k.next] = c
	k.next = (k.next + 1) % retiredWindow
}

// retireAll retires every live entry (a restore replaced the tables).
func (k *immutChecker) retireAll() {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, c := range k.live {
		k.retire(c.kind, c.obj)
	}
}

// verify checks every watched object and returns every violation found so
// far, joined; nil when there is none.
func (k *immutChecker) verify() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	for key, c := range k.live {
		k.check(&c)
		k.live[key] = c
	}
	for i := range k.retired {
		k.check(&k.retired[i])
	}
	return errors.Join(k.violations...)
}

// Verify checks that no stored object was modified in place since it was
// stored (including objects replaced or deleted since, up to the last
// 65,536). It needs Config.CheckImmutable; without it, it returns nil. The
// error names the kind and ID of every object found modified; each
// modification is reported by every later Verify too. Safe for concurrent
// use.
func (s *Store) Verify() error {
	if s.chk == nil {
		return nil
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.chk.verify()
}
