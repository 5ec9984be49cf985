package image

import (
	"fmt"
	goruntime "runtime"
	"runtime/debug"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Platform names what an image is built for, as in an OCI index:
// OS "linux", Architecture "amd64", "arm64", "arm", ..., and for arm and
// amd64 an optional Variant ("v7", "v8", "v3").
type Platform struct {
	OS, Architecture, Variant string
}

// String formats p as "os/arch[/variant]".
func (p Platform) String() string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// DefaultPlatform is the platform of the running program: GOOS, GOARCH and,
// for GOARCH=arm, the variant of the GOARM it was built with (v7 when the
// build information does not say).
func DefaultPlatform() Platform {
	p := Platform{OS: goruntime.GOOS, Architecture: goruntime.GOARCH}
	if p.Architecture == "arm" {
		p.Variant = "v7"
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, s := range bi.Settings {
				if s.Key == "GOARM" && s.Value != "" {
					p.Variant = "v" + s.Value[:1]
				}
			}
		}
	}
	return p
}

func (p Platform) validate(field string) error {
	if p == (Platform{}) {
		return nil
	}
	if p.OS == "" || p.Architecture == "" {
		return fmt.Errorf("image: %s: OS and Architecture are both required when a platform is given, got %q", field, p.String())
	}
	for _, s := range []string{p.OS, p.Architecture, p.Variant} {
		if strings.ContainsAny(s, "/ \t\n\x00") {
			return fmt.Errorf("image: %s: must be names without '/' or spaces, got %q", field, p.String())
		}
	}
	return nil
}

// normalize returns p with docker's aliases resolved: architecture
// x86_64 → amd64, aarch64 → arm64, armhf → arm/v7, armel → arm/v6; the
// variants "8" → "v8" and so on; and the default variants made explicit
// (amd64 v1, arm v7, arm64 v8), so that equal platforms compare equal.
func (p Platform) normalize() Platform {
	p.OS = strings.ToLower(p.OS)
	p.Architecture = strings.ToLower(p.Architecture)
	p.Variant = strings.ToLower(p.Variant)
	switch p.Architecture {
	case "x86_64", "x86-64":
		p.Architecture = "amd64"
	case "aarch64":
		p.Architecture = "arm64"
	case "armhf":
		p.Architecture, p.Variant = "arm", "v7"
	case "armel":
		p.Architecture, p.Variant = "arm", "v6"
	case "i386", "i686":
		p.Architecture = "386"
	}
	if p.Variant != "" && p.Variant[0] >= '0' && p.Variant[0] <= '9' {
		p.Variant = "v" + p.Variant
	}
	if p.Variant == "" {
		switch p.Architecture {
		case "amd64":
			p.Variant = "v1"
		case "arm":
			p.Variant = "v7"
		case "arm64":
			p.Variant = "v8"
		}
	}
	return p
}

// variantLevel returns N of a variant "vN", or -1.
func variantLevel(v string) int {
	if len(v) < 2 || v[0] != 'v' {
		return -1
	}
	n, err := strconv.Atoi(v[1:])
	if err != nil {
		return -1
	}
	return n
}

// platformScore says how well an image built for have suits a node of
// platform want: 0 means not at all; higher is better. OS and architecture
// must match; the variant must match, or for a versioned variant (arm's
// v5..v8, amd64's v1..v4) be an older level the node runs, the newest such
// level preferred.
func platformScore(want Platform, have *v1.Platform) int {
	if have == nil {
		return 0
	}
	w := want.normalize()
	h := Platform{OS: have.OS, Architecture: have.Architecture, Variant: have.Variant}.normalize()
	if w.OS != h.OS || w.Architecture != h.Architecture {
		return 0
	}
	if w.Variant == h.Variant {
		return 1000
	}
	wl, hl := variantLevel(w.Variant), variantLevel(h.Variant)
	if wl < 0 || hl < 0 || hl > wl {
		return 0
	}
	return 1000 - (wl - hl)
}

// choosePlatform picks the manifest for want from an index's manifests:
// the best score, the first of equals. ok is false when none fits.
func choosePlatform(want Platform, manifests []v1.Descriptor) (v1.Descriptor, bool) {
	best, bestScore := v1.Descriptor{}, 0
	for _, d := range manifests {
		if s := platformScore(want, d.Platform); s > bestScore {
			best, bestScore = d, s
		}
	}
	return best, bestScore > 0
}
