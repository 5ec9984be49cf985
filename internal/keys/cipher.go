package keys

import (
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"

	"golang.org/x/crypto/chacha20poly1305"
)

// sealedVersion is the first byte of every blob Cipher.Seal returns, so that the layout
// (version, 24-byte nonce, ciphertext with its 16-byte tag) can change later without guessing.
const sealedVersion byte = 1

// Overhead is how many bytes Cipher.Seal adds to a plaintext: a version byte, the nonce and the
// authentication tag.
const Overhead = 1 + chacha20poly1305.NonceSizeX + chacha20poly1305.Overhead

// errOpen is returned by Cipher.Open for a blob that does not authenticate: a different key,
// different additional data, or damaged bytes (which an AEAD cannot tell apart).
var errOpen = errors.New("keys: cannot open sealed data: wrong key, wrong additional data, or damaged")

// Cipher seals and opens blobs with a data key, using XChaCha20-Poly1305 with a random 24-byte
// nonce per blob (random nonces of that size are safe for any number of blobs under one key).
// The additional data given to Seal must be given again to Open: callers bind it to the blob's
// purpose and position (e.g. "entry" and a log index) so that sealed blobs cannot be swapped or
// replayed elsewhere. A Cipher is safe for concurrent use.
type Cipher struct {
	aead cipher.AEAD
}

// NewCipher returns a Cipher for the 32-byte data key dek. The key is copied.
func NewCipher(dek []byte) (*Cipher, error) {
	if len(dek) != KeySize {
		return nil, fmt.Errorf("keys: data key must be %d bytes, got %d", KeySize, len(dek))
	}
	aead, err := chacha20poly1305.NewX(dek)
	if err != nil {
		return nil, fmt.Errorf("keys: data key: %w", err)
	}
	return &Cipher{aead: aead}, nil
}

// Seal encrypts and authenticates plaintext, authenticates additionalData (which is not
// included in the result), and returns a new slice of len(plaintext)+Overhead bytes.
func (c *Cipher) Seal(plaintext, additionalData []byte) []byte {
	out := make([]byte, 1+chacha20poly1305.NonceSizeX, Overhead+len(plaintext))
	out[0] = sealedVersion
	nonce := out[1:]
	// crypto/rand.Read never returns an error (it crashes the program if the system's
	// generator fails), so a nonce is never reused by accident.
	_, _ = rand.Read(nonce)
	return c.aead.Seal(out, nonce, plaintext, additionalData)
}

// Open authenticates and decrypts a blob returned by Seal with the same additional data. It
// returns an error, never partial data, if the key, the additional data or any byte differs.
func (c *Cipher) Open(ciphertext, additionalData []byte) ([]byte, error) {
	if len(ciphertext) < Overhead {
		return nil, fmt.Errorf("keys: sealed data of %d bytes is shorter than the %d-byte minimum", len(ciphertext), Overhead)
	}
	if v := ciphertext[0]; v != sealedVersion {
		return nil, fmt.Errorf("keys: sealed data has unknown format version %d", v)
	}
	nonce := ciphertext[1 : 1+chacha20poly1305.NonceSizeX]
	pt, err := c.aead.Open(nil, nonce, ciphertext[1+chacha20poly1305.NonceSizeX:], additionalData)
	if err != nil {
		return nil, errOpen
	}
	if pt == nil {
		pt = []byte{}
	}
	return pt, nil
}
