package autolock

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/shoalhq/shoal/internal/clock"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/internal/keys"
	"github.com/shoalhq/shoal/internal/lifecycle"
	"github.com/shoalhq/shoal/internal/state"
)

// ErrStarted is returned by Start on a Keeper that was started before: a
// Keeper runs once.
var ErrStarted = errors.New("autolock: already started")

// Store is the part of the object store the Keeper reads; *state.Store
// implements it. Both methods are safe for concurrent use, and the Keeper
// calls them from its own goroutine only.
type Store interface {
	// ViewShared runs fn over a consistent snapshot of the store. The
	// objects fn reads are shared and are not modified by the Keeper.
	ViewShared(fn func(state.ReadTx))
	// Watch returns a watch of the changes applied from now on that pass
	// every filter. Its channel closes when the watch ends (Err says why);
	// the Keeper cancels it when it stops.
	Watch(filters ...state.Filter) *state.Watcher
}

var _ Store = (*state.Store)(nil)

// Keeper keeps the data key file wrapped with the cluster's unlock key while
// autolock is on, and plain while it is off. It owns the current wrap key
// from New on.
type Keeper struct {
	store Store
	cfg   Config
	ready chan struct{} // closed after the first look at the cluster object

	// wrapMu guards wrapped, the unlock key the file is wrapped with (nil:
	// plain). Only the Keeper's goroutine changes it, after a rewrap;
	// Wrapped reads it from any goroutine.
	wrapMu  sync.Mutex
	wrapped []byte

	loop lifecycle.Loop
}

// New returns a Keeper that follows the cluster object cfg.ClusterID in
// store and keeps the file at cfg.DataKeyPath wrapped accordingly. It
// validates cfg and starts nothing; from now on the Keeper holds the current
// wrap key (a copy of cfg.Wrapped).
func New(store Store, cfg Config) (*Keeper, error) {
	if store == nil {
		return nil, fmt.Errorf("autolock: store must not be nil: %w", errdefs.ErrInvalidSpec)
	}
	cfg, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	return &Keeper{
		store:   store,
		cfg:     cfg,
		wrapped: cfg.Wrapped,
		ready:   make(chan struct{}),
	}, nil
}

// Wrapped returns a copy of the unlock key the data key file is wrapped with
// now, as far as the Keeper knows (nil: the file is plain). It is for
// diagnostics and for the node's own bookkeeping; it is safe to call at any
// time from any goroutine.
func (k *Keeper) Wrapped() []byte {
	k.wrapMu.Lock()
	defer k.wrapMu.Unlock()
	return bytes.Clone(k.wrapped)
}

// Start starts following the cluster object and returns; the file is
// brought in line with it at once. The Keeper runs until Stop; ctx only
// bounds the start itself. Start may be called once: again it returns
// ErrStarted, after Stop an error matching errdefs.ErrStopped.
func (k *Keeper) Start(ctx context.Context) error {
	return k.loop.Start(ctx, "autolock", ErrStarted, k.run)
}

// Ready returns a channel closed once the Keeper has first compared the file
// with the cluster object after Start (and rewrapped it if needed, whether
// or not that succeeded).
func (k *Keeper) Ready() <-chan struct{} { return k.ready }

// Stop stops the Keeper and waits, at most until ctx ends, for its goroutine
// to return; a rewrap in progress is finished first (it is one small file
// write). It is idempotent, and safe to call before Start (the Keeper then
// never starts).
func (k *Keeper) Stop(ctx context.Context) error { return k.loop.Stop(ctx) }

// run is the Keeper's goroutine. It looks at the cluster object at start,
// after every change of it, after the watch was started again, and when the
// retry timer fires.
func (k *Keeper) run(ctx context.Context) {
	log := k.cfg.Logger
	var retry clock.Timer // armed while a rewrap or a watch is to be tried again
	defer func() {
		if retry != nil {
			retry.Stop()
		}
	}()
	w := k.watch()
	defer func() {
		if w != nil {
			w.Cancel()
		}
	}()
	failed := k.sync()
	close(k.ready)
	for {
		switch again := failed || w == nil; {
		case again && retry == nil:
			retry = k.cfg.Clock.NewTimer(k.cfg.RetryInterval)
		case !again && retry != nil:
			retry.Stop()
			retry = nil
		}
		var events <-chan state.Event
		if w != nil {
			events = w.C
		}
		var fire <-chan time.Time
		if retry != nil {
			fire = retry.C()
		}
		select {
		case <-ctx.Done():
			return
		case _, ok := <-events:
			if ok {
				break
			}
			err := w.Err()
			w = nil
			if errors.Is(err, state.ErrStoreClosed) {
				log.Warn("autolock: the store closed the watch of the cluster object; watching again later", "err", err)
				break
			}
			// A restore from a snapshot (or a watch that fell behind): the
			// cluster object may have changed unseen; watch again and look.
			log.Info("autolock: watch of the cluster object ended; watching again", "err", err)
			w = k.watch()
		case <-fire:
			retry = nil
			if w == nil {
				w = k.watch()
			}
		}
		failed = k.sync()
	}
}

// watch watches the changes of the cluster object.
func (k *Keeper) watch() *state.Watcher {
	id := k.cfg.ClusterID
	return k.store.Watch(func(e state.Event) bool {
		return e.Kind == state.KindCluster && e.Object.GetId() == id
	})
}

// wanted reads the unlock key the cluster object wants the file wrapped
// with: "" with autolock off. found is false when there is no cluster
// object; on is whether autolock is on.
func (k *Keeper) wanted() (key string, on, found bool) {
	k.store.ViewShared(func(tx state.ReadTx) {
		c := tx.GetCluster(k.cfg.ClusterID)
		if c == nil {
			return
		}
		found, on = true, c.GetSpec().GetAutolock()
		if on {
			key = c.GetUnlockKey()
		}
	})
	return key, on, found
}

// sync brings the file in line with the cluster object. It reports whether
// it failed in a way worth retrying (a rewrap that did not succeed).
func (k *Keeper) sync() (retry bool) {
	log := k.cfg.Logger
	text, on, found := k.wanted()
	if !found {
		return false
	}
	var want []byte
	if on {
		key, err := keys.ParseUnlockKey(text)
		if err != nil {
			log.Error("autolock: the cluster's unlock key is malformed; data key file left as it is", "err", err)
			return false
		}
		want = key
	}
	have := k.Wrapped()
	if bytes.Equal(have, want) {
		return false
	}
	path := k.cfg.DataKeyPath
	if err := keys.RewrapDataKey(path, have, want); err != nil {
		if wrappedWith(path, want) {
			k.setWrapped(want)
			log.Info("autolock: data key file already wrapped as the cluster wants", "autolock", want != nil)
			return false
		}
		log.Error("autolock: rewrapping the data key file failed; trying again later",
			"path", path, "autolock", want != nil, "retry_in", k.cfg.RetryInterval, "err", err)
		return true
	}
	k.setWrapped(want)
	log.Info("autolock: data key file rewrapped", "path", path, "autolock", want != nil)
	return false
}

func (k *Keeper) setWrapped(key []byte) {
	k.wrapMu.Lock()
	defer k.wrapMu.Unlock()
	k.wrapped = key
}

// wrappedWith reports whether the data key file at path is plain (key nil)
// or wrapped with key.
func wrappedWith(path string, key []byte) bool {
	locked, err := keys.IsLocked(path)
	if err != nil || locked != (key != nil) {
		return false
	}
	if key == nil {
		return true
	}
	dek, err := keys.LoadDataKey(path, key)
	clear(dek)
	return err == nil
}
