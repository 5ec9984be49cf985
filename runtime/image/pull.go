package image

import (
	"bufio"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/klauspost/compress/zstd"

	"github.com/shoalhq/shoal/runtime"
)

// Pull fetches ref from its registry into the store and returns it. ref is
// a docker reference: "nginx:1.13" means docker.io/library/nginx:1.13;
// "reg:5000/a/b@sha256:..." and "name:tag@sha256:..." fetch the digest. From
// a manifest list or OCI index it takes the image of Config.Platform
// (ErrNoPlatform if there is none). auth are the credentials (empty:
// anonymous), used for basic and token authentication alike.
//
// Concurrent Pulls of one reference with the same credentials share one
// download; each caller's ctx bounds only its own wait, and the download
// stops when every caller has gone. Layers already in the store are not
// fetched again, and a layer two pulls need at once is fetched once. Each
// layer blob is verified against its digest and size, and its uncompressed
// content against the config's diff ID, before it is kept: a mismatch fails
// with ErrDigestMismatch and leaves nothing behind. Registry errors are
// wrapped with the registry's message, and with ErrUnauthorized or
// ErrNotFound where they mean that. A reference with a digest whose image
// the store has from the same repository is returned without asking the
// registry.
func (s *Store) Pull(ctx context.Context, ref string, auth runtime.RegistryAuth) (*Image, error) {
	r, err := parseReference(ref, s.cfg.InsecureRegistries)
	if err != nil {
		return nil, fmt.Errorf("image: pull: %w", err)
	}
	if err := s.open(); err != nil {
		return nil, err
	}
	if img := s.pinnedPresent(r); img != nil {
		return img, nil
	}
	img, err := s.pulls.do(ctx, r.String()+"\x00"+authKey(auth), func(ctx context.Context) (*Image, error) {
		return s.pull(ctx, r, auth)
	})
	if err != nil {
		return nil, fmt.Errorf("image: pull %s: %w", r, err)
	}
	out := *img
	out.Config = img.Config.clone()
	out.Layers = slices.Clone(img.Layers)
	return &out, nil
}

