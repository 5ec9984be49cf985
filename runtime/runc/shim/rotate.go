package shim

import (
	"fmt"
	"os"
)

// Rotating is a log file capped at max bytes: when a write would pass the
// cap, path.<n-1> is dropped, path.<i> becomes path.<i+1>, path becomes
// path.1, and a new path is started. files counts path itself. Writes of
// one stream come from one goroutine (the shim's copy loop).
type Rotating struct {
	path  string
	max   int64
	files int
	f     *os.File
	size  int64
}

// OpenRotating opens path for appending, rotated at max bytes (0: never),
// keeping files files (the current one included).
func OpenRotating(path string, max int64, files int) (*Rotating, error) {
	if err := os.MkdirAll(dirOf(path), 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if files < 1 {
		files = 1
	}
	return &Rotating{path: path, max: max, files: files, f: f, size: st.Size()}, nil
}

// Write writes p, rotating first whenever the file is full.
func (r *Rotating) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		if r.max > 0 && r.size >= r.max {
			if err := r.rotate(); err != nil {
				return written, err
			}
		}
		chunk := p
		if r.max > 0 && int64(len(chunk)) > r.max-r.size {
			chunk = chunk[:r.max-r.size]
		}
		n, err := r.f.Write(chunk)
		written += n
		r.size += int64(n)
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}

func (r *Rotating) rotate() error {
	if err := r.f.Close(); err != nil {
		return err
	}
	if r.files == 1 {
		// One file only: start it again.
		f, err := os.OpenFile(r.path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		r.f, r.size = f, 0
		return nil
	}
	_ = os.Remove(RotatedName(r.path, r.files-1))
	for i := r.files - 2; i >= 1; i-- {
		_ = os.Rename(RotatedName(r.path, i), RotatedName(r.path, i+1))
	}
	if err := os.Rename(r.path, RotatedName(r.path, 1)); err != nil {
		return err
	}
	f, err := os.OpenFile(r.path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	r.f, r.size = f, 0
	return nil
}

// Close closes the current file.
func (r *Rotating) Close() error { return r.f.Close() }

// RotatedName is the name of the i-th older file of a rotated log.
func RotatedName(path string, i int) string { return fmt.Sprintf("%s.%d", path, i) }

func dirOf(path string) string {
	for i := len(path) - 1; i >= 0; i-- {
		if path[i] == '/' {
			return path[:i]
		}
	}
	return "."
}
