package network

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// runIn runs f on an OS thread moved into the network namespace ns and
// waits for it. f runs on a goroutine of its own, locked to its thread: if
// the thread cannot be moved back, the goroutine ends still locked and the
// Go runtime ends the thread with it instead of reusing it in the wrong
// namespace. Whatever f opens (sockets, files under /proc/sys/net) belongs
// to ns.
func runIn(ns netns.NsHandle, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("network: open this thread's namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("network: enter namespace: %w", err)
			return
		}
		ferr := f()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("network: return to the original namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// isNetnsMount reports whether path is a mounted network namespace (a
// file of the nsfs file system), not the empty file a mount leaves behind
// once it is gone, for example after a reboot.
func isNetnsMount(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, &fs.PathError{Op: "statfs", Path: path, Err: err}
	}
	return st.Type == unix.NSFS_MAGIC, nil
}

// ensureNetns makes path a bind mount of a network namespace: the one
// already mounted there, or a new one. The mount keeps the namespace alive
// without any process in it, and outlives this process.
func ensureNetns(path string) error {
	ok, err := isNetnsMount(path)
	if err != nil || ok {
		return err
	}
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o444)
	if err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open this thread's namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("unshare a network namespace: %w", err)
			return
		}
		self := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
		merr := unix.Mount(self, path, "", unix.MS_BIND, "")
		if merr != nil {
			merr = &fs.PathError{Op: "bind mount " + self, Path: path, Err: merr}
		}
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(merr, fmt.Errorf("return to the original namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- merr
	}()
	if err := <-errc; err != nil {
		_ = os.Remove(path)
		return err
	}
	return nil
}

// removeNetns unmounts the namespace at path and removes the file. The
// namespace itself ends once no process is in it. A path that is not
// mounted, or does not exist, is not an error.
func removeNetns(path string) error {
	for {
		err := unix.Unmount(path, unix.MNT_DETACH)
		if err == nil {
			// Mounts can be stacked if two Attach calls raced across
			// processes; take them all off.
			continue
		}
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			break
		}
		return &fs.PathError{Op: "unmount", Path: path, Err: err}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// writeSysctl sets the sysctl file under /proc/sys to value in the
// namespace ns, unless it holds value already. It reports whether it
// changed anything.
func writeSysctl(ns netns.NsHandle, name, value string) (changed bool, err error) {
	err = runIn(ns, func() error {
		path := "/proc/sys/" + name
		cur, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if string(trimNL(cur)) == value {
			return nil
		}
		changed = true
		return os.WriteFile(path, []byte(value+"\n"), 0o644)
	})
	if err != nil {
		return false, fmt.Errorf("network: sysctl %s=%s: %w", name, value, err)
	}
	return changed, nil
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}
