package image

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// whiteoutFormat is how a layer on disk records deletions of lower layers'
// files.
type whiteoutFormat string

const (
	// formatOverlay is overlayfs's own: a 0/0 character device for a
	// deleted name, the trusted.overlay.opaque=y xattr on a directory that
	// hides the lower layers' contents. It needs root.
	formatOverlay whiteoutFormat = "overlay"
	// formatMarker keeps the layer tar's markers as empty files: .wh.<name>
	// and .wh..wh..opq. Only copy mode can use such layers.
	formatMarker whiteoutFormat = "marker"
)

const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh."
	whiteoutOpaque = ".wh..wh..opq"
	opaqueXattr    = "trusted.overlay.opaque"
	// overlayXattrs are overlayfs's own attributes; a layer may not set
	// them (they would steer the mount: redirects, opaque directories).
	overlayXattrs = "trusted.overlay."
)

// unpacker extracts one layer tar into an empty directory it owns. It
// never follows a symbolic link: every path it writes is root joined with
// a cleaned name whose parents it has checked to be real directories, and
// no other writer touches root meanwhile.
type unpacker struct {
	root   string
	format whiteoutFormat
	// owner says files get the tar's uid and gid (only root can); devices
	// says character and block devices are made (root only, too).
	owner, devices bool
	log            *slog.Logger

	// dirs are the names (relative to root) known to be real directories.
	dirs map[string]bool
	// whited are names a whiteout of this layer covers (overlay format):
	// a directory made there later must be opaque.
	whited map[string]bool
	// dirMeta is applied to directories once all entries are in, since
	// making their children changes their times (and a read-only mode would
	// stop a non-root unpacker).
	dirMeta map[string]*tar.Header
	// size sums the regular files' bytes.
	size int64
	buf  []byte
	// warned records which skipped features were logged, once each.
	warned map[string]bool
}

func newUnpacker(root string, format whiteoutFormat, log *slog.Logger) *unpacker {
	root0 := isRoot()
	return &unpacker{
		root: root, format: format, owner: root0, devices: root0, log: log,
		dirs: map[string]bool{"": true}, whited: map[string]bool{}, dirMeta: map[string]*tar.Header{},
		warned: map[string]bool{},
	}
}

// unsafe returns an ErrUnsafeLayer error about the entry name.
func unsafe(name, format string, args ...any) error {
	return fmt.Errorf("%w: entry %q: %s", ErrUnsafeLayer, name, fmt.Sprintf(format, args...))
}

// cleanName turns a tar entry's name into a path relative to the layer
// root ("" for the root itself), refusing absolute names and names that
// climb out.
func cleanName(name string) (string, error) {
	if strings.IndexByte(name, 0) >= 0 {
		return "", unsafe(name, "a name with a NUL byte")
	}
	if path.IsAbs(name) {
		return "", unsafe(name, "an absolute name")
	}
	c := path.Clean(name)
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", unsafe(name, "the name leads out of the layer")
	}
	if c == "." {
		return "", nil
	}
	return c, nil
}

// full is the on-disk path of rel.
func (u *unpacker) full(rel string) string {
	if rel == "" {
		return u.root
	}
	return filepath.Join(u.root, filepath.FromSlash(rel))
}

// unpack extracts a tar stream. It stops at the end of the tar (the caller
// reads any padding after it).
func (u *unpacker) unpack(r io.Reader) error {
	if err := os.Mkdir(u.root, 0o755); err != nil {
		return err
	}
	u.buf = make([]byte, 1<<20)
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("reading the layer's tar: %w", err)
		}
		if err := u.entry(tr, hdr); err != nil {
			return err
		}
	}
	return u.finishDirs()
}

