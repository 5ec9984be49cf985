//go:build !linux

package image

import (
	"errors"
	"os"
	"time"
)

// The store needs Linux (overlayfs, whiteout devices, trusted xattrs); New
// refuses to make one elsewhere, so nothing below is reached by a Store.
// LookupUser and Resolve work everywhere.

var errNeedsLinux = errors.New("image: the image store needs Linux")

func platformError() error { return errNeedsLinux }

const (
	oNoFollow = 0
	oNonblock = 0
)

func isRoot() bool                                   { return false }
func isPermission(err error) bool                    { return errors.Is(err, os.ErrPermission) }
func mknod(string, byte, uint32, int64, int64) error { return errNeedsLinux }
func chmod(p string, mode uint32) error              { return os.Chmod(p, os.FileMode(mode&0o777)) }
func lsetxattr(string, string, []byte) error         { return errNeedsLinux }
func lutimes(p string, atime, mtime time.Time) error {
	return os.Chtimes(p, atime, mtime)
}
func setOpaque(string) error                              { return errNeedsLinux }
func isOpaque(string) bool                                { return false }
func syncFS(string) error                                 { return errNeedsLinux }
func lockDir(string) (*os.File, error)                    { return nil, errNeedsLinux }
func probeWhiteoutFormat(string) whiteoutFormat           { return formatMarker }
func isMountpoint(string) (bool, error)                   { return false, errNeedsLinux }
func mountOverlay([]string, string, string, string) error { return errNeedsLinux }
func overlayUnavailable(error) bool                       { return true }
func unmount(string) error                                { return nil }
func mountsUnder(string) ([]string, error)                { return nil, errNeedsLinux }
func isWhiteoutDevice(string) bool                        { return false }
func listXattrs(string) ([]string, error)                 { return nil, errNeedsLinux }
func getXattr(string, string) ([]byte, error)             { return nil, errNeedsLinux }
func mknodLike(string, fileStat) error                    { return errNeedsLinux }

type fileStat struct {
	mode         os.FileMode
	perm         uint32
	uid, gid     uint32
	dev, ino     uint64
	nlink        uint64
	rdev         uint64
	atime, mtime time.Time
}

func lstat(p string) (fileStat, error) {
	fi, err := os.Lstat(p)
	if err != nil {
		return fileStat{}, err
	}
	return fileStat{mode: fi.Mode(), perm: uint32(fi.Mode().Perm()), nlink: 1, mtime: fi.ModTime(), atime: fi.ModTime()}, nil
}