// pinnedPresent returns the image a reference with a digest names if the
// store has it from the same repository (recording the reference), or nil: content named by digest
// cannot have changed, so the registry is not asked again.
func (s *Store) pinnedPresent(r reference) *Image {
	if r.digest == "" {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	rec, _, err := s.findLocked(r.String())
	if err != nil {
		return nil
	}
	// Only for the repository it came from, as docker does: a digest from
	// one repository gives no access to another's content.
	if !slices.ContainsFunc(rec.Refs, func(x string) bool {
		return strings.HasPrefix(x, r.repoName+":") || strings.HasPrefix(x, r.repoName+"@")
	}) {
		return nil
	}
	if !slices.Contains(rec.Refs, r.String()) {
		cp := *rec
		cp.Refs = slices.Clone(rec.Refs)
		cp.LastUsed = s.now()
		if err := s.recordImageLocked(&cp, []string{r.String()}); err != nil {
			s.log.Warn("recording a reference", "ref", r.String(), "err", err)
		}
		rec = s.images[rec.Digest]
	} else {
		s.touchLocked(rec.Digest)
	}
	return rec.image(r.String())
}

// authKey identifies credentials without keeping them readable.
func authKey(a runtime.RegistryAuth) string {
	h := sha256.New()
	for _, f := range []string{a.Username, a.Password, a.IdentityToken, a.RegistryToken} {
		fmt.Fprintf(h, "%d:%s", len(f), f)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func authenticator(a runtime.RegistryAuth) authn.Authenticator {
	if a.Empty() {
		return authn.Anonymous
	}
	return authn.FromConfig(authn.AuthConfig{
		Username:      a.Username,
		Password:      a.Password,
		IdentityToken: a.IdentityToken,
		RegistryToken: a.RegistryToken,
	})
}

// registryTransport pings r's registry and returns a transport that
// authenticates to it for pulls of r's repository.
func registryTransport(ctx context.Context, base http.RoundTripper, r reference, auth runtime.RegistryAuth) (http.RoundTripper, error) {
	tr, err := transport.NewWithContext(ctx, r.repo.Registry, authenticator(auth), base, []string{r.repo.Scope(transport.PullScope)})
	if err != nil {
		return nil, registryError(err)
	}
	return tr, nil
}

// registryError wraps a registry's error with the sentinel it means.
func registryError(err error) error {
	var terr *transport.Error
	if !errors.As(err, &terr) {
		return err
	}
	switch terr.StatusCode {
	case http.StatusUnauthorized, http.StatusForbidden:
		return fmt.Errorf("%w: %w", ErrUnauthorized, err)
	case http.StatusNotFound:
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	for _, d := range terr.Errors {
		switch d.Code {
		case transport.UnauthorizedErrorCode, transport.DeniedErrorCode:
			return fmt.Errorf("%w: %w", ErrUnauthorized, err)
		case transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode, transport.BlobUnknownErrorCode:
			return fmt.Errorf("%w: %w", ErrNotFound, err)
		}
	}
	return err
}

// guardTransport returns base (http.DefaultTransport if nil) refusing plain
// HTTP to every host not in insecure.
func guardTransport(base http.RoundTripper, insecure []string) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return &httpsOnly{inner: base, insecure: slices.Clone(insecure)}
}

type httpsOnly struct {
	inner    http.RoundTripper
	insecure []string
}

func (t *httpsOnly) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "https" && !slices.Contains(t.insecure, req.URL.Host) {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, fmt.Errorf("image: refusing plain HTTP to %s: not one of the insecure registries", req.URL.Host)
	}
	return t.inner.RoundTrip(req)
}

// Resolve pins a tag reference to what it names now with a HEAD (or, where
// HEAD fails, a GET) of its manifest, and returns it in docker's pinned
// form, "docker.io/library/nginx:1.13@sha256:<manifest or index digest>".
// A reference that has a digest already is returned normalized without a
// request. Resolve writes nothing.
func Resolve(ctx context.Context, ref string, auth runtime.RegistryAuth, opts RemoteOptions) (string, error) {
	if err := validateHosts("RemoteOptions.InsecureRegistries", opts.InsecureRegistries); err != nil {
		return "", err
	}
	r, err := parseReference(ref, opts.InsecureRegistries)
	if err != nil {
		return "", fmt.Errorf("image: resolve: %w", err)
	}
	if r.digest != "" {
		return r.String(), nil
	}
	tr, err := registryTransport(ctx, guardTransport(opts.Transport, opts.InsecureRegistries), r, auth)
	if err != nil {
		return "", fmt.Errorf("image: resolve %s: %w", r, err)
	}
	ropts := []remote.Option{remote.WithContext(ctx), remote.WithTransport(tr)}
	desc, err := remote.Head(r.remote, ropts...)
	if err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		full, gerr := remote.Get(r.remote, ropts...)
		if gerr != nil {
			return "", fmt.Errorf("image: resolve %s: %w", r, registryError(gerr))
		}
		desc = &full.Descriptor
	}
	return r.tagged() + "@" + desc.Digest.String(), nil
}

// Resolve is the package's Resolve with the store's registry options.
func (s *Store) Resolve(ctx context.Context, ref string, auth runtime.RegistryAuth) (string, error) {
	return Resolve(ctx, ref, auth, RemoteOptions{
		InsecureRegistries: s.cfg.InsecureRegistries,
		Transport:          s.cfg.Transport,
		Platform:           s.cfg.Platform,
	})
}

// pull is the shared download of Pull.
func (s *Store) pull(ctx context.Context, r reference, auth runtime.RegistryAuth) (*Image, error) {
	tr, err := registryTransport(ctx, s.transport, r, auth)
	if err != nil {
		return nil, err
	}
	desc, err := remote.Get(r.remote, remote.WithContext(ctx), remote.WithTransport(tr))
	if err != nil {
		return nil, registryError(err)
	}
	src := imageSource{refs: []string{r.String()}}
	switch {
	case desc.MediaType.IsIndex():
		idx, err := desc.ImageIndex()
		if err != nil {
			return nil, registryError(err)
		}
		im, err := idx.IndexManifest()
		if err != nil {
			return nil, registryError(err)
		}
		chosen, err := s.choose(im.Manifests)
		if err != nil {
			return nil, err
		}
		if src.img, err = idx.Image(chosen.Digest); err != nil {
			return nil, registryError(err)
		}
		src.digest, src.indexDigest = chosen.Digest.String(), desc.Digest.String()
	case desc.MediaType.IsImage():
		if src.img, err = desc.Image(); err != nil {
			return nil, registryError(err)
		}
		src.digest = desc.Digest.String()
	default:
		return nil, fmt.Errorf("unsupported manifest media type %q", desc.MediaType)
	}
	src.open = func(ctx context.Context, l v1.Descriptor) (io.ReadCloser, error) {
		return fetchBlob(ctx, tr, r, l.Digest)
	}
	return s.importImage(ctx, src)
}

// choose picks the node's image from an index's manifests.
func (s *Store) choose(manifests []v1.Descriptor) (v1.Descriptor, error) {
	var images []v1.Descriptor
	var have []string
	for _, m := range manifests {
		if m.MediaType.IsImage() {
			images = append(images, m)
			if m.Platform != nil {
				have = append(have, Platform{m.Platform.OS, m.Platform.Architecture, m.Platform.Variant}.String())
			}
		}
	}
	d, ok := choosePlatform(s.cfg.Platform, images)
	if !ok {
		return v1.Descriptor{}, fmt.Errorf("%w: %s (the index has %s)", ErrNoPlatform, s.cfg.Platform, strings.Join(have, ", "))
	}
	return d, nil
}

// fetchBlob GETs a blob of r's repository.
func fetchBlob(ctx context.Context, tr http.RoundTripper, r reference, d v1.Hash) (io.ReadCloser, error) {
	u := url.URL{Scheme: r.repo.Scheme(), Host: r.repo.RegistryStr(), Path: "/v2/" + r.repo.RepositoryStr() + "/blobs/" + d.String()}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return nil, err
	}
	if err := transport.CheckError(resp, http.StatusOK); err != nil {
		resp.Body.Close()
		return nil, registryError(err)
	}
	return resp.Body, nil
}