func (u *unpacker) entry(tr *tar.Reader, hdr *tar.Header) error {
	switch hdr.Typeflag {
	case tar.TypeXGlobalHeader, tar.TypeXHeader, tar.TypeGNULongName, tar.TypeGNULongLink:
		return nil
	}
	rel, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	if rel == "" {
		if hdr.Typeflag != tar.TypeDir {
			return unsafe(hdr.Name, "the layer's root must be a directory")
		}
		u.dirMeta[""] = hdr
		return nil
	}
	parent, base := path.Split(rel)
	parent = strings.TrimSuffix(parent, "/")
	if err := u.realDir(parent, true, hdr.Name); err != nil {
		return err
	}
	if strings.HasPrefix(base, whiteoutPrefix) {
		return u.whiteout(hdr.Name, parent, base)
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		return u.dir(rel, hdr)
	case tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse:
		return u.file(rel, hdr, tr)
	case tar.TypeSymlink:
		if err := u.replace(rel, false); err != nil {
			return err
		}
		if err := os.Symlink(hdr.Linkname, u.full(rel)); err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
		return u.meta(rel, hdr, true)
	case tar.TypeLink:
		return u.hardlink(rel, hdr)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return u.special(rel, hdr)
	default:
		u.warnOnce("type"+string(hdr.Typeflag), "skipping a tar entry of an unknown type", "name", hdr.Name, "type", hdr.Typeflag)
		return nil
	}
}

// realDir checks that every component of rel is a real directory, making
// missing ones (mode 0755) if create is set. A symbolic link or a file on
// the way refuses the entry.
func (u *unpacker) realDir(rel string, create bool, entry string) error {
	if u.dirs[rel] {
		return nil
	}
	parts := strings.Split(rel, "/")
	for i := range parts {
		p := strings.Join(parts[:i+1], "/")
		if u.dirs[p] {
			continue
		}
		fi, err := os.Lstat(u.full(p))
		switch {
		case errors.Is(err, fs.ErrNotExist) && create:
			if err := os.Mkdir(u.full(p), 0o755); err != nil {
				return fmt.Errorf("entry %q: %w", entry, err)
			}
			if u.format == formatOverlay && u.whited[p] {
				if err := setOpaque(u.full(p)); err != nil {
					return fmt.Errorf("entry %q: %w", entry, err)
				}
			}
		case err != nil:
			if errors.Is(err, fs.ErrNotExist) {
				return unsafe(entry, "%s does not exist in the layer", p)
			}
			return fmt.Errorf("entry %q: %w", entry, err)
		case u.whited[p] && fi.Mode()&fs.ModeCharDevice != 0:
			// This layer's whiteout of p, then entries under p: p becomes
			// an opaque directory.
			if err := os.Remove(u.full(p)); err != nil {
				return fmt.Errorf("entry %q: %w", entry, err)
			}
			if err := os.Mkdir(u.full(p), 0o755); err != nil {
				return fmt.Errorf("entry %q: %w", entry, err)
			}
			if err := setOpaque(u.full(p)); err != nil {
				return fmt.Errorf("entry %q: %w", entry, err)
			}
		case fi.Mode()&fs.ModeSymlink != 0:
			return unsafe(entry, "%s is a symbolic link; the unpacker follows none", p)
		case !fi.IsDir():
			return unsafe(entry, "%s is not a directory", p)
		}
		u.dirs[p] = true
	}
	return nil
}

// replace clears the way for a non-directory entry at rel.
func (u *unpacker) replace(rel string, dir bool) error {
	_, err := u.replaceDir(rel, dir)
	return err
}

// replaceDir clears the way for an entry at rel: an existing directory
// stays if the entry is a directory too (kept reports it); anything else
// there is removed.
func (u *unpacker) replaceDir(rel string, dir bool) (kept bool, err error) {
	fi, err := os.Lstat(u.full(rel))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if dir && fi.IsDir() {
		return true, nil
	}
	if fi.IsDir() {
		for k := range u.dirs {
			if k == rel || strings.HasPrefix(k, rel+"/") {
				delete(u.dirs, k)
			}
		}
		for k := range u.dirMeta {
			if k == rel || strings.HasPrefix(k, rel+"/") {
				delete(u.dirMeta, k)
			}
		}
		return false, os.RemoveAll(u.full(rel))
	}
	return false, os.Remove(u.full(rel))
}

