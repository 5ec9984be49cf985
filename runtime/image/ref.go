package image

import (
	"fmt"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
)

// reference is a parsed docker reference.
type reference struct {
	// remote is what the registry is asked for: the digest when there is
	// one, the tag otherwise.
	remote name.Reference
	repo   name.Repository
	// repoName is the normalized repository: "docker.io/library/nginx".
	repoName string
	// tag is "" for a reference by digest alone.
	tag string
	// digest is "sha256:..." or "".
	digest string
}

// String is the normalized reference: "docker.io/library/nginx:1.13",
// "reg:5000/a/b@sha256:...", "docker.io/library/nginx:1.13@sha256:...".
func (r reference) String() string {
	s := r.repoName
	if r.tag != "" {
		s += ":" + r.tag
	}
	if r.digest != "" {
		s += "@" + r.digest
	}
	return s
}

// tagged is the reference without its digest: what a tag names.
func (r reference) tagged() string {
	return r.repoName + ":" + r.tag
}

// parseReference parses a docker reference. "nginx" means
// docker.io/library/nginx:latest; a reference with both a tag and a digest
// fetches the digest. Registries in insecure are reached over plain HTTP.
func parseReference(s string, insecure []string) (reference, error) {
	if s == "" || strings.TrimSpace(s) != s {
		return reference{}, fmt.Errorf("%w: %q: must be a non-empty reference without surrounding spaces", ErrInvalidReference, s)
	}
	base, dig, hasDigest := strings.Cut(s, "@")
	var opts []name.Option
	repoPart := base
	tag := ""
	if i := strings.LastIndexByte(base, ':'); i > strings.LastIndexByte(base, '/') {
		repoPart, tag = base[:i], base[i+1:]
	}
	repo, err := name.NewRepository(repoPart)
	if err != nil {
		return reference{}, fmt.Errorf("%w: %q: %v", ErrInvalidReference, s, err)
	}
	if slices.Contains(insecure, repo.RegistryStr()) || (repo.RegistryStr() == name.DefaultRegistry && slices.Contains(insecure, "docker.io")) {
		opts = append(opts, name.Insecure)
		if repo, err = name.NewRepository(repoPart, opts...); err != nil {
			return reference{}, fmt.Errorf("%w: %q: %v", ErrInvalidReference, s, err)
		}
	}
	r := reference{repo: repo, repoName: normalizeRepo(repo)}
	switch {
	case hasDigest:
		d, err := name.NewDigest(repo.Name()+"@"+dig, opts...)
		if err != nil {
			return reference{}, fmt.Errorf("%w: %q: %v", ErrInvalidReference, s, err)
		}
		if tag != "" {
			if _, err := name.NewTag(repo.Name()+":"+tag, opts...); err != nil {
				return reference{}, fmt.Errorf("%w: %q: %v", ErrInvalidReference, s, err)
			}
		}
		r.remote, r.tag, r.digest = d, tag, d.DigestStr()
	default:
		if tag == "" {
			tag = name.DefaultTag
		}
		t, err := name.NewTag(repo.Name()+":"+tag, opts...)
		if err != nil {
			return reference{}, fmt.Errorf("%w: %q: %v", ErrInvalidReference, s, err)
		}
		r.remote, r.tag = t, t.TagStr()
	}
	return r, nil
}

// normalizeRepo names a repository as docker does: the default registry is
// "docker.io" (go-containerregistry says "index.docker.io").
func normalizeRepo(repo name.Repository) string {
	reg := repo.RegistryStr()
	if reg == name.DefaultRegistry {
		reg = "docker.io"
	}
	return reg + "/" + repo.RepositoryStr()
}

// isDigest reports whether s is a bare digest "sha256:<64 hex>".
func isDigest(s string) bool {
	hex, ok := strings.CutPrefix(s, "sha256:")
	if !ok || len(hex) != 64 {
		return false
	}
	for _, c := range hex {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