// imageSource is an image to import from a registry, an OCI layout or a
// docker save tarball.
type imageSource struct {
	img v1.Image
	// refs are the normalized references to record it under.
	refs []string
	// digest is the manifest digest, verified against the manifest; for a
	// tarball (no manifest) it is "" and the config digest stands in.
	digest      string
	indexDigest string
	// open returns a layer's compressed blob; nil for a tarball, whose
	// layers are read uncompressed from img.
	open func(ctx context.Context, l v1.Descriptor) (io.ReadCloser, error)
}

// layerSource is one layer to unpack.
type layerSource struct {
	diffID string
	// digest and size describe the blob open returns; digest is "" when
	// open returns the uncompressed layer, checked against diffID only.
	digest string
	size   int64
	open   func(ctx context.Context) (io.ReadCloser, error)
}

// importImage verifies src's manifest and config, unpacks the layers the
// store lacks and records the image.
func (s *Store) importImage(ctx context.Context, src imageSource) (*Image, error) {
	var manifest *v1.Manifest
	if src.open != nil {
		raw, err := src.img.RawManifest()
		if err != nil {
			return nil, registryError(err)
		}
		if got := sha256Digest(raw); got != src.digest {
			return nil, fmt.Errorf("%w: manifest %s hashes to %s", ErrDigestMismatch, src.digest, got)
		}
		if manifest, err = v1.ParseManifest(strings.NewReader(string(raw))); err != nil {
			return nil, fmt.Errorf("manifest %s: %w", src.digest, err)
		}
	}
	rawCfg, err := src.img.RawConfigFile()
	if err != nil {
		return nil, registryError(err)
	}
	id := sha256Digest(rawCfg)
	if manifest != nil && manifest.Config.Digest.String() != id {
		return nil, fmt.Errorf("%w: config %s hashes to %s", ErrDigestMismatch, manifest.Config.Digest, id)
	}
	cfg, diffIDs, err := parseImageConfig(rawCfg)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", id, err)
	}
	sources := make([]layerSource, len(diffIDs))
	if manifest != nil {
		if len(manifest.Layers) != len(diffIDs) {
			return nil, fmt.Errorf("manifest %s has %d layers, its config %d diff IDs", src.digest, len(manifest.Layers), len(diffIDs))
		}
		for i, l := range manifest.Layers {
			sources[i] = layerSource{diffID: diffIDs[i], digest: l.Digest.String(), size: l.Size,
				open: func(ctx context.Context) (io.ReadCloser, error) { return src.open(ctx, l) }}
		}
	} else {
		layers, err := src.img.Layers()
		if err != nil {
			return nil, err
		}
		if len(layers) != len(diffIDs) {
			return nil, fmt.Errorf("image %s has %d layers, its config %d diff IDs", id, len(layers), len(diffIDs))
		}
		for i, l := range layers {
			sources[i] = layerSource{diffID: diffIDs[i], size: -1, open: func(context.Context) (io.ReadCloser, error) { return l.Uncompressed() }}
		}
		src.digest = id
	}

	s.pin(diffIDs)
	defer s.unpin(diffIDs)
	infos, err := s.ensureLayers(ctx, sources)
	if err != nil {
		return nil, err
	}
	rec := &imageRecord{Digest: src.digest, IndexDigest: src.indexDigest, ID: id, Config: cfg, Layers: diffIDs, LastUsed: s.now()}
	seen := make(map[string]bool)
	for _, li := range infos {
		if !seen[li.DiffID] {
			seen[li.DiffID] = true
			rec.Size += li.Size
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	if err := s.recordImageLocked(rec, src.refs); err != nil {
		return nil, err
	}
	ref := ""
	if len(src.refs) > 0 {
		ref = src.refs[0]
	}
	return rec.image(ref), nil
}

// ensureLayers makes every layer of sources present, fetching at most
// s.downloads at once, and returns their records in order.
func (s *Store) ensureLayers(ctx context.Context, sources []layerSource) ([]layerInfo, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	infos := make([]layerInfo, len(sources))
	errs := make([]error, len(sources))
	sem := make(chan struct{}, s.downloads)
	var wg sync.WaitGroup
	for i := range sources {
		// Layers start in order, lowest first, as slots free up.
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			errs[i] = ctx.Err()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			infos[i], errs[i] = s.ensureLayer(ctx, sources[i])
			if errs[i] != nil {
				cancel()
			}
		}()
	}
	wg.Wait()
	// Report the first failure that is not another download's cancelation.
	var first error
	for _, err := range errs {
		if err != nil && !errors.Is(err, context.Canceled) {
			return nil, err
		}
		if err != nil && first == nil {
			first = err
		}
	}
	return infos, first
}

