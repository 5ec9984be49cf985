package image

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
)

// containerID is what Mount accepts as a container id: one path element.
var containerID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

func validateID(id string) error {
	if !containerID.MatchString(id) {
		return fmt.Errorf("image: container id: must be 1 to 128 letters, digits, '_', '.', '-', starting with a letter or digit, got %q", id)
	}
	return nil
}

// Mount gives the container id a root filesystem of image (a reference or
// digest, as Get takes) and returns its path. With overlayfs it is a mount
// whose lower directories are the image's unpacked layers, shared by every
// container of the image, and whose upper and work directories are the
// container's own under Dir. Where overlayfs is unavailable (the mount
// fails with EINVAL, ENODEV or EPERM, the layers could not be unpacked in
// overlayfs's format for want of root, or Config.DisableOverlay), the layers
// are copied into a directory of the container's own instead.
//
// Mount records a lease on disk before it mounts, so GC never removes an
// image a container uses, across restarts of the program. It is idempotent
// per id: a second call returns the same path, mounting again if the mount
// vanished (after a reboot). Mounting another image for an id that has one
// is an error. Calls for one id are serialized.
func (s *Store) Mount(ctx context.Context, image, id string) (rootfs string, err error) {
	if err := validateID(id); err != nil {
		return "", err
	}
	if err := s.open(); err != nil {
		return "", err
	}
	unlock, err := s.ids.lock(ctx, id)
	if err != nil {
		return "", err
	}
	defer unlock()

	l, rec, fresh, err := s.lease(image, id)
	if err != nil {
		return "", err
	}
	s.pin(rec.Layers)
	defer s.unpin(rec.Layers)
	dir := s.containerDir(id)
	if l.Mode == modeOverlay {
		merged := filepath.Join(dir, "merged")
		err := s.mountOverlay(rec, dir)
		if err == nil {
			return merged, nil
		}
		if !fresh || !overlayUnavailable(err) {
			return "", fmt.Errorf("image: mount %s for %s: %w", rec.Digest, id, err)
		}
		s.log.Warn("overlayfs is unavailable; copying the layers instead", "container", id, "err", err)
		for _, d := range []string{"merged", "upper", "work"} {
			os.RemoveAll(filepath.Join(dir, d))
		}
		l.Mode = modeCopy
		if err := s.writeLease(l); err != nil {
			return "", err
		}
	}
	root := filepath.Join(dir, "rootfs")
	if l.Complete {
		if _, err := os.Lstat(root); err == nil {
			return root, nil
		}
	}
	if err := s.copyRootfs(ctx, rec, dir); err != nil {
		return "", fmt.Errorf("image: copying %s for %s: %w", rec.Digest, id, err)
	}
	l.Complete = true
	if err := s.writeLease(l); err != nil {
		return "", err
	}
	return root, nil
}

// lease finds or makes the lease of id on image; fresh says it is new.
func (s *Store) lease(image, id string) (*lease, *imageRecord, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l, ok := s.leases[id]; ok {
		rec, found := s.images[l.Image]
		if !found {
			return nil, nil, false, fmt.Errorf("image: container %s: its image %s is gone: %w", id, l.Image, ErrNotFound)
		}
		if want, _, err := s.findLocked(image); err != nil || want.Digest != l.Image {
			return nil, nil, false, fmt.Errorf("image: container %s already has a root filesystem of %s", id, l.Image)
		}
		cp := *l
		return &cp, rec, false, nil
	}
	rec, _, err := s.findLocked(image)
	if err != nil {
		return nil, nil, false, fmt.Errorf("image: mount: %w", err)
	}
	mode := modeOverlay
	if s.cfg.DisableOverlay || !isRoot() || len(rec.Layers) == 0 {
		mode = modeCopy
	}
	for _, d := range rec.Layers {
		if s.layers[d].Format != formatOverlay {
			mode = modeCopy
		}
	}
	l := &lease{ID: id, Image: rec.Digest, Mode: mode, Created: s.now()}
	if err := os.MkdirAll(s.containerDir(id), 0o700); err != nil {
		return nil, nil, false, err
	}
	if err := writeHint(filepath.Join(s.containerDir(id), "lease.json"), l); err != nil {
		os.RemoveAll(s.containerDir(id))
		return nil, nil, false, err
	}
	s.leases[id] = l
	s.touchLocked(rec.Digest)
	cp := *l
	return &cp, rec, true, nil
}

