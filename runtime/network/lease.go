package network

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// leaseVersion is the version of the lease file format.
const leaseVersion = 1

// leaseSuffix ends every lease file's name: <id>.json.
const leaseSuffix = ".json"

// maxLeaseSize bounds what parseLease reads: a lease with every port of
// both protocols published is below 4 MiB.
const maxLeaseSize = 4 << 20

// lease is what the state directory records of one attachment: enough to
// find and remove everything Attach and Publish made, and to never hand
// its address out again while it exists.
type lease struct {
	ID       string
	Addr     netip.Addr
	HostVeth string
	Ports    []PortMapping
}

// leaseFile is the JSON form of a lease.
type leaseFile struct {
	Version  int         `json:"version"`
	ID       string      `json:"id"`
	Addr     string      `json:"addr"`
	HostVeth string      `json:"hostVeth"`
	Ports    []leasePort `json:"ports,omitempty"`
}

type leasePort struct {
	HostPort uint16 `json:"hostPort"`
	Target   uint16 `json:"target"`
	Protocol string `json:"protocol"`
}

func (l *lease) marshal() ([]byte, error) {
	f := leaseFile{Version: leaseVersion, ID: l.ID, Addr: l.Addr.String(), HostVeth: l.HostVeth}
	for _, p := range l.Ports {
		f.Ports = append(f.Ports, leasePort(p))
	}
	b, err := json.MarshalIndent(f, "", "\t")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// parseLease decodes and validates a lease file. It checks the file on its
// own; whether the address belongs to the pool is the caller's check.
func parseLease(data []byte) (*lease, error) {
	if len(data) > maxLeaseSize {
		return nil, fmt.Errorf("larger than %d bytes", maxLeaseSize)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var f leaseFile
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	if dec.More() {
		return nil, errors.New("decode: data after the lease object")
	}
	if f.Version != leaseVersion {
		return nil, fmt.Errorf("version: must be %d, got %d", leaseVersion, f.Version)
	}
	if err := validID(f.ID); err != nil {
		return nil, fmt.Errorf("id: %w", err)
	}
	a, err := netip.ParseAddr(f.Addr)
	if err != nil || !a.Is4() {
		return nil, fmt.Errorf("addr: must be an IPv4 address, got %q", f.Addr)
	}
	if err := validIfName(f.HostVeth); err != nil {
		return nil, fmt.Errorf("hostVeth: %w", err)
	}
	ports := make([]PortMapping, len(f.Ports))
	for i, p := range f.Ports {
		ports[i] = PortMapping(p)
	}
	norm, err := normalizePorts(ports)
	if err != nil {
		return nil, err
	}
	return &lease{ID: f.ID, Addr: a, HostVeth: f.HostVeth, Ports: norm}, nil
}

// leaseStore is the directory of lease files, one per attachment.
type leaseStore struct{ dir string }

func (s leaseStore) path(id string) string { return filepath.Join(s.dir, id+leaseSuffix) }

// write replaces the lease file of l.ID atomically: a temporary file in
// the same directory, synced, renamed over the old one, and the directory
// synced, so a crash leaves either the old lease or the new one.
func (s leaseStore) write(l *lease) error {
	data, err := l.marshal()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(s.dir, "."+l.ID+".tmp-*")
	if err != nil {
		return err
	}
	name := tmp.Name()
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(name, s.path(l.ID))
	}
	if err != nil {
		_ = os.Remove(name)
		return err
	}
	return syncDir(s.dir)
}

// remove deletes the lease file of id; a missing one is not an error.
func (s leaseStore) remove(id string) error {
	err := os.Remove(s.path(id))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err == nil {
		return syncDir(s.dir)
	}
	return nil
}

// load reads every lease in the directory (none if it does not exist) and
// removes temporary files a crash left behind. A lease file that does not
// parse, or whose name does not match its ID, is an error naming the file:
// skipping it could hand its address out twice.
func (s leaseStore) load() ([]*lease, error) {
	entries, err := os.ReadDir(s.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []*lease
	for _, e := range entries {
		name := e.Name()
		full := filepath.Join(s.dir, name)
		switch {
		case strings.HasPrefix(name, ".") && strings.Contains(name, ".tmp-"):
			_ = os.Remove(full)
			continue
		case !e.Type().IsRegular() || !strings.HasSuffix(name, leaseSuffix):
			continue
		}
		data, err := os.ReadFile(full)
		if err != nil {
			return nil, err
		}
		l, err := parseLease(data)
		if err != nil {
			return nil, fmt.Errorf("lease file %s: %w (remove it once its namespace and veth are gone)", full, err)
		}
		if l.ID+leaseSuffix != name {
			return nil, fmt.Errorf("lease file %s: id %q does not match the file name", full, l.ID)
		}
		out = append(out, l)
	}
	return out, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
