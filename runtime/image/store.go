package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// Image is an image in the store.
type Image struct {
	// Ref is the reference it was pulled or loaded as, normalized
	// ("docker.io/library/nginx:1.13"); "" for an image loaded without a
	// name.
	Ref string
	// Digest is the manifest digest "sha256:...". An image loaded from a
	// docker save tarball, which carries no manifest, has its ID here.
	Digest string
	// ID is the digest of the image's config.
	ID string
	// Config is what the image says about running it.
	Config ImageConfig
	// Layers are the diff IDs (digests of the uncompressed layers), lowest
	// first.
	Layers []string
	// Size is the bytes of the unpacked layers' regular files.
	Size int64
}

// ImageConfig is the part of an image's config that says how to run it
// (the "config" object of the OCI image config).
type ImageConfig struct {
	Entrypoint []string
	Cmd        []string
	// Env are "KEY=value" pairs.
	Env        []string
	WorkingDir string
	User       string
	StopSignal string
	// ExposedPorts are "port/proto" ("80/tcp"), sorted.
	ExposedPorts []string
	Labels       map[string]string
	// Volumes are the container paths the image declares as volumes,
	// sorted.
	Volumes     []string
	Healthcheck *Healthcheck
}

// Healthcheck is an image's HEALTHCHECK. Zero durations and Retries mean
// the runtime's defaults; Test {"NONE"} disables a check.
type Healthcheck struct {
	// Test is {"CMD", args...}, {"CMD-SHELL", command} or {"NONE"}.
	Test          []string
	Interval      time.Duration
	Timeout       time.Duration
	StartPeriod   time.Duration
	StartInterval time.Duration
	Retries       int
}

// Store is an image store on disk: images by digest and reference, their
// unpacked layers, and the root filesystems of containers. Its methods are
// safe for concurrent use. One Store uses a Dir at a time (a lock file
// enforces it).
type Store struct {
	cfg       Config
	log       *slog.Logger
	now       func() time.Time
	transport http.RoundTripper
	downloads int

	// ctx ends when Close is called; every pull and the GC loop run under
	// it, and wg counts their goroutines.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// mountFn mounts overlayfs (mountOverlay; tests replace it to fail).
	mountFn func(lowers []string, upper, work, target string) error

	pulls  *flightGroup[*Image]
	layerF *flightGroup[layerInfo]
	ids    keyedMutex

	mu sync.Mutex
	// The fields below are guarded by mu.
	// opened says the store's directories exist and its records are
	// loaded; a failed open is tried again by the next call.
	opened  bool
	closed  bool
	started bool
	lock    *os.File
	format  whiteoutFormat
	images  map[string]*imageRecord // by manifest digest
	refs    map[string]string       // normalized reference → manifest digest
	layers  map[string]layerInfo    // complete layers on disk, by diff ID
	pins    map[string]int          // diff ID → operations in progress needing it
	leases  map[string]*lease       // by container id
	// touched are the images whose LastUsed changed since their record
	// was written: written by GC and Close, so that a container's start
	// writes no image record.
	touched map[string]bool
}

// imageRecord is an image as stored in images/<hex>.json.
type imageRecord struct {
	Refs        []string    `json:"refs,omitempty"`
	Digest      string      `json:"digest"`
	IndexDigest string      `json:"indexDigest,omitempty"`
	ID          string      `json:"id"`
	Config      ImageConfig `json:"config"`
	Layers      []string    `json:"layers"`
	Size        int64       `json:"size"`
	LastUsed    time.Time   `json:"lastUsed"`
}

// layerInfo is a complete layer as stored in layers/<hex>/layer.json.
type layerInfo struct {
	DiffID string         `json:"diffID"`
	Size   int64          `json:"size"`
	Format whiteoutFormat `json:"format"`
}

// lease is a container's root filesystem, in containers/<id>/lease.json.
type lease struct {
	ID    string    `json:"id"`
	Image string    `json:"image"` // manifest digest
	Mode  mountMode `json:"mode"`
	// Complete says a copy-mode rootfs is fully copied.
	Complete bool      `json:"complete,omitempty"`
	Created  time.Time `json:"created"`
}

type mountMode string

const (
	modeOverlay mountMode = "overlay"
	modeCopy    mountMode = "copy"
)

// New validates cfg and returns a store over cfg.Dir. It creates nothing:
// the directories are made, and the records read, on first use.
func New(cfg Config) (*Store, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if err := platformError(); err != nil {
		return nil, err
	}
	cfg.Dir = filepath.Clean(cfg.Dir)
	cfg.InsecureRegistries = slices.Clone(cfg.InsecureRegistries)
	if cfg.Platform == (Platform{}) {
		cfg.Platform = DefaultPlatform()
	}
	s := &Store{cfg: cfg, log: cfg.Logger, now: cfg.Now, downloads: cfg.MaxConcurrentDownloads}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.downloads == 0 {
		s.downloads = DefaultMaxConcurrentDownloads
	}
	s.transport = guardTransport(cfg.Transport, cfg.InsecureRegistries)
	s.mountFn = mountOverlay
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.pulls = newFlightGroup[*Image](s.ctx, &s.wg)
	s.layerF = newFlightGroup[layerInfo](s.ctx, &s.wg)
	return s, nil
}