func (s *Store) writeLease(l *lease) error {
	if err := writeHint(filepath.Join(s.containerDir(l.ID), "lease.json"), l); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	cp := *l
	s.leases[l.ID] = &cp
	return nil
}

// mountOverlay mounts the container's overlay in dir unless it is mounted.
func (s *Store) mountOverlay(rec *imageRecord, dir string) error {
	merged := filepath.Join(dir, "merged")
	for _, d := range []string{"upper", "work", "merged"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	mounted, err := isMountpoint(merged)
	if err != nil {
		return err
	}
	if mounted {
		return nil
	}
	lowers := make([]string, 0, len(rec.Layers))
	for i := len(rec.Layers) - 1; i >= 0; i-- {
		lowers = append(lowers, s.layerFS(rec.Layers[i]))
	}
	return s.mountFn(lowers, filepath.Join(dir, "upper"), filepath.Join(dir, "work"), merged)
}

// copyRootfs copies rec's layers, lowest first, into dir/rootfs through a
// temporary directory, so a crash never leaves a partial copy in place.
func (s *Store) copyRootfs(ctx context.Context, rec *imageRecord, dir string) error {
	root := filepath.Join(dir, "rootfs")
	tmp := filepath.Join(dir, "rootfs.tmp")
	for _, p := range []string{root, tmp} {
		if err := os.RemoveAll(p); err != nil {
			return err
		}
	}
	if err := os.Mkdir(tmp, 0o755); err != nil {
		return err
	}
	c := newCopier(s.log)
	for _, d := range rec.Layers {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := c.layer(ctx, s.layerFS(d), tmp); err != nil {
			return err
		}
	}
	return os.Rename(tmp, root)
}

// Unmount removes the root filesystem of container id (unmounting it,
// deleting its upper directory or copy) and then its lease. It is
// idempotent: an unknown id is no error.
func (s *Store) Unmount(ctx context.Context, id string) error {
	if err := validateID(id); err != nil {
		return err
	}
	if err := s.open(); err != nil {
		return err
	}
	unlock, err := s.ids.lock(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	dir := s.containerDir(id)
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		s.mu.Lock()
		delete(s.leases, id)
		s.mu.Unlock()
		return nil
	}
	if err := unmount(filepath.Join(dir, "merged")); err != nil {
		return fmt.Errorf("image: unmount %s: %w", id, err)
	}
	if err := removeContainerDir(dir); err != nil {
		return fmt.Errorf("image: unmount %s: %w", id, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if l, ok := s.leases[id]; ok {
		delete(s.leases, id)
		s.touchLocked(l.Image)
	}
	return nil
}

// removeContainerDir deletes a container's directory, its lease last, so
// that a crash midway leaves the lease for the next Unmount. It deletes
// nothing while something is mounted below the directory (a volume a
// runtime left bind-mounted into the root filesystem would be deleted
// through the mount).
func removeContainerDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := unmount(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	mounts, err := mountsUnder(dir)
	if err != nil {
		return err
	}
	if len(mounts) > 0 {
		return fmt.Errorf("%s is still mounted; nothing is deleted through a mount", mounts[0])
	}
	for _, e := range entries {
		if e.Name() == "lease.json" {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return os.RemoveAll(dir)
}

// leasedImages returns the images leases hold. The caller holds mu.
func (s *Store) leasedImagesLocked() map[string]bool {
	out := make(map[string]bool, len(s.leases))
	for _, l := range s.leases {
		out[l.Image] = true
	}
	return out
}
