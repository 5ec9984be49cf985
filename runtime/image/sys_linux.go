//go:build linux

package image

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const oNoFollow = unix.O_NOFOLLOW

func isRoot() bool { return os.Geteuid() == 0 }

func isPermission(err error) bool {
	return errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES)
}

func mknod(p string, typ byte, perm uint32, major, minor int64) error {
	mode := perm
	switch typ {
	case tar.TypeChar:
		mode |= unix.S_IFCHR
	case tar.TypeBlock:
		mode |= unix.S_IFBLK
	case tar.TypeFifo:
		mode |= unix.S_IFIFO
	}
	return unix.Mknod(p, mode, int(unix.Mkdev(uint32(major), uint32(minor))))
}

func chmod(p string, mode uint32) error {
	return unix.Chmod(p, mode)
}

func lsetxattr(p, name string, value []byte) error {
	return unix.Lsetxattr(p, name, value, 0)
}

func lutimes(p string, atime, mtime time.Time) error {
	ts := []unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
	if atime.IsZero() {
		ts[0] = unix.Timespec{Nsec: unix.UTIME_OMIT}
	}
	if mtime.IsZero() {
		ts[1] = unix.Timespec{Nsec: unix.UTIME_OMIT}
	}
	return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
}

func setOpaque(dir string) error {
	return unix.Lsetxattr(dir, opaqueXattr, []byte("y"), 0)
}

// isOpaque reports whether dir carries overlayfs's opaque xattr.
func isOpaque(dir string) bool {
	buf := make([]byte, 4)
	n, err := unix.Lgetxattr(dir, opaqueXattr, buf)
	return err == nil && n == 1 && buf[0] == 'y'
}

// syncFS flushes the filesystem holding p.
func syncFS(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}

// lockDir takes an exclusive lock on the file p, held until the file
// closes.
func lockDir(p string) (*os.File, error) {
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, errors.New("another image store uses this directory")
		}
		return nil, err
	}
	return f, nil
}

// probeWhiteoutFormat finds out whether overlayfs whiteouts can be made in
// dir: a 0/0 character device and a trusted.* xattr, both needing root.
func probeWhiteoutFormat(dir string) whiteoutFormat {
	p, err := os.MkdirTemp(dir, "probe-")
	if err != nil {
		return formatMarker
	}
	defer os.RemoveAll(p)
	if unix.Mknod(filepath.Join(p, "wh"), unix.S_IFCHR, 0) != nil {
		return formatMarker
	}
	if setOpaque(p) != nil || !isOpaque(p) {
		return formatMarker
	}
	return formatOverlay
}

// isMountpoint reports whether p is mounted on (its device differs from
// its parent's).
func isMountpoint(p string) (bool, error) {
	var st, parent unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return false, err
	}
	if err := unix.Lstat(filepath.Dir(p), &parent); err != nil {
		return false, err
	}
	return st.Dev != parent.Dev || st.Ino == parent.Ino, nil
}

// mountOverlay mounts an overlayfs at target: lowers are listed topmost
// first. Long lists, which do not fit mount(2)'s one page of options, go
// through the new mount API one layer at a time.
func mountOverlay(lowers []string, upper, work, target string) error {
	data := "lowerdir=" + joinColon(lowers) + ",upperdir=" + upper + ",workdir=" + work
	if len(data) < os.Getpagesize()-1 {
		return unix.Mount("overlay", target, "overlay", 0, data)
	}
	fd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("%d layers need the new mount API: %w", len(lowers), err)
	}
	defer unix.Close(fd)
	for _, l := range lowers {
		if err := unix.FsconfigSetString(fd, "lowerdir+", l); err != nil {
			return fmt.Errorf("overlay lowerdir+ %s: %w", l, err)
		}
	}
	if err := unix.FsconfigSetString(fd, "upperdir", upper); err != nil {
		return err
	}
	if err := unix.FsconfigSetString(fd, "workdir", work); err != nil {
		return err
	}
	if err := unix.FsconfigCreate(fd); err != nil {
		return err
	}
	mfd, err := unix.Fsmount(fd, unix.FSMOUNT_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(mfd)
	return unix.MoveMount(mfd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH)
}