// ensureLayer returns the layer, unpacking it if the store lacks it. One
// unpack runs per layer at a time; concurrent callers share it.
func (s *Store) ensureLayer(ctx context.Context, src layerSource) (layerInfo, error) {
	s.mu.Lock()
	li, ok := s.layers[src.diffID]
	s.mu.Unlock()
	if ok {
		return li, nil
	}
	return s.layerF.do(ctx, src.diffID, func(ctx context.Context) (layerInfo, error) {
		s.mu.Lock()
		li, ok := s.layers[src.diffID]
		s.mu.Unlock()
		if ok {
			return li, nil
		}
		return s.unpackLayer(ctx, src)
	})
}

// unpackLayer reads src into a temporary directory, verifies it, and
// renames it into place; on any failure nothing of it remains.
func (s *Store) unpackLayer(ctx context.Context, src layerSource) (li layerInfo, err error) {
	start := time.Now()
	tmp, err := os.MkdirTemp(s.tmpDir(), "layer-")
	if err != nil {
		return layerInfo{}, err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	rc, err := src.open(ctx)
	if err != nil {
		return layerInfo{}, err
	}
	defer rc.Close()

	blob := &hashingReader{r: ctxReader{ctx, rc}, h: sha256.New()}
	if src.size >= 0 {
		// One byte more than the descriptor says shows a longer blob.
		blob.r = io.LimitReader(blob.r, src.size+1)
	}
	dec, err := decompress(blob)
	if err != nil {
		if derr := s.checkBlob(blob, src); derr != nil {
			return layerInfo{}, derr
		}
		return layerInfo{}, fmt.Errorf("layer %s: %w", src.diffID, err)
	}
	defer dec.Close()
	tarStream := &hashingReader{r: dec, h: sha256.New()}
	u := newUnpacker(filepath.Join(tmp, "fs"), s.format, s.log)
	uerr := u.unpack(tarStream)
	if uerr == nil {
		// The diff ID covers the whole stream, padding included.
		_, uerr = io.Copy(io.Discard, tarStream)
	}
	if err := s.checkBlob(blob, src); err != nil {
		return layerInfo{}, err
	}
	if uerr != nil {
		return layerInfo{}, fmt.Errorf("layer %s: %w", src.diffID, uerr)
	}
	if got := tarStream.digest(); got != src.diffID {
		return layerInfo{}, fmt.Errorf("%w: layer %s uncompressed hashes to %s", ErrDigestMismatch, src.diffID, got)
	}
	li = layerInfo{DiffID: src.diffID, Size: u.size, Format: s.format}
	if err := writeJSON(filepath.Join(tmp, "layer.json"), li); err != nil {
		return layerInfo{}, err
	}
	// The layer's files reach the disk before the rename makes it a
	// layer, so a crash never leaves a complete-looking layer with
	// missing data.
	if err := syncFS(tmp); err != nil {
		return layerInfo{}, err
	}
	dst := s.layerDir(src.diffID)
	if err := os.Rename(tmp, dst); err != nil {
		// The layer may be there already, complete, from a call that was
		// cancelled too late to stop it.
		var have layerInfo
		if rerr := readJSON(filepath.Join(dst, "layer.json"), &have); rerr != nil || have.DiffID != src.diffID {
			return layerInfo{}, fmt.Errorf("layer %s: %w", src.diffID, err)
		}
		os.RemoveAll(tmp)
		li = have
	}
	if err := syncDir(s.layersDir()); err != nil {
		return layerInfo{}, err
	}
	s.mu.Lock()
	s.layers[src.diffID] = li
	s.mu.Unlock()
	s.log.Debug("layer unpacked", "diffID", src.diffID, "bytes", li.Size, "took", time.Since(start))
	return li, nil
}

// checkBlob reads the rest of the blob and checks its size and digest (if
// src has them).
func (s *Store) checkBlob(blob *hashingReader, src layerSource) error {
	if src.digest == "" {
		return nil
	}
	if _, err := io.Copy(io.Discard, blob); err != nil {
		return fmt.Errorf("layer %s: reading blob: %w", src.digest, err)
	}
	if blob.n != src.size {
		return fmt.Errorf("%w: layer blob %s has %d bytes or more, the manifest says %d", ErrDigestMismatch, src.digest, blob.n, src.size)
	}
	if got := blob.digest(); got != src.digest {
		return fmt.Errorf("%w: layer blob %s hashes to %s", ErrDigestMismatch, src.digest, got)
	}
	return nil
}

// hashingReader hashes and counts what is read through it.
type hashingReader struct {
	r io.Reader
	h hash.Hash
	n int64
}

func (h *hashingReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.h.Write(p[:n])
	h.n += int64(n)
	return n, err
}

func (h *hashingReader) digest() string { return "sha256:" + hex.EncodeToString(h.h.Sum(nil)) }

// decompress recognizes gzip and zstd by their magic numbers; anything else
// is read as an uncompressed tar.
func decompress(r io.Reader) (io.ReadCloser, error) {
	br := bufio.NewReaderSize(r, 1<<20)
	magic, _ := br.Peek(4)
	switch {
	case len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
		return gzip.NewReader(br)
	case len(magic) == 4 && magic[0] == 0x28 && magic[1] == 0xb5 && magic[2] == 0x2f && magic[3] == 0xfd:
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, err
		}
		return zr.IOReadCloser(), nil
	default:
		return io.NopCloser(br), nil
	}
}

