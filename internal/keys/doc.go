// Package keys holds a node's key material for encryption at rest: the data encryption key
// (DEK) that seals Raft entries and snapshots, the file that stores it, and the unlock keys
// that wrap it when autolock is on.
//
// # Data key
//
// NewDataKey makes a random 32-byte key and NewCipher turns it into a Cipher, which seals blobs
// with XChaCha20-Poly1305 and a random 24-byte nonce per blob (safe for any number of blobs
// under one key). Every blob is sealed with additional data naming its purpose and position,
// so a blob copied to another place in the file no longer opens.
//
// # Data key file
//
// SaveDataKey stores the data key in a small versioned JSON file (mode 0600, replaced
// atomically). Without autolock the key is stored plain and the file's protection is its
// permissions. With autolock the key is wrapped: sealed under a key derived by HKDF-SHA256 from
// an unlock key, which is not stored anywhere on the node. A node restarting with a wrapped
// file cannot read its own log until an operator supplies the unlock key (LoadDataKey returns
// ErrLocked without one, ErrWrongUnlockKey with the wrong one). RewrapDataKey rotates the
// unlock key, or turns autolock on or off, without changing the data key, so nothing else has
// to be re-encrypted.
//
// # Unlock keys
//
// An unlock key's text form is SHLKEY-1-<52 base-36 characters> (256 random bits); NewUnlockKey
// makes one and ParseUnlockKey checks one and returns its bytes. Errors from ParseUnlockKey
// never contain the key.
package keys
