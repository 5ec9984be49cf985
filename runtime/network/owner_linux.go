package network

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ownerDir holds one lock file per bridge in use on this machine, named
// after the bridge and its host namespace. A Bridge holds its file's lock
// (flock, so the kernel drops it when the process dies) from Setup to
// Close or Teardown: two Bridges with different state directories would
// hand out the same addresses on one bridge, so the second is refused (one
// on the same state directory is the same runtime started again, and
// shares the leases).
const ownerDir = "/run/shoal-network"

// ownerLock is the lock a Bridge holds on its bridge.
type ownerLock struct{ f *os.File }

// lockOwner takes the bridge's lock for this Bridge, or says which state
// directory holds it. Called with sem held and the host namespace open.
func (b *Bridge) lockOwner() error {
	if b.owner != nil {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(b.hostNS), &st); err != nil {
		return fmt.Errorf("network: the host namespace: %w", err)
	}
	if err := os.MkdirAll(ownerDir, 0o700); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	path := filepath.Join(ownerDir, fmt.Sprintf("%s@%d.lock", b.cfg.Bridge, st.Ino))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("network: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		owner, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) && strings.TrimSpace(string(owner)) == b.cfg.StateDir {
			// A Bridge on the same state directory shares its leases:
			// the same runtime, started again in this process.
			return nil
		}
		if errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("network: Config.Bridge: %s is in use by another runtime (state directory %s): give each node of a machine its own bridge and subnet", b.cfg.Bridge, strings.TrimSpace(string(owner)))
		}
		return fmt.Errorf("network: locking %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(b.cfg.StateDir+"\n"), 0)
	}
	b.owner = &ownerLock{f: f}
	return nil
}

// unlockOwner releases the bridge's lock. Called with sem held.
func (b *Bridge) unlockOwner() {
	if b.owner != nil {
		_ = b.owner.f.Close()
		b.owner = nil
	}
}
