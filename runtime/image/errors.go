package image

import "errors"

// Sentinel errors. Errors returned by the store wrap one of them (test with
// errors.Is) together with the detail, such as the registry's own message.
var (
	// ErrNotFound: the image is not in the store (Get, Mount), or the
	// registry does not know the repository or manifest.
	ErrNotFound = errors.New("image not found")
	// ErrUnauthorized: the registry refused the credentials, or asked for
	// credentials where none were given.
	ErrUnauthorized = errors.New("unauthorized")
	// ErrDigestMismatch: content did not hash to the digest that names it
	// (a layer blob, its uncompressed diff ID, a config or a manifest).
	// Nothing of that content is kept.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrNoPlatform: an image index has no image for the node's platform.
	ErrNoPlatform = errors.New("no image for the platform")
	// ErrUnsafeLayer: a layer has an entry that would land outside the
	// layer, pass through a symbolic link, or hard-link to something outside
	// the layer. The layer is refused as a whole.
	ErrUnsafeLayer = errors.New("unsafe layer")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("image store closed")
	// ErrInvalidReference: the image reference does not parse.
	ErrInvalidReference = errors.New("invalid image reference")
)