// Close ends the store's background work (the GC loop, pulls in progress,
// which fail with ErrClosed) and waits for it, then releases Dir. Mounted
// root filesystems stay mounted and their leases stay on disk. Close is
// idempotent.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.pulls.quiesce()
	s.layerF.quiesce()
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.flushTouchedLocked()
	if s.lock != nil {
		err := s.lock.Close()
		s.lock = nil
		return err
	}
	return nil
}

// Directories under Dir.
func (s *Store) tmpDir() string            { return filepath.Join(s.cfg.Dir, "tmp") }
func (s *Store) layersDir() string         { return filepath.Join(s.cfg.Dir, "layers") }
func (s *Store) imagesDir() string         { return filepath.Join(s.cfg.Dir, "images") }
func (s *Store) containersDir() string     { return filepath.Join(s.cfg.Dir, "containers") }
func (s *Store) layerDir(id string) string { return filepath.Join(s.layersDir(), hexOf(id)) }
func (s *Store) layerFS(id string) string  { return filepath.Join(s.layerDir(id), "fs") }
func (s *Store) containerDir(id string) string {
	return filepath.Join(s.containersDir(), id)
}

// hexOf strips the algorithm from a digest.
func hexOf(d string) string {
	_, h, ok := strings.Cut(d, ":")
	if !ok {
		return d
	}
	return h
}

// open makes the store's directories, takes its lock, removes what crashed
// operations left in tmp, and loads the records, once. Callers hold no lock.
func (s *Store) open() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.openLocked()
}

func (s *Store) openLocked() error {
	if s.closed {
		return ErrClosed
	}
	if s.opened {
		return nil
	}
	for _, d := range []string{s.cfg.Dir, s.tmpDir(), s.layersDir(), s.imagesDir(), s.containersDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("image: store directory: %w", err)
		}
	}
	lock, err := lockDir(filepath.Join(s.cfg.Dir, "lock"))
	if err != nil {
		return fmt.Errorf("image: %s: %w", s.cfg.Dir, err)
	}
	if err := emptyDir(s.tmpDir()); err != nil {
		lock.Close()
		return fmt.Errorf("image: clearing %s: %w", s.tmpDir(), err)
	}
	format := probeWhiteoutFormat(s.tmpDir())
	layers, err := s.loadLayers()
	if err != nil {
		lock.Close()
		return err
	}
	images, refs, err := s.loadImages(layers)
	if err != nil {
		lock.Close()
		return err
	}
	leases, err := s.loadLeases()
	if err != nil {
		lock.Close()
		return err
	}
	s.lock, s.format, s.layers, s.images, s.refs, s.leases = lock, format, layers, images, refs, leases
	s.pins = make(map[string]int)
	s.opened = true
	s.log.Debug("image store opened", "dir", s.cfg.Dir, "images", len(images), "layers", len(layers), "leases", len(leases), "whiteouts", string(format))
	return nil
}

// loadLayers reads layers/*/layer.json. A directory without a valid record
// is not a layer (the record is written before the directory is renamed into
// place); it is removed.
func (s *Store) loadLayers() (map[string]layerInfo, error) {
	out := make(map[string]layerInfo)
	entries, err := os.ReadDir(s.layersDir())
	if err != nil {
		return nil, fmt.Errorf("image: reading layers: %w", err)
	}
	for _, e := range entries {
		var li layerInfo
		p := filepath.Join(s.layersDir(), e.Name())
		if err := readJSON(filepath.Join(p, "layer.json"), &li); err != nil || hexOf(li.DiffID) != e.Name() {
			s.log.Warn("removing an incomplete layer", "dir", p, "err", err)
			if err := os.RemoveAll(p); err != nil {
				return nil, fmt.Errorf("image: removing incomplete layer: %w", err)
			}
			continue
		}
		out[li.DiffID] = li
	}
	return out, nil
}

