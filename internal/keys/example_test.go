package keys_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/shoalhq/shoal/internal/keys"
)

// Example shows autolock end to end: a data key stored wrapped with an unlock key, a restart
// that finds the file locked, unlocking with the operator's key, and sealing a blob.
func Example() {
	dir, _ := os.MkdirTemp("", "keys-example")
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "datakey.json")

	text, _ := keys.NewUnlockKey() // shown once to the operator
	unlock, _ := keys.ParseUnlockKey(text)
	dek, _ := keys.NewDataKey()
	if err := keys.SaveDataKey(path, dek, unlock); err != nil {
		fmt.Println(err)
		return
	}

	// After a restart: the node has the file but not the unlock key.
	locked, _ := keys.IsLocked(path)
	_, err := keys.LoadDataKey(path, nil)
	fmt.Println("locked:", locked, errors.Is(err, keys.ErrLocked))

	// The operator supplies the key.
	dek, err = keys.LoadDataKey(path, unlock)
	if err != nil {
		fmt.Println(err)
		return
	}
	c, _ := keys.NewCipher(dek)
	sealed := c.Seal([]byte("raft entry 7"), []byte("entry/7"))
	plain, err := c.Open(sealed, []byte("entry/7"))
	fmt.Println(string(plain), err)
	_, err = c.Open(sealed, []byte("entry/8"))
	fmt.Println("moved blob opens:", err == nil)
	// Output:
	// locked: true true
	// raft entry 7 <nil>
	// moved blob opens: false
}

// ExampleRewrapDataKey rotates the unlock key: the old key stops working, the new one works,
// and the data key is the same.
func ExampleRewrapDataKey() {
	dir, _ := os.MkdirTemp("", "keys-example")
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "datakey.json")

	oldText, _ := keys.NewUnlockKey()
	oldKey, _ := keys.ParseUnlockKey(oldText)
	dek, _ := keys.NewDataKey()
	_ = keys.SaveDataKey(path, dek, oldKey)

	newText, _ := keys.NewUnlockKey()
	newKey, _ := keys.ParseUnlockKey(newText)
	if err := keys.RewrapDataKey(path, oldKey, newKey); err != nil {
		fmt.Println(err)
		return
	}
	_, err := keys.LoadDataKey(path, oldKey)
	fmt.Println("old key:", errors.Is(err, keys.ErrWrongUnlockKey))
	got, _ := keys.LoadDataKey(path, newKey)
	fmt.Println("same data key:", string(got) == string(dek))
	// Output:
	// old key: true
	// same data key: true
}

// ExampleParseUnlockKey shows that errors name the rule and never echo the key.
func ExampleParseUnlockKey() {
	_, err := keys.ParseUnlockKey("SHLKEY-1-tooshort")
	fmt.Println(err)
	fmt.Println(errors.Is(err, keys.ErrInvalidUnlockKey))
	// Output:
	// keys: invalid unlock key: key part must be 52 characters, got 8
	// true
}