func joinColon(s []string) string {
	out := ""
	for i, x := range s {
		if i > 0 {
			out += ":"
		}
		out += x
	}
	return out
}

// overlayUnavailable reports whether a mount error means overlayfs cannot
// be used here at all (so Mount copies instead).
func overlayUnavailable(err error) bool {
	return errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.EPERM) || errors.Is(err, unix.ENOSYS)
}

// unmount unmounts p if it is mounted; a busy mount is detached.
func unmount(p string) error {
	mounted, err := isMountpoint(p)
	if errors.Is(err, os.ErrNotExist) || (err == nil && !mounted) {
		return nil
	}
	if err != nil {
		return err
	}
	err = unix.Unmount(p, 0)
	if errors.Is(err, unix.EBUSY) {
		err = unix.Unmount(p, unix.MNT_DETACH)
	}
	if errors.Is(err, unix.EINVAL) {
		return nil
	}
	return err
}

// fileStat is what the copier needs of lstat(2).
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
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return fileStat{}, &os.PathError{Op: "lstat", Path: p, Err: err}
	}
	fi, err := os.Lstat(p)
	if err != nil {
		return fileStat{}, err
	}
	return fileStat{
		mode: fi.Mode(), perm: st.Mode & 0o7777, uid: st.Uid, gid: st.Gid,
		dev: st.Dev, ino: st.Ino, nlink: uint64(st.Nlink), rdev: st.Rdev,
		atime: time.Unix(st.Atim.Unix()), mtime: time.Unix(st.Mtim.Unix()),
	}, nil
}

// mknodLike makes at p a device node or fifo like st.
func mknodLike(p string, st fileStat) error {
	var mode uint32
	switch {
	case st.mode&os.ModeCharDevice != 0:
		mode = unix.S_IFCHR
	case st.mode&os.ModeDevice != 0:
		mode = unix.S_IFBLK
	case st.mode&os.ModeNamedPipe != 0:
		mode = unix.S_IFIFO
	case st.mode&os.ModeSocket != 0:
		mode = unix.S_IFSOCK
	default:
		return fmt.Errorf("%s: cannot copy a file of mode %v", p, st.mode)
	}
	return unix.Mknod(p, mode|st.perm, int(st.rdev))
}

// isWhiteoutDevice reports whether p is overlayfs's whiteout: a character
// device 0/0.
func isWhiteoutDevice(p string) bool {
	var st unix.Stat_t
	return unix.Lstat(p, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0
}

func listXattrs(p string) ([]string, error) {
	sz, err := unix.Llistxattr(p, nil)
	if err != nil || sz == 0 {
		return nil, err
	}
	buf := make([]byte, sz)
	sz, err = unix.Llistxattr(p, buf)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, name := range bytes.Split(buf[:sz], []byte{0}) {
		if len(name) > 0 {
			out = append(out, string(name))
		}
	}
	return out, nil
}

func getXattr(p, name string) ([]byte, error) {
	sz, err := unix.Lgetxattr(p, name, nil)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, sz)
	sz, err = unix.Lgetxattr(p, name, buf)
	if err != nil {
		return nil, err
	}
	return buf[:sz], nil
}

const oNonblock = unix.O_NONBLOCK

// platformError says why a Store cannot work here: never on Linux.
func platformError() error { return nil }

// mountsUnder lists the mount points at or below dir (from
// /proc/self/mountinfo), so that nothing is deleted through a mount.
func mountsUnder(dir string) ([]string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, line := range bytes.Split(b, []byte{'\n'}) {
		f := bytes.Fields(line)
		if len(f) < 5 {
			continue
		}
		p := unescapeMountinfo(string(f[4]))
		if p == dir || strings.HasPrefix(p, dir+"/") {
			out = append(out, p)
		}
	}
	return out, nil
}

// unescapeMountinfo decodes the octal escapes (\040 for a space) of a
// mountinfo path.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
