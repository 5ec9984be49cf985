package image

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"
)

// GCResult is what a GC removed.
type GCResult struct {
	// Images are the manifest digests of the removed images.
	Images []string
	// Layers counts the removed layers, Bytes their size.
	Layers int
	Bytes  int64
}

// GC removes the images no lease holds that Config.GC says to remove:
// those unused for MaxUnusedAge, then, while the layers take more than
// MaxBytes, the least recently used. It removes every layer no remaining
// image uses (layers an image keeps stay, and so do layers a pull or mount
// in progress needs). Age is measured with Config.Now.
func (s *Store) GC(ctx context.Context) (GCResult, error) {
	if err := ctx.Err(); err != nil {
		return GCResult{}, err
	}
	if err := s.open(); err != nil {
		return GCResult{}, err
	}
	var res GCResult
	var doomed []string
	s.mu.Lock()
	s.flushTouchedLocked()
	now := s.now()
	leased := s.leasedImagesLocked()
	var candidates []*imageRecord
	for _, rec := range s.sortedImagesLocked() {
		if !leased[rec.Digest] {
			candidates = append(candidates, rec)
		}
	}
	sort.SliceStable(candidates, func(i, j int) bool { return candidates[i].LastUsed.Before(candidates[j].LastUsed) })
	remove := make(map[string]bool)
	if age := s.cfg.GC.MaxUnusedAge; age > 0 {
		for _, rec := range candidates {
			if now.Sub(rec.LastUsed) >= age {
				remove[rec.Digest] = true
			}
		}
	}
	if budget := s.cfg.GC.MaxBytes; budget > 0 {
		for _, rec := range candidates {
			if s.keptBytesLocked(remove) <= budget {
				break
			}
			remove[rec.Digest] = true
		}
	}
	for _, rec := range candidates {
		if !remove[rec.Digest] {
			continue
		}
		if err := os.Remove(filepath.Join(s.imagesDir(), hexOf(rec.Digest)+".json")); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.mu.Unlock()
			return res, fmt.Errorf("image: gc: %w", err)
		}
		delete(s.images, rec.Digest)
		for _, r := range rec.Refs {
			if s.refs[r] == rec.Digest {
				delete(s.refs, r)
			}
		}
		res.Images = append(res.Images, rec.Digest)
	}
	used := s.usedLayersLocked()
	ids := make([]string, 0, len(s.layers))
	for id := range s.layers {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		if used[id] || s.pins[id] > 0 {
			continue
		}
		// Out of layers/ at once, so no pull sees it as present; the
		// deletion itself happens without the lock.
		tmp, err := os.MkdirTemp(s.tmpDir(), "gc-")
		if err == nil {
			err = os.Rename(s.layerDir(id), filepath.Join(tmp, "layer"))
		}
		if err != nil {
			s.mu.Unlock()
			return res, fmt.Errorf("image: gc: %w", err)
		}
		res.Layers++
		res.Bytes += s.layers[id].Size
		delete(s.layers, id)
		doomed = append(doomed, tmp)
	}
	s.mu.Unlock()
	for _, d := range doomed {
		if err := os.RemoveAll(d); err != nil {
			return res, fmt.Errorf("image: gc: %w", err)
		}
	}
	if len(res.Images) > 0 || res.Layers > 0 {
		s.log.Info("image gc", "images", len(res.Images), "layers", res.Layers, "bytes", res.Bytes)
	}
	return res, nil
}

// usedLayersLocked returns the layers of the images in the store. The
// caller holds mu.
func (s *Store) usedLayersLocked() map[string]bool {
	used := make(map[string]bool)
	for _, rec := range s.images {
		for _, l := range rec.Layers {
			used[l] = true
		}
	}
	return used
}

// keptBytesLocked sums the layers the images not in remove use, and those
// pinned. The caller holds mu.
func (s *Store) keptBytesLocked(remove map[string]bool) int64 {
	kept := make(map[string]bool)
	for d, rec := range s.images {
		if remove[d] {
			continue
		}
		for _, l := range rec.Layers {
			kept[l] = true
		}
	}
	for l := range s.pins {
		kept[l] = true
	}
	var n int64
	for l := range kept {
		n += s.layers[l].Size
	}
	return n
}

// Start runs GC every Config.GCInterval (if it is not 0) until ctx ends or
// Close is called; Close waits for the loop. A failed GC is logged and
// tried again at the next interval. Start may be called once.
func (s *Store) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return ErrClosed
	case s.started:
		return errors.New("image: Start called twice")
	}
	s.started = true
	if s.cfg.GCInterval == 0 {
		return nil
	}
	s.wg.Add(1)
	go s.gcLoop(ctx)
	return nil
}

func (s *Store) gcLoop(ctx context.Context) {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.GCInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.ctx.Done():
			return
		case <-t.C:
			if _, err := s.GC(s.ctx); err != nil && s.ctx.Err() == nil {
				s.log.Warn("image gc failed", "err", err)
			}
		}
	}
}