// loadImages reads images/*.json; records whose layers are gone are
// removed.
func (s *Store) loadImages(layers map[string]layerInfo) (map[string]*imageRecord, map[string]string, error) {
	images := make(map[string]*imageRecord)
	refs := make(map[string]string)
	entries, err := os.ReadDir(s.imagesDir())
	if err != nil {
		return nil, nil, fmt.Errorf("image: reading images: %w", err)
	}
	for _, e := range entries {
		p := filepath.Join(s.imagesDir(), e.Name())
		if !strings.HasSuffix(e.Name(), ".json") {
			os.Remove(p)
			continue
		}
		rec := new(imageRecord)
		err := readJSON(p, rec)
		if err == nil {
			for _, l := range rec.Layers {
				if _, ok := layers[l]; !ok {
					err = fmt.Errorf("layer %s is missing", l)
				}
			}
		}
		if err != nil {
			s.log.Warn("removing a broken image record", "file", p, "err", err)
			os.Remove(p)
			continue
		}
		images[rec.Digest] = rec
		for _, r := range rec.Refs {
			refs[r] = rec.Digest
		}
	}
	return images, refs, nil
}

func (s *Store) loadLeases() (map[string]*lease, error) {
	out := make(map[string]*lease)
	entries, err := os.ReadDir(s.containersDir())
	if err != nil {
		return nil, fmt.Errorf("image: reading containers: %w", err)
	}
	for _, e := range entries {
		l := new(lease)
		if err := readJSON(filepath.Join(s.containerDir(e.Name()), "lease.json"), l); err != nil || l.ID != e.Name() {
			// A container directory without its lease is the end of an
			// Unmount that crashed after removing the lease.
			s.log.Warn("removing a container directory without a lease", "id", e.Name(), "err", err)
			if err := removeContainerDir(s.containerDir(e.Name())); err != nil {
				s.log.Error("cannot remove a container directory without a lease", "id", e.Name(), "err", err)
			}
			continue
		}
		out[l.ID] = l
	}
	return out, nil
}

// Get returns an image in the store by reference ("nginx:1.13",
// "reg/a@sha256:..."), by manifest digest or by ID ("sha256:..."). It
// returns an error wrapping ErrNotFound if there is none.
func (s *Store) Get(ref string) (*Image, error) {
	if err := s.open(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	rec, name, err := s.findLocked(ref)
	if err != nil {
		return nil, err
	}
	return rec.image(name), nil
}

// findLocked looks an image up as Get does; name is the reference to report
// it under. The caller holds mu.
func (s *Store) findLocked(ref string) (*imageRecord, string, error) {
	if isDigest(ref) {
		if rec, ok := s.images[ref]; ok {
			return rec, rec.firstRef(), nil
		}
		for _, rec := range s.sortedImagesLocked() {
			if rec.ID == ref || rec.IndexDigest == ref {
				return rec, rec.firstRef(), nil
			}
		}
		return nil, "", fmt.Errorf("image %s: %w", ref, ErrNotFound)
	}
	r, err := parseReference(ref, nil)
	if err != nil {
		return nil, "", err
	}
	if d, ok := s.refs[r.String()]; ok {
		return s.images[d], r.String(), nil
	}
	if r.digest != "" {
		if rec, ok := s.images[r.digest]; ok {
			return rec, r.String(), nil
		}
		for _, rec := range s.sortedImagesLocked() {
			if rec.IndexDigest == r.digest {
				return rec, r.String(), nil
			}
		}
	}
	return nil, "", fmt.Errorf("image %s: %w", r, ErrNotFound)
}

func (s *Store) sortedImagesLocked() []*imageRecord {
	out := make([]*imageRecord, 0, len(s.images))
	for _, rec := range s.images {
		out = append(out, rec)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Digest < out[j].Digest })
	return out
}