func (u *unpacker) dir(rel string, hdr *tar.Header) error {
	kept, err := u.replaceDir(rel, true)
	if err != nil {
		return fmt.Errorf("entry %q: %w", hdr.Name, err)
	}
	if !kept {
		if err := os.Mkdir(u.full(rel), 0o755); err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
	}
	u.dirs[rel] = true
	if u.format == formatOverlay && u.whited[rel] {
		if err := setOpaque(u.full(rel)); err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
	}
	u.dirMeta[rel] = hdr
	return nil
}

func (u *unpacker) file(rel string, hdr *tar.Header, r io.Reader) error {
	if err := u.replace(rel, false); err != nil {
		return fmt.Errorf("entry %q: %w", hdr.Name, err)
	}
	f, err := os.OpenFile(u.full(rel), os.O_WRONLY|os.O_CREATE|os.O_EXCL|oNoFollow, 0o600)
	if err != nil {
		return fmt.Errorf("entry %q: %w", hdr.Name, err)
	}
	n, err := io.CopyBuffer(f, r, u.buf)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("entry %q: %w", hdr.Name, err)
	}
	u.size += n
	return u.meta(rel, hdr, false)
}

func (u *unpacker) hardlink(rel string, hdr *tar.Header) error {
	target, err := cleanName(hdr.Linkname)
	if err != nil {
		return unsafe(hdr.Name, "hard link to %q: %v", hdr.Linkname, err)
	}
	if target == "" {
		return unsafe(hdr.Name, "hard link to the layer's root")
	}
	if target == rel {
		return nil
	}
	tparent, _ := path.Split(target)
	if err := u.realDir(strings.TrimSuffix(tparent, "/"), false, hdr.Name); err != nil {
		return err
	}
	fi, err := os.Lstat(u.full(target))
	if err != nil {
		return unsafe(hdr.Name, "hard link to %q, which is not in the layer", hdr.Linkname)
	}
	if fi.IsDir() {
		return unsafe(hdr.Name, "hard link to the directory %q", hdr.Linkname)
	}
	if err := u.replace(rel, false); err != nil {
		return fmt.Errorf("entry %q: %w", hdr.Name, err)
	}
	if err := os.Link(u.full(target), u.full(rel)); err != nil {
		return fmt.Errorf("entry %q: %w", hdr.Name, err)
	}
	return nil
}

func (u *unpacker) special(rel string, hdr *tar.Header) error {
	if hdr.Typeflag != tar.TypeFifo && !u.devices {
		u.warnOnce("devices", "skipping device nodes: making them needs root", "name", hdr.Name)
		return nil
	}
	if err := u.replace(rel, false); err != nil {
		return fmt.Errorf("entry %q: %w", hdr.Name, err)
	}
	err := mknod(u.full(rel), hdr.Typeflag, uint32(hdr.Mode&0o7777), hdr.Devmajor, hdr.Devminor)
	if err != nil {
		if isPermission(err) {
			u.devices = false
			u.warnOnce("devices", "skipping device nodes: not permitted here", "name", hdr.Name, "err", err)
			return nil
		}
		return fmt.Errorf("entry %q: %w", hdr.Name, err)
	}
	return u.meta(rel, hdr, false)
}

// whiteout records a whiteout entry: base is ".wh.<name>" or the opaque
// marker, in the directory parent.
func (u *unpacker) whiteout(entry, parent, base string) error {
	join := func(name string) string {
		if parent == "" {
			return name
		}
		return parent + "/" + name
	}
	if base == whiteoutOpaque {
		if u.format == formatOverlay {
			if err := setOpaque(u.full(parent)); err != nil {
				return fmt.Errorf("entry %q: %w", entry, err)
			}
			return nil
		}
		return u.marker(join(base), entry)
	}
	if strings.HasPrefix(base, whiteoutMeta) {
		// Other .wh..wh. names are aufs's bookkeeping, meaningless here.
		return nil
	}
	name := strings.TrimPrefix(base, whiteoutPrefix)
	if name == "" || name == "." || name == ".." {
		return unsafe(entry, "a whiteout of %q", name)
	}
	if u.format == formatMarker {
		return u.marker(join(base), entry)
	}
	rel := join(name)
	fi, err := os.Lstat(u.full(rel))
	switch {
	case err == nil && fi.IsDir():
		// The name is in this layer as a directory: it stays, hiding the
		// lower layers' contents.
		return setOpaque(u.full(rel))
	case err == nil:
		// A non-directory of this layer already hides the lower ones.
		return nil
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("entry %q: %w", entry, err)
	}
	u.whited[rel] = true
	if err := mknod(u.full(rel), tar.TypeChar, 0, 0, 0); err != nil {
		return fmt.Errorf("entry %q: whiteout: %w", entry, err)
	}
	return nil
}

