package pki

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// File names inside a key pair directory.
const (
	CertFile = "node.crt"
	KeyFile  = "node.key"
	RootFile = "ca.crt"
)

// KeyPair is a node's key material as stored.
type KeyPair struct {
	CertPEM []byte // chain, leaf first
	KeyPEM  []byte
	RootPEM []byte // trusted roots (one or more certificates: during root rotation, both)
}

// SaveKeyPair writes dir/node.crt, dir/node.key and dir/ca.crt with mode 0600 (dir
// 0700), each atomically (temp file, fsync, rename, fsync dir). Roots are written first
// and the key before the certificate, so a crash in between leaves a set whose roots
// already trust the new certificate; a key and certificate that do not match are
// caught by NewCredentials on the next load.
func SaveKeyPair(dir string, kp KeyPair) error {
	if len(kp.CertPEM) == 0 || len(kp.KeyPEM) == 0 || len(kp.RootPEM) == 0 {
		return errors.New("pki: save key pair: CertPEM, KeyPEM and RootPEM must all be set")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("pki: save key pair: %w", err)
	}
	// MkdirAll keeps an existing directory's mode; tighten it.
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("pki: save key pair: %w", err)
	}
	for _, f := range []struct {
		name string
		data []byte
	}{{RootFile, kp.RootPEM}, {KeyFile, kp.KeyPEM}, {CertFile, kp.CertPEM}} {
		if err := writeFileAtomic(dir, f.name, f.data); err != nil {
			return fmt.Errorf("pki: save key pair: %s: %w", f.name, err)
		}
	}
	return nil
}

func writeFileAtomic(dir, name string, data []byte) (err error) {
	tmp, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if err = tmp.Chmod(0o600); err != nil {
		return err
	}
	if _, err = tmp.Write(data); err != nil {
		return err
	}
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp.Name(), filepath.Join(dir, name)); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// LoadKeyPair reads what SaveKeyPair wrote; a missing set gives an error matching
// fs.ErrNotExist. It does not verify the material: NewCredentials does.
func LoadKeyPair(dir string) (KeyPair, error) {
	var kp KeyPair
	for _, f := range []struct {
		name string
		dst  *[]byte
	}{{CertFile, &kp.CertPEM}, {KeyFile, &kp.KeyPEM}, {RootFile, &kp.RootPEM}} {
		b, err := os.ReadFile(filepath.Join(dir, f.name))
		if err != nil {
			return KeyPair{}, fmt.Errorf("pki: load key pair: %w", err)
		}
		*f.dst = b
	}
	return kp, nil
}