// List returns the images in the store: one per reference, sorted by
// reference, then those without a reference, by digest. It returns nil if
// the store cannot be opened (the error is logged).
func (s *Store) List() []*Image {
	if err := s.open(); err != nil {
		s.log.Error("image store", "err", err)
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	refs := make([]string, 0, len(s.refs))
	for r := range s.refs {
		refs = append(refs, r)
	}
	sort.Strings(refs)
	out := make([]*Image, 0, len(refs))
	for _, r := range refs {
		out = append(out, s.images[s.refs[r]].image(r))
	}
	for _, rec := range s.sortedImagesLocked() {
		if len(rec.Refs) == 0 {
			out = append(out, rec.image(""))
		}
	}
	return out
}

func (rec *imageRecord) firstRef() string {
	if len(rec.Refs) == 0 {
		return ""
	}
	return rec.Refs[0]
}

// image returns a copy of rec as an Image named ref.
func (rec *imageRecord) image(ref string) *Image {
	return &Image{
		Ref:    ref,
		Digest: rec.Digest,
		ID:     rec.ID,
		Config: rec.Config.clone(),
		Layers: slices.Clone(rec.Layers),
		Size:   rec.Size,
	}
}

func (c ImageConfig) clone() ImageConfig {
	out := c
	out.Entrypoint = slices.Clone(c.Entrypoint)
	out.Cmd = slices.Clone(c.Cmd)
	out.Env = slices.Clone(c.Env)
	out.ExposedPorts = slices.Clone(c.ExposedPorts)
	out.Volumes = slices.Clone(c.Volumes)
	if c.Labels != nil {
		out.Labels = make(map[string]string, len(c.Labels))
		for k, v := range c.Labels {
			out.Labels[k] = v
		}
	}
	if c.Healthcheck != nil {
		h := *c.Healthcheck
		h.Test = slices.Clone(h.Test)
		out.Healthcheck = &h
	}
	return out
}

// recordImageLocked stores rec under the references refs, moving each
// reference off the image it named before, and writes the records that
// changed. The caller holds mu.
func (s *Store) recordImageLocked(rec *imageRecord, refs []string) error {
	if old, ok := s.images[rec.Digest]; ok {
		rec.Refs = old.Refs
	}
	changed := map[string]*imageRecord{rec.Digest: rec}
	for _, r := range refs {
		if r == "" {
			continue
		}
		if d, ok := s.refs[r]; ok && d != rec.Digest {
			other := s.images[d]
			other.Refs = slices.DeleteFunc(slices.Clone(other.Refs), func(x string) bool { return x == r })
			changed[d] = other
		}
		if !slices.Contains(rec.Refs, r) {
			rec.Refs = append(slices.Clone(rec.Refs), r)
		}
	}
	for d, c := range changed {
		if err := writeJSON(filepath.Join(s.imagesDir(), hexOf(d)+".json"), c); err != nil {
			return fmt.Errorf("image: writing record of %s: %w", d, err)
		}
	}
	s.images[rec.Digest] = rec
	for _, r := range refs {
		if r != "" {
			s.refs[r] = rec.Digest
		}
	}
	return nil
}

// touchLocked sets an image's last use to now; the record is written
// later (flushTouchedLocked), since a last use only guides GC. The caller
// holds mu.
func (s *Store) touchLocked(digest string) {
	rec, ok := s.images[digest]
	if !ok {
		return
	}
	rec.LastUsed = s.now()
	if s.touched == nil {
		s.touched = map[string]bool{}
	}
	s.touched[digest] = true
}

// flushTouchedLocked writes the records of the images touched since they
// were last written. The caller holds mu.
func (s *Store) flushTouchedLocked() {
	for digest := range s.touched {
		if rec, ok := s.images[digest]; ok {
			if err := writeHint(filepath.Join(s.imagesDir(), hexOf(digest)+".json"), rec); err != nil {
				s.log.Warn("writing image record", "image", digest, "err", err)
			}
		}
		delete(s.touched, digest)
	}
}

// pin marks layers as needed by an operation in progress, so GC keeps them;
// unpin releases them.
func (s *Store) pin(ids []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		s.pins[id]++
	}
}

func (s *Store) unpin(ids []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		if s.pins[id]--; s.pins[id] <= 0 {
			delete(s.pins, id)
		}
	}
}

// writeJSON writes v to path atomically: a temporary file in the same
// directory, synced, renamed over path, and the directory synced.
func writeJSON(path string, v any) error { return writeJSONFile(path, v, true) }

// writeHint is writeJSON without the syncs, for records that only matter
// while the machine runs (a container's lease: no container survives a
// reboot) or only guide GC (an image's last use): a rename keeps them
// whole across a crash of the process, and the start of a container does
// not wait for the disk.
func writeHint(path string, v any) error { return writeJSONFile(path, v, false) }

func writeJSONFile(path string, v any, sync bool) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(append(b, '\n'))
	if err == nil && sync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if !sync {
		return nil
	}
	return syncDir(dir)
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// emptyDir removes everything in dir.
func emptyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// sha256Digest returns "sha256:<hex>" of b.
func sha256Digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// keyedMutex serializes operations per key (Mount and Unmount of one
// container id).
type keyedMutex struct {
	mu sync.Mutex
	// m holds a lock per key with its number of holders and waiters;
	// guarded by mu.
	m map[string]*keyedEntry
}

type keyedEntry struct {
	ch   chan struct{} // a token: holding it is holding the lock
	refs int
}

// lock takes the lock of key, or returns ctx.Err().
func (k *keyedMutex) lock(ctx context.Context, key string) (unlock func(), err error) {
	k.mu.Lock()
	if k.m == nil {
		k.m = make(map[string]*keyedEntry)
	}
	e, ok := k.m[key]
	if !ok {
		e = &keyedEntry{ch: make(chan struct{}, 1)}
		k.m[key] = e
	}
	e.refs++
	k.mu.Unlock()
	release := func() {
		k.mu.Lock()
		if e.refs--; e.refs == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
	select {
	case e.ch <- struct{}{}:
		return func() { <-e.ch; release() }, nil
	case <-ctx.Done():
		release()
		return nil, ctx.Err()
	}
}
