package image

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Annotations of an OCI layout's index that name an image.
const (
	annotationContainerdName = "io.containerd.image.name"
	annotationRefName        = "org.opencontainers.image.ref.name"
)

// LoadLayout imports the images of the OCI image layout in dir: each
// manifest of its index.json (for a nested index, the image of
// Config.Platform), verified as Pull verifies (manifest, config, each
// layer's blob and diff ID). An image is named by its
// io.containerd.image.name annotation, or by org.opencontainers.image.ref.name
// when that is a full reference; a bare tag names nothing, and the image
// is found by digest. It returns the images in the index's order.
func (s *Store) LoadLayout(ctx context.Context, dir string) ([]*Image, error) {
	if err := s.open(); err != nil {
		return nil, err
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("image: load layout %s: %w", dir, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("image: load layout %s: %w", dir, err)
	}
	var out []*Image
	for i, desc := range im.Manifests {
		src := imageSource{digest: desc.Digest.String()}
		if ref := layoutRef(desc.Annotations); ref != "" {
			src.refs = []string{ref}
		}
		switch {
		case desc.MediaType.IsImage():
			src.img, err = idx.Image(desc.Digest)
		case desc.MediaType.IsIndex():
			var child v1.ImageIndex
			var cim *v1.IndexManifest
			var chosen v1.Descriptor
			if child, err = idx.ImageIndex(desc.Digest); err == nil {
				if cim, err = child.IndexManifest(); err == nil {
					if chosen, err = s.choose(cim.Manifests); err == nil {
						src.img, err = child.Image(chosen.Digest)
						src.digest, src.indexDigest = chosen.Digest.String(), desc.Digest.String()
					}
				}
			}
		default:
			s.log.Info("skipping a manifest that is no image", "layout", dir, "mediaType", desc.MediaType)
			continue
		}
		if err != nil {
			return out, fmt.Errorf("image: load layout %s: manifest %d (%s): %w", dir, i, desc.Digest, err)
		}
		img := src.img
		src.open = func(_ context.Context, l v1.Descriptor) (io.ReadCloser, error) {
			layer, err := img.LayerByDigest(l.Digest)
			if err != nil {
				return nil, err
			}
			return layer.Compressed()
		}
		loaded, err := s.importImage(ctx, src)
		if err != nil {
			return out, fmt.Errorf("image: load layout %s: manifest %d (%s): %w", dir, i, desc.Digest, err)
		}
		out = append(out, loaded)
	}
	return out, nil
}

// layoutRef returns the normalized reference an index entry's annotations
// give, or "".
func layoutRef(ann map[string]string) string {
	for _, key := range []string{annotationContainerdName, annotationRefName} {
		v := ann[key]
		if v == "" || !strings.ContainsAny(v, "/:@") {
			continue
		}
		if r, err := parseReference(v, nil); err == nil {
			return r.String()
		}
	}
	return ""
}

// LoadTarball imports the images of a docker save tarball (its
// manifest.json), verifying each layer against its config's diff ID (the
// tarball has no compressed digests to check). Each image is named by its
// RepoTags; a tarball of one untagged image loads it without a name. The
// Digest of an image from a tarball is its ID, as the tarball carries no
// manifest. It returns the images in manifest.json's order.
func (s *Store) LoadTarball(ctx context.Context, path string) ([]*Image, error) {
	if err := s.open(); err != nil {
		return nil, err
	}
	opener := func() (io.ReadCloser, error) { return os.Open(path) }
	m, err := tarball.LoadManifest(opener)
	if err != nil {
		return nil, fmt.Errorf("image: load tarball %s: %w", path, err)
	}
	var out []*Image
	for i, d := range m {
		var src imageSource
		var tag *name.Tag
		switch {
		case len(d.RepoTags) > 0:
			t, err := name.NewTag(d.RepoTags[0])
			if err != nil {
				return out, fmt.Errorf("image: load tarball %s: image %d: tag %q: %w", path, i, d.RepoTags[0], err)
			}
			tag = &t
			for _, rt := range d.RepoTags {
				r, err := parseReference(rt, nil)
				if err != nil {
					return out, fmt.Errorf("image: load tarball %s: image %d: %w", path, i, err)
				}
				src.refs = append(src.refs, r.String())
			}
		case len(m) > 1:
			return out, fmt.Errorf("image: load tarball %s: image %d has no RepoTags; only a tarball of one image may leave it untagged", path, i)
		}
		if src.img, err = tarball.Image(opener, tag); err != nil {
			return out, fmt.Errorf("image: load tarball %s: image %d: %w", path, i, err)
		}
		loaded, err := s.importImage(ctx, src)
		if err != nil {
			return out, fmt.Errorf("image: load tarball %s: image %d: %w", path, i, err)
		}
		out = append(out, loaded)
	}
	return out, nil
}

// ctxReader fails reads once ctx ends, so a long local read stops too.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
