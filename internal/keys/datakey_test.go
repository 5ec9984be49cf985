package keys

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func newUnlock(t *testing.T) []byte {
	s, err := NewUnlockKey()
	require.NoError(t, err)
	k, err := ParseUnlockKey(s)
	require.NoError(t, err)
	return k
}

func newDEK(t *testing.T) []byte {
	k, err := NewDataKey()
	require.NoError(t, err)
	require.Len(t, k, KeySize)
	return k
}

func keyPath(t *testing.T) string { return filepath.Join(t.TempDir(), "datakey.json") }

// assertOnlyFile checks that path is the only file in its directory (no temp files left) and
// has mode 0600.
func assertOnlyFile(t *testing.T, path string) {
	t.Helper()
	ents, err := os.ReadDir(filepath.Dir(path))
	require.NoError(t, err)
	require.Len(t, ents, 1, "temp files left behind")
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
}

func TestDataKeyPlainRoundTrip(t *testing.T) {
	path, dek := keyPath(t), newDEK(t)
	require.NoError(t, SaveDataKey(path, dek, nil))
	assertOnlyFile(t, path)
	got, err := LoadDataKey(path, nil)
	require.NoError(t, err)
	assert.Equal(t, dek, got)
	// An unlock key is not needed, and not checked, for a plain file.
	got, err = LoadDataKey(path, newUnlock(t))
	require.NoError(t, err)
	assert.Equal(t, dek, got)
	locked, err := IsLocked(path)
	require.NoError(t, err)
	assert.False(t, locked)
}

func TestDataKeyWrappedRoundTrip(t *testing.T) {
	path, dek, unlock := keyPath(t), newDEK(t), newUnlock(t)
	require.NoError(t, SaveDataKey(path, dek, unlock))
	assertOnlyFile(t, path)
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.NotContains(t, string(raw), string(dek))
	var f dataKeyFile
	require.NoError(t, json.Unmarshal(raw, &f))
	assert.True(t, f.Wrapped)
	assert.Equal(t, 1, f.Version)

	locked, err := IsLocked(path)
	require.NoError(t, err)
	assert.True(t, locked)
	got, err := LoadDataKey(path, unlock)
	require.NoError(t, err)
	assert.Equal(t, dek, got)
}

func TestDataKeyLockedAndWrongKey(t *testing.T) {
	path, dek, unlock := keyPath(t), newDEK(t), newUnlock(t)
	require.NoError(t, SaveDataKey(path, dek, unlock))

	_, err := LoadDataKey(path, nil)
	assert.ErrorIs(t, err, ErrLocked)
	assert.ErrorContains(t, err, path)

	_, err = LoadDataKey(path, newUnlock(t))
	assert.ErrorIs(t, err, ErrWrongUnlockKey)
	assert.NotErrorIs(t, err, errDamaged)
	assert.ErrorContains(t, err, path)

	_, err = LoadDataKey(path, unlock[:16])
	assert.ErrorIs(t, err, ErrInvalidUnlockKey)
}

func TestRewrapDataKey(t *testing.T) {
	path, dek := keyPath(t), newDEK(t)
	k1, k2 := newUnlock(t), newUnlock(t)
	require.NoError(t, SaveDataKey(path, dek, k1))

	require.NoError(t, RewrapDataKey(path, k1, k2))
	assertOnlyFile(t, path)
	_, err := LoadDataKey(path, k1)
	assert.ErrorIs(t, err, ErrWrongUnlockKey, "old unlock key still accepted")
	got, err := LoadDataKey(path, k2)
	require.NoError(t, err)
	assert.Equal(t, dek, got, "rewrap changed the data key")

	// A wrong or missing old key fails and leaves the file as it was.
	before, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.ErrorIs(t, RewrapDataKey(path, k1, newUnlock(t)), ErrWrongUnlockKey)
	assert.ErrorIs(t, RewrapDataKey(path, nil, newUnlock(t)), ErrLocked)
	assert.ErrorIs(t, RewrapDataKey(path, k2, []byte("short")), ErrInvalidUnlockKey)
	after, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, before, after)

	// Autolock off: plain, same key.
	require.NoError(t, RewrapDataKey(path, k2, nil))
	locked, err := IsLocked(path)
	require.NoError(t, err)
	assert.False(t, locked)
	got, err = LoadDataKey(path, nil)
	require.NoError(t, err)
	assert.Equal(t, dek, got)

	// Autolock on again from plain.
	k3 := newUnlock(t)
	require.NoError(t, RewrapDataKey(path, nil, k3))
	locked, err = IsLocked(path)
	require.NoError(t, err)
	assert.True(t, locked)
	got, err = LoadDataKey(path, k3)
	require.NoError(t, err)
	assert.Equal(t, dek, got)
	assertOnlyFile(t, path)
}

func TestRewrapUsesFreshSalt(t *testing.T) {
	path, dek, k := keyPath(t), newDEK(t), newUnlock(t)
	require.NoError(t, SaveDataKey(path, dek, k))
	a, err := os.ReadFile(path)
	require.NoError(t, err)
	require.NoError(t, RewrapDataKey(path, k, k))
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.NotEqual(t, a, b)
}

func TestSaveDataKeyValidates(t *testing.T) {
	path := keyPath(t)
	assert.ErrorContains(t, SaveDataKey(path, make([]byte, 16), nil), "data key must be 32 bytes, got 16")
	assert.ErrorIs(t, SaveDataKey(path, newDEK(t), make([]byte, 31)), ErrInvalidUnlockKey)
	_, err := os.Stat(path)
	assert.ErrorIs(t, err, os.ErrNotExist, "file written despite invalid input")
	assert.Error(t, SaveDataKey(filepath.Join(path, "no", "such", "dir"), newDEK(t), nil))
}

