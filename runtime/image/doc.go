// Package image is Shoal's container image store: it pulls images from
// OCI and Docker registries (github.com/google/go-containerregistry),
// imports OCI image layouts and docker save tarballs, unpacks their layers
// once, and gives each container a root filesystem of an image, an
// overlayfs mount or, where overlayfs is unavailable, a copy.
//
// A host program can use it alone:
//
//	s, err := image.New(image.Config{Dir: "/var/lib/myapp/images"})
//	img, err := s.Pull(ctx, "nginx:1.25", runtime.RegistryAuth{})
//	rootfs, err := s.Mount(ctx, img.Digest, "container-1")
//	u, err := image.LookupUser(rootfs, img.Config.User)
//	...
//	err = s.Unmount(ctx, "container-1")
//
// # On disk
//
// Everything lives under Config.Dir:
//
//	lock                      held (flock) by the one Store using Dir
//	layers/<hex>/fs/          an unpacked layer, named by its diff ID
//	layers/<hex>/layer.json   its record: diff ID, size, whiteout format
//	images/<hex>.json         an image, named by its manifest digest: its
//	                          references, config, layers, last use
//	containers/<id>/lease.json  container id's lease on an image
//	containers/<id>/upper, work, merged   its overlayfs mount, or
//	containers/<id>/rootfs    its copy of the layers
//	tmp/                      unpacks and copies in progress; emptied when a
//	                          Store opens Dir
//
// A layer is unpacked into tmp/ and renamed into layers/ only once its blob
// and its uncompressed content have been verified and its files synced
// (syncfs), so a directory in layers/ with a layer.json is always a
// complete layer; one without is a leftover and removed at open. Records
// are written to a temporary file, synced and renamed.
//
// # Concurrency
//
// Every method of Store is safe for concurrent use. Concurrent pulls of one
// reference (with the same credentials) share one download, and concurrent
// needs for one layer share one unpack; each caller's context bounds its
// own wait only, and a download is cancelled when no caller waits for it
// any more. Mount and Unmount of one container id are serialized. GC never
// removes a layer a pull or mount in progress needs, nor an image a lease
// holds. New starts nothing; Start runs the GC loop and Close ends it and
// any download in progress.
package image
