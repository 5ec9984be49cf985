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
// are written to a temporary file and renamed; image records made by a
// pull are synced first, while leases are not (no container outlives a
// reboot), and the last use of an image, which only guides GC, is kept in
// memory and written by GC and Close: a container's start does not wait
// for the disk.
//
// # Pulling
//
// References are docker's: "nginx:1.13" is docker.io/library/nginx:1.13,
// and a reference with a digest ("name@sha256:...", "name:tag@sha256:...")
// fetches that digest. Registries are reached over HTTPS, except the hosts
// in Config.InsecureRegistries (plain HTTP is refused for every other host,
// token servers included). Credentials (runtime.RegistryAuth) serve basic
// and token authentication alike; registry errors keep the registry's own
// message and wrap ErrUnauthorized or ErrNotFound where they mean that.
// From an index the image of Config.Platform is taken: same OS and
// architecture, the same variant or, for arm and amd64 levels, the newest
// older one the node runs.
//
// Everything fetched is verified before it is kept: the manifest against
// its digest, the config against the manifest, each layer blob against its
// digest and size, and its uncompressed stream against the config's diff
// ID (ErrDigestMismatch otherwise). Layers are stored by diff ID, so a
// layer in the store is never fetched again, whichever image names it.
//
// # The unpacker
//
// Layers (gzip, zstd or uncompressed tar) are extracted by this package over
// archive/tar, into a directory of their own, with these rules:
//
//   - Every name is cleaned; an absolute name or one that climbs out ("../")
//     refuses the whole layer with ErrUnsafeLayer. Nothing is extracted
//     elsewhere.
//   - Symbolic links are made as they are, absolute targets included (they
//     resolve inside the container), but no path is ever resolved through
//     one: an entry whose parent is a symbolic link this layer made is
//     refused (not resolved), and so is an entry under a regular file.
//   - A hard link must name an entry already in the layer, through no
//     symbolic link, and not a directory.
//   - Whiteouts: ".wh.<name>" hides <name> of the lower layers and
//     ".wh..wh..opq" makes its directory opaque (other ".wh..wh." names are
//     aufs bookkeeping and dropped). A whiteout covers lower layers only: an
//     entry of the same layer with that name stays. As root they are stored
//     in overlayfs's form (a 0/0 character device; the
//     trusted.overlay.opaque=y xattr); otherwise the markers are kept as
//     empty files and only copy mode can use the layer. Layers may not set
//     trusted.overlay.* xattrs themselves: they are dropped.
//   - Modes (setuid, setgid and sticky bits included), modification and
//     access times, xattrs the filesystem accepts, and fifos are kept. Owners
//     and device nodes are kept when the store runs as root; otherwise files
//     belong to the store's user and device nodes are skipped (logged).
//
// # Root filesystems
//
// Mount makes a container's root filesystem and records a lease on disk
// first, so GC keeps the image while the container exists, across
// restarts. As root with overlayfs, it mounts the image's layers as lower
// directories (the new mount API takes lists too long for mount(2)) with an
// upper and work directory of the container's own; the mount is made
// again if it vanished (after a reboot). Otherwise (Config.DisableOverlay,
// no root, or a mount failing with EINVAL, ENODEV or EPERM) it copies the
// layers, lowest first, applying each one's whiteouts, into a directory of
// the container's own. Unmount removes it all, the lease last.
//
// # Garbage collection
//
// GC removes the images no lease holds that the policy names: those unused
// (no Mount, Unmount, pull or load) for GCPolicy.MaxUnusedAge by
// Config.Now, then the least recently used while the layers take more than
// GCPolicy.MaxBytes. Layers no remaining image uses go with them (so do
// layers a failed pull left); layers shared with a kept image, or needed
// by a pull or mount in progress, stay. Start runs GC every
// Config.GCInterval.
//
// # Cost
//
// Pulling costs one manifest and one config request, then one GET per
// missing layer, Config.MaxConcurrentDownloads at a time; each layer is
// hashed twice (blob and diff ID) on the way to disk and synced once
// (syncfs) before it counts. Mount in overlay mode costs one mount; copy
// mode copies every layer's files.
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
// any download in progress. One Store uses a Dir at a time.
//
// The store needs Linux; elsewhere New returns an error, while LookupUser
// and Resolve work.
package image