// marker keeps a whiteout marker as an empty file.
func (u *unpacker) marker(rel, entry string) error {
	if err := u.replace(rel, false); err != nil {
		return fmt.Errorf("entry %q: %w", entry, err)
	}
	f, err := os.OpenFile(u.full(rel), os.O_WRONLY|os.O_CREATE|os.O_EXCL|oNoFollow, 0)
	if err != nil {
		return fmt.Errorf("entry %q: %w", entry, err)
	}
	return f.Close()
}

// meta applies ownership, mode, xattrs and times to a non-directory.
func (u *unpacker) meta(rel string, hdr *tar.Header, symlink bool) error {
	p := u.full(rel)
	if u.owner {
		if err := os.Lchown(p, hdr.Uid, hdr.Gid); err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
	}
	if !symlink {
		// After chown, which clears the setuid and setgid bits.
		if err := chmod(p, uint32(hdr.Mode&0o7777)); err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
	}
	u.xattrs(p, hdr)
	return u.times(p, hdr)
}

// xattrs sets the entry's extended attributes, skipping overlayfs's own
// and those the filesystem or privileges refuse.
func (u *unpacker) xattrs(p string, hdr *tar.Header) {
	keys := make([]string, 0, len(hdr.PAXRecords))
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "SCHILY.xattr.") {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		name := strings.TrimPrefix(k, "SCHILY.xattr.")
		if strings.HasPrefix(name, overlayXattrs) {
			u.warnOnce("xattr-overlay", "dropping an overlayfs xattr a layer sets", "name", hdr.Name, "xattr", name)
			continue
		}
		if err := lsetxattr(p, name, []byte(hdr.PAXRecords[k])); err != nil {
			u.warnOnce("xattr-"+name, "skipping an xattr the filesystem refuses", "name", hdr.Name, "xattr", name, "err", err)
		}
	}
}

func (u *unpacker) times(p string, hdr *tar.Header) error {
	atime := hdr.AccessTime
	if atime.IsZero() {
		atime = hdr.ModTime
	}
	if err := lutimes(p, atime, hdr.ModTime); err != nil {
		return fmt.Errorf("entry %q: times: %w", hdr.Name, err)
	}
	return nil
}

// finishDirs applies the directories' metadata, deepest first.
func (u *unpacker) finishDirs() error {
	rels := make([]string, 0, len(u.dirMeta))
	for rel := range u.dirMeta {
		rels = append(rels, rel)
	}
	sort.Slice(rels, func(i, j int) bool { return rels[i] > rels[j] })
	for _, rel := range rels {
		hdr := u.dirMeta[rel]
		p := u.full(rel)
		fi, err := os.Lstat(p)
		if err != nil || !fi.IsDir() {
			continue
		}
		if u.owner {
			if err := os.Lchown(p, hdr.Uid, hdr.Gid); err != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
		}
		if err := chmod(p, uint32(hdr.Mode&0o7777)); err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
		u.xattrs(p, hdr)
		if err := u.times(p, hdr); err != nil {
			return err
		}
	}
	return nil
}

func (u *unpacker) warnOnce(key, msg string, args ...any) {
	if u.warned[key] {
		return
	}
	u.warned[key] = true
	u.log.Warn(msg, args...)
}
