package image

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
)

// copier copies unpacked layers, lowest first, into one directory,
// applying each layer's whiteouts (in either format) to what the layers
// below put there. It writes only below dst through directories it has
// checked to be real directories, and never follows a symbolic link.
type copier struct {
	log   *slog.Logger
	owner bool
	// links maps a source inode to its first copy, per layer, so hard links
	// stay hard links.
	links map[inode]string
}

type inode struct{ dev, ino uint64 }

func newCopier(log *slog.Logger) *copier {
	return &copier{log: log, owner: isRoot()}
}

func (c *copier) layer(ctx context.Context, src, dst string) error {
	c.links = make(map[inode]string)
	return c.dir(ctx, src, dst)
}

// dir merges the directory src into the real directory dst.
func (c *copier) dir(ctx context.Context, src, dst string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	opaque := isOpaque(src)
	for _, e := range entries {
		if e.Name() == whiteoutOpaque {
			opaque = true
		}
	}
	if opaque {
		if err := emptyDir(dst); err != nil {
			return err
		}
	}
	// Whiteouts first: they delete what lower layers put here, never this
	// layer's own entries.
	rest := entries[:0:0]
	for _, e := range entries {
		name := e.Name()
		switch {
		case name == whiteoutOpaque || strings.HasPrefix(name, whiteoutMeta):
		case strings.HasPrefix(name, whiteoutPrefix):
			target := strings.TrimPrefix(name, whiteoutPrefix)
			if target == "" || target == "." || target == ".." || strings.Contains(target, "/") {
				continue
			}
			if err := os.RemoveAll(filepath.Join(dst, target)); err != nil {
				return err
			}
		case e.Type()&fs.ModeCharDevice != 0 && isWhiteoutDevice(filepath.Join(src, name)):
			if err := os.RemoveAll(filepath.Join(dst, name)); err != nil {
				return err
			}
		default:
			rest = append(rest, e)
		}
	}
	for _, e := range rest {
		if err := c.entry(ctx, filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

func (c *copier) entry(ctx context.Context, src, dst string) error {
	st, err := lstat(src)
	if err != nil {
		return err
	}
	if st.mode.IsDir() {
		fi, err := os.Lstat(dst)
		switch {
		case err == nil && fi.IsDir():
		case err == nil || !errors.Is(err, fs.ErrNotExist):
			if err := os.RemoveAll(dst); err != nil {
				return err
			}
			fallthrough
		default:
			if err := os.Mkdir(dst, 0o755); err != nil {
				return err
			}
		}
		if err := c.dir(ctx, src, dst); err != nil {
			return err
		}
		return c.meta(src, dst, st)
	}
	if err := os.RemoveAll(dst); err != nil {
		return err
	}
	switch {
	case st.mode.IsRegular():
		if st.nlink > 1 {
			key := inode{st.dev, st.ino}
			if first, ok := c.links[key]; ok {
				return os.Link(first, dst)
			}
			c.links[key] = dst
		}
		if err := copyFile(src, dst); err != nil {
			return err
		}
	case st.mode&fs.ModeSymlink != 0:
		target, err := os.Readlink(src)
		if err != nil {
			return err
		}
		if err := os.Symlink(target, dst); err != nil {
			return err
		}
	default:
		if err := mknodLike(dst, st); err != nil {
			if isPermission(err) {
				c.log.Warn("skipping a device node: not permitted here", "path", dst)
				return nil
			}
			return err
		}
	}
	return c.meta(src, dst, st)
}

func copyFile(src, dst string) error {
	in, err := os.OpenFile(src, os.O_RDONLY|oNoFollow, 0)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL|oNoFollow, 0o600)
	if err != nil {
		return err
	}
	// Between two files io.Copy lets the kernel copy (copy_file_range).
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("copying %s: %w", src, err)
	}
	return nil
}

// meta gives dst the ownership, mode, xattrs (but overlayfs's) and times of
// src.
func (c *copier) meta(src, dst string, st fileStat) error {
	if c.owner {
		if err := os.Lchown(dst, int(st.uid), int(st.gid)); err != nil {
			return err
		}
	}
	symlink := st.mode&fs.ModeSymlink != 0
	if !symlink {
		if err := chmod(dst, st.perm); err != nil {
			return err
		}
	}
	names, err := listXattrs(src)
	if err != nil {
		c.log.Debug("listing xattrs", "path", src, "err", err)
	}
	for _, name := range names {
		if strings.HasPrefix(name, overlayXattrs) {
			continue
		}
		v, err := getXattr(src, name)
		if err == nil {
			err = lsetxattr(dst, name, v)
		}
		if err != nil {
			c.log.Debug("skipping an xattr", "path", dst, "xattr", name, "err", err)
		}
	}
	return lutimes(dst, st.atime, st.mtime)
}
