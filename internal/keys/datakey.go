package keys

import (
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// dataKeyFileVersion is the version of the data key file layout written by SaveDataKey.
const dataKeyFileVersion = 1

// wrapInfo is the HKDF info string that derives the wrapping key from an unlock key; a new
// wrapping scheme must use a new string (and file version).
const wrapInfo = "shoal data key wrap v1"

// saltSize is the length of the random HKDF salt stored in a wrapped file: a fresh salt per
// write means the same unlock key never derives the same wrapping key twice.
const saltSize = 32

// errDamaged is wrapped by errors about a data key file that cannot be read as one (not the
// format, bad checksum, wrong sizes). The message names the file.
var errDamaged = errors.New("damaged data key file")

// dataKeyFile is the JSON form of the file.
type dataKeyFile struct {
	// Version is dataKeyFileVersion.
	Version int `json:"version"`
	// Wrapped is true when Key is sealed with a key derived from an unlock key (autolock).
	Wrapped bool `json:"wrapped"`
	// Salt is the HKDF salt for the wrapping key; only when Wrapped.
	Salt string `json:"salt,omitempty"`
	// Key is the data key (plain) or the sealed data key (Wrapped), in standard base64.
	Key string `json:"key"`
	// Checksum is the hex SHA-256 of the fields above (see checksum), so that damage to the
	// file is told apart from a wrong unlock key.
	Checksum string `json:"checksum"`
}

func (f *dataKeyFile) checksum() string {
	h := sha256.New()
	fmt.Fprintf(h, "shoal data key file\x00%d\x00%t\x00%s\x00%s", f.Version, f.Wrapped, f.Salt, f.Key)
	return hex.EncodeToString(h.Sum(nil))
}

func damaged(path, format string, args ...any) error {
	return fmt.Errorf("keys: %s: %w: %s", path, errDamaged, fmt.Sprintf(format, args...))
}

// NewDataKey returns a new random 32-byte data encryption key.
func NewDataKey() ([]byte, error) {
	k := make([]byte, KeySize)
	if _, err := rand.Read(k); err != nil {
		return nil, fmt.Errorf("keys: generating data key: %w", err)
	}
	return k, nil
}

// wrapCipher derives the Cipher that wraps a data key from the unlock key and salt.
func wrapCipher(unlockKey, salt []byte) (*Cipher, error) {
	k, err := hkdf.Key(sha256.New, unlockKey, salt, wrapInfo, KeySize)
	if err != nil {
		return nil, fmt.Errorf("keys: deriving wrapping key: %w", err)
	}
	return NewCipher(k)
}

// wrapAD is the additional data of the sealed data key: it binds the blob to its purpose and
// to the salt stored beside it.
func wrapAD(salt []byte) []byte {
	return append([]byte(wrapInfo+"\x00"), salt...)
}

func checkUnlockKey(field string, k []byte) error {
	if k != nil && len(k) != KeySize {
		return fmt.Errorf("%w: %s must be nil or %d bytes, got %d", ErrInvalidUnlockKey, field, KeySize, len(k))
	}
	return nil
}

// SaveDataKey writes the data key dek to path, replacing any file there. With a nil unlockKey
// the key is stored plain; otherwise it is wrapped (autolock): sealed with XChaCha20-Poly1305
// under a key derived from unlockKey by HKDF-SHA256 with a fresh random salt. The file has mode
// 0600 and is written atomically: a temporary file in the same directory is written and
// fsynced, renamed over path, and the directory is fsynced, so a crash leaves either the old
// file or the new one. Nothing is written if dek or unlockKey has the wrong size.
func SaveDataKey(path string, dek []byte, unlockKey []byte) error {
	if len(dek) != KeySize {
		return fmt.Errorf("keys: data key must be %d bytes, got %d", KeySize, len(dek))
	}
	if err := checkUnlockKey("unlock key", unlockKey); err != nil {
		return err
	}
	f := dataKeyFile{Version: dataKeyFileVersion}
	if unlockKey == nil {
		f.Key = base64.StdEncoding.EncodeToString(dek)
	} else {
		salt := make([]byte, saltSize)
		if _, err := rand.Read(salt); err != nil {
			return fmt.Errorf("keys: generating salt: %w", err)
		}
		c, err := wrapCipher(unlockKey, salt)
		if err != nil {
			return err
		}
		f.Wrapped = true
		f.Salt = base64.StdEncoding.EncodeToString(salt)
		f.Key = base64.StdEncoding.EncodeToString(c.Seal(dek, wrapAD(salt)))
	}
	f.Checksum = f.checksum()
	b, err := json.MarshalIndent(&f, "", "  ")
	if err != nil {
		return fmt.Errorf("keys: encoding data key file: %w", err)
	}
	return writeFileAtomic(path, append(b, '\n'))
}

// writeFileAtomic replaces path with data (mode 0600) so that a crash leaves the old or the new
// content, never a mix: temp file, fsync, rename, fsync of the directory.
func writeFileAtomic(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("keys: writing %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	// CreateTemp already uses 0600; Chmod makes it independent of that detail.
	if err := tmp.Chmod(0o600); err != nil {
		return fmt.Errorf("keys: writing %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("keys: writing %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("keys: writing %s: fsync: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("keys: writing %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("keys: writing %s: %w", path, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("keys: writing %s: opening directory for fsync: %w", path, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("keys: writing %s: fsync of directory: %w", path, err)
	}
	return nil
}

// readDataKeyFile reads and checks the file's structure and checksum.
func readDataKeyFile(path string) (*dataKeyFile, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("keys: reading data key file: %w", err)
	}
	var f dataKeyFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, damaged(path, "not a data key file: %v", err)
	}
	if f.Version != dataKeyFileVersion {
		if f.Version <= 0 {
			return nil, damaged(path, "missing or invalid format version %d", f.Version)
		}
		return nil, fmt.Errorf("keys: %s: unsupported data key file version %d (this build reads version %d)", path, f.Version, dataKeyFileVersion)
	}
	if subtle.ConstantTimeCompare([]byte(f.Checksum), []byte(f.checksum())) != 1 {
		return nil, damaged(path, "checksum mismatch")
	}
	return &f, nil
}

// LoadDataKey reads the data key file at path and returns the data key. For a wrapped
// (autolocked) file, unlockKey must be the unlock key it was wrapped with: nil gives an error
// matching ErrLocked, a different key one matching ErrWrongUnlockKey. For a plain file,
// unlockKey is ignored. A file that is damaged or not a data key file gives an error naming
// path.
func LoadDataKey(path string, unlockKey []byte) ([]byte, error) {
	if err := checkUnlockKey("unlock key", unlockKey); err != nil {
		return nil, err
	}
	f, err := readDataKeyFile(path)
	if err != nil {
		return nil, err
	}
	key, err := base64.StdEncoding.DecodeString(f.Key)
	if err != nil {
		return nil, damaged(path, "key: %v", err)
	}
	if !f.Wrapped {
		if f.Salt != "" {
			return nil, damaged(path, "plain key with a salt")
		}
		if len(key) != KeySize {
			return nil, damaged(path, "key of %d bytes, want %d", len(key), KeySize)
		}
		return key, nil
	}
	salt, err := base64.StdEncoding.DecodeString(f.Salt)
	if err != nil {
		return nil, damaged(path, "salt: %v", err)
	}
	if len(salt) != saltSize {
		return nil, damaged(path, "salt of %d bytes, want %d", len(salt), saltSize)
	}
	if len(key) != KeySize+Overhead {
		return nil, damaged(path, "wrapped key of %d bytes, want %d", len(key), KeySize+Overhead)
	}
	if unlockKey == nil {
		return nil, fmt.Errorf("keys: %s: %w", path, ErrLocked)
	}
	c, err := wrapCipher(unlockKey, salt)
	if err != nil {
		return nil, err
	}
	dek, err := c.Open(key, wrapAD(salt))
	if err != nil {
		// The checksum passed, so the bytes are as written: the key is what differs.
		return nil, fmt.Errorf("keys: %s: %w", path, ErrWrongUnlockKey)
	}
	if len(dek) != KeySize {
		return nil, damaged(path, "unwrapped key of %d bytes, want %d", len(dek), KeySize)
	}
	return dek, nil
}

// IsLocked reports whether the data key file at path is wrapped with an unlock key (autolock),
// so that LoadDataKey needs one. A damaged file is an error naming path.
func IsLocked(path string) (bool, error) {
	f, err := readDataKeyFile(path)
	if err != nil {
		return false, err
	}
	return f.Wrapped, nil
}

// RewrapDataKey rotates the unlock key of the data key file at path: the data key is opened
// with oldUnlockKey (ignored for a plain file) and written again wrapped with newUnlockKey, or
// plain if newUnlockKey is nil. A nil oldUnlockKey on a wrapped file fails with ErrLocked; a
// non-nil newUnlockKey on a plain file turns autolock on. The data key itself is unchanged, so
// nothing sealed with it needs re-encrypting. The file is replaced atomically; on any error it
// is left as it was.
func RewrapDataKey(path string, oldUnlockKey, newUnlockKey []byte) error {
	if err := checkUnlockKey("new unlock key", newUnlockKey); err != nil {
		return err
	}
	dek, err := LoadDataKey(path, oldUnlockKey)
	if err != nil {
		return err
	}
	defer clear(dek)
	return SaveDataKey(path, dek, newUnlockKey)
}