func TestSaveDataKeyReplaces(t *testing.T) {
	path := keyPath(t)
	require.NoError(t, os.WriteFile(path, []byte("old"), 0o644))
	dek := newDEK(t)
	require.NoError(t, SaveDataKey(path, dek, nil))
	assertOnlyFile(t, path)
	got, err := LoadDataKey(path, nil)
	require.NoError(t, err)
	assert.Equal(t, dek, got)
}

func TestDataKeyDamaged(t *testing.T) {
	valid := func(t *testing.T, wrapped bool) (string, []byte, dataKeyFile) {
		path := keyPath(t)
		var unlock []byte
		if wrapped {
			unlock = newUnlock(t)
		}
		require.NoError(t, SaveDataKey(path, newDEK(t), unlock))
		raw, err := os.ReadFile(path)
		require.NoError(t, err)
		var f dataKeyFile
		require.NoError(t, json.Unmarshal(raw, &f))
		return path, unlock, f
	}
	rewrite := func(t *testing.T, path string, f dataKeyFile, fixSum bool) {
		if fixSum {
			f.Checksum = f.checksum()
		}
		b, err := json.Marshal(f)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(path, b, 0o600))
	}
	flip := func(s string) string {
		b := []byte(s)
		if b[3] == 'A' {
			b[3] = 'B'
		} else {
			b[3] = 'A'
		}
		return string(b)
	}

	tests := []struct {
		name    string
		wrapped bool
		damage  func(t *testing.T, path string, f dataKeyFile)
		want    string
	}{
		{"empty file", false, func(t *testing.T, path string, _ dataKeyFile) {
			require.NoError(t, os.WriteFile(path, nil, 0o600))
		}, "not a data key file"},
		{"truncated", true, func(t *testing.T, path string, _ dataKeyFile) {
			raw, _ := os.ReadFile(path)
			require.NoError(t, os.WriteFile(path, raw[:len(raw)/2], 0o600))
		}, "not a data key file"},
		{"garbage", false, func(t *testing.T, path string, _ dataKeyFile) {
			require.NoError(t, os.WriteFile(path, []byte{0xde, 0xad, 0xbe, 0xef}, 0o600))
		}, "not a data key file"},
		{"plain key flipped", false, func(t *testing.T, path string, f dataKeyFile) {
			f.Key = flip(f.Key)
			rewrite(t, path, f, false)
		}, "checksum mismatch"},
		{"wrapped key flipped", true, func(t *testing.T, path string, f dataKeyFile) {
			f.Key = flip(f.Key)
			rewrite(t, path, f, false)
		}, "checksum mismatch"},
		{"salt flipped", true, func(t *testing.T, path string, f dataKeyFile) {
			f.Salt = flip(f.Salt)
			rewrite(t, path, f, false)
		}, "checksum mismatch"},
		{"wrapped flag cleared", true, func(t *testing.T, path string, f dataKeyFile) {
			f.Wrapped = false
			rewrite(t, path, f, false)
		}, "checksum mismatch"},
		{"missing checksum", false, func(t *testing.T, path string, f dataKeyFile) {
			f.Checksum = ""
			rewrite(t, path, f, false)
		}, "checksum mismatch"},
		{"short plain key", false, func(t *testing.T, path string, f dataKeyFile) {
			f.Key = "AAAA"
			rewrite(t, path, f, true)
		}, "key of 3 bytes"},
		{"bad base64", false, func(t *testing.T, path string, f dataKeyFile) {
			f.Key = "!!!!"
			rewrite(t, path, f, true)
		}, "illegal base64"},
		{"short salt", true, func(t *testing.T, path string, f dataKeyFile) {
			f.Salt = "AAAA"
			rewrite(t, path, f, true)
		}, "salt of 3 bytes"},
		{"no version", false, func(t *testing.T, path string, f dataKeyFile) {
			f.Version = 0
			rewrite(t, path, f, true)
		}, "format version"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path, unlock, f := valid(t, tt.wrapped)
			tt.damage(t, path, f)
			_, err := LoadDataKey(path, unlock)
			require.Error(t, err)
			assert.ErrorIs(t, err, errDamaged)
			assert.ErrorContains(t, err, path)
			assert.ErrorContains(t, err, tt.want)
			assert.NotErrorIs(t, err, ErrWrongUnlockKey)
			_, err = IsLocked(path)
			if tt.name != "short plain key" && tt.name != "bad base64" && tt.name != "short salt" {
				assert.ErrorIs(t, err, errDamaged)
			}
			assert.ErrorIs(t, RewrapDataKey(path, unlock, newUnlock(t)), errDamaged)
		})
	}
}

func TestDataKeyFutureVersion(t *testing.T) {
	path := keyPath(t)
	f := dataKeyFile{Version: 99, Key: "AAAA"}
	f.Checksum = f.checksum()
	b, err := json.Marshal(f)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path, b, 0o600))
	_, err = LoadDataKey(path, nil)
	assert.ErrorContains(t, err, "unsupported data key file version 99")
	assert.ErrorContains(t, err, path)
}

func TestDataKeyMissingFile(t *testing.T) {
	path := keyPath(t)
	_, err := LoadDataKey(path, nil)
	assert.ErrorIs(t, err, os.ErrNotExist)
	assert.ErrorContains(t, err, path)
	_, err = IsLocked(path)
	assert.ErrorIs(t, err, os.ErrNotExist)
}