// configFile is the part of an OCI image config the store reads.
type configFile struct {
	Config struct {
		User         string
		ExposedPorts map[string]struct{}
		Env          []string
		Entrypoint   []string
		Cmd          []string
		Volumes      map[string]struct{}
		WorkingDir   string
		Labels       map[string]string
		StopSignal   string
		Healthcheck  *struct {
			Test          []string
			Interval      time.Duration
			Timeout       time.Duration
			StartPeriod   time.Duration
			StartInterval time.Duration
			Retries       int
		}
	} `json:"config"`
	RootFS struct {
		Type    string   `json:"type"`
		DiffIDs []string `json:"diff_ids"`
	} `json:"rootfs"`
}

// parseImageConfig reads an image config's run settings and diff IDs.
func parseImageConfig(raw []byte) (ImageConfig, []string, error) {
	var cf configFile
	if err := json.Unmarshal(raw, &cf); err != nil {
		return ImageConfig{}, nil, err
	}
	if cf.RootFS.Type != "layers" {
		return ImageConfig{}, nil, fmt.Errorf("rootfs.type must be \"layers\", got %q", cf.RootFS.Type)
	}
	for _, d := range cf.RootFS.DiffIDs {
		if !isDigest(d) {
			return ImageConfig{}, nil, fmt.Errorf("rootfs.diff_ids: %q is not a sha256 digest", d)
		}
	}
	c := cf.Config
	out := ImageConfig{
		Entrypoint: c.Entrypoint,
		Cmd:        c.Cmd,
		Env:        c.Env,
		WorkingDir: c.WorkingDir,
		User:       c.User,
		StopSignal: c.StopSignal,
		Labels:     c.Labels,
	}
	for p := range c.ExposedPorts {
		if !strings.Contains(p, "/") {
			p += "/tcp"
		}
		out.ExposedPorts = append(out.ExposedPorts, p)
	}
	sort.Strings(out.ExposedPorts)
	for v := range c.Volumes {
		out.Volumes = append(out.Volumes, v)
	}
	sort.Strings(out.Volumes)
	if h := c.Healthcheck; h != nil {
		out.Healthcheck = &Healthcheck{Test: h.Test, Interval: h.Interval, Timeout: h.Timeout,
			StartPeriod: h.StartPeriod, StartInterval: h.StartInterval, Retries: h.Retries}
	}
	return out, cf.RootFS.DiffIDs, nil
}
