package runc

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"sync"
	"time"

	"github.com/shoalhq/shoal/runtime"
	"github.com/shoalhq/shoal/runtime/runc/shim"
)

// logStream reads one stream's rotated files oldest first, then follows the
// current file across rotations: at the end of the file it has open, it
// looks whether path is now another file (the writer rotated) and, once the
// old one is drained, moves to it.
type logStream struct {
	path string
	f    *os.File
	br   *bufio.Reader
	// older are the rotated files still to read before path, oldest first.
	older []string
}

func openLogStream(path string, files int) (*logStream, error) {
	s := &logStream{path: path}
	for i := files - 1; i >= 1; i-- {
		if _, err := os.Stat(shim.RotatedName(path, i)); err == nil {
			s.older = append(s.older, shim.RotatedName(path, i))
		}
	}
	if err := s.openNext(); err != nil {
		return nil, err
	}
	return s, nil
}

// openNext opens the next file: the oldest rotated one left, else path.
func (s *logStream) openNext() error {
	name := s.path
	if len(s.older) > 0 {
		name, s.older = s.older[0], s.older[1:]
	}
	f, err := os.Open(name)
	if errors.Is(err, os.ErrNotExist) && name != s.path {
		// Rotated away while we read: the next one has its content.
		return s.openNext()
	}
	if err != nil {
		return err
	}
	if s.f != nil {
		s.f.Close()
	}
	s.f, s.br = f, bufio.NewReader(f)
	return nil
}

// read reads what is available now; io.EOF means nothing for the moment.
func (s *logStream) read(p []byte) (int, error) {
	for {
		n, err := s.br.Read(p)
		if n > 0 || !errors.Is(err, io.EOF) {
			return n, err
		}
		moved, err := s.advance()
		if err != nil {
			return 0, err
		}
		if !moved {
			return 0, io.EOF
		}
	}
}

// readLine reads one whole line if there is one; at EOF it returns what
// there is of an unterminated line, with io.EOF.
func (s *logStream) readLine() ([]byte, error) {
	var partial []byte
	for {
		line, err := s.br.ReadBytes('\n')
		partial = append(partial, line...)
		if !errors.Is(err, io.EOF) {
			return partial, err
		}
		moved, aerr := s.advance()
		if aerr != nil {
			return partial, aerr
		}
		if !moved {
			return partial, io.EOF
		}
	}
}

// advance moves to the next file when the current one is finished: a
// rotated file left to read, or path when it is no longer the open file.
func (s *logStream) advance() (bool, error) {
	if len(s.older) > 0 {
		return true, s.openNext()
	}
	cur, err := s.f.Stat()
	if err != nil {
		return false, err
	}
	now, err := os.Stat(s.path)
	if err != nil || os.SameFile(cur, now) {
		return false, nil
	}
	// Rotated: the open file is now path.1 and complete.
	return true, s.openNext()
}

func (s *logStream) close() error { return s.f.Close() }

// logReader is the reader LogStreamer.Logs returns: one stream, or both
// merged line by line (see runtime.LogOptions).
type logReader struct {
	ctx     context.Context
	follow  bool
	poll    time.Duration
	exited  <-chan struct{}
	removed <-chan struct{}
	srcs    []*logStream
	partial [][]byte // merged mode: an unterminated line per source
	next    int
	pending []byte

	closeOnce sync.Once
	closed    chan struct{}
	mu        sync.Mutex // serialises Read and guards the fields above
}

// maxPartialLine bounds how much of an unterminated line a merged reader
// holds back waiting for its newline.
const maxPartialLine = 64 << 10

func (r *logReader) Read(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if isClosed(r.closed) {
			return 0, os.ErrClosed
		}
		if len(r.pending) > 0 {
			n := copy(p, r.pending)
			r.pending = r.pending[n:]
			return n, nil
		}
		// Look at "done" before reading, so that everything written before
		// the task exited is read before io.EOF.
		done := !r.follow || isClosed(r.exited) || isClosed(r.removed)
		n, err := r.fill(p, done)
		if n > 0 || err != nil {
			return n, err
		}
		if len(r.pending) > 0 {
			continue
		}
		if done {
			return 0, io.EOF
		}
		if err := r.ctx.Err(); err != nil {
			return 0, err
		}
		t := time.NewTimer(r.poll)
		select {
		case <-r.ctx.Done():
			t.Stop()
			return 0, r.ctx.Err()
		case <-r.closed:
			t.Stop()
			return 0, os.ErrClosed
		case <-r.exited:
		case <-r.removed:
		case <-t.C:
		}
		t.Stop()
	}
}

func (r *logReader) fill(p []byte, done bool) (int, error) {
	if len(r.srcs) == 1 {
		n, err := r.srcs[0].read(p)
		if errors.Is(err, io.EOF) {
			err = nil
		}
		return n, err
	}
	for range len(r.srcs) {
		i := r.next
		s := r.srcs[i]
		r.next = (r.next + 1) % len(r.srcs)
		line, err := s.readLine()
		switch {
		case err == nil:
			if len(r.partial[i]) > 0 {
				line = append(r.partial[i], line...)
				r.partial[i] = nil
			}
			r.pending = line
			return 0, nil
		case errors.Is(err, io.EOF):
			r.partial[i] = append(r.partial[i], line...)
			if len(r.partial[i]) > 0 && (done || len(r.partial[i]) >= maxPartialLine) {
				r.pending, r.partial[i] = r.partial[i], nil
				return 0, nil
			}
		default:
			return 0, err
		}
	}
	return 0, nil
}

// Close releases the files and makes a pending or later Read return
// os.ErrClosed. Safe to call more than once and concurrently with Read.
func (r *logReader) Close() error {
	var err error
	r.closeOnce.Do(func() {
		close(r.closed)
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, s := range r.srcs {
			err = errors.Join(err, s.close())
		}
	})
	return err
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

var _ io.ReadCloser = (*logReader)(nil)

// streams returns the streams opts selects.
func streams(opts runtime.LogOptions) []string {
	if opts.Stream != "" {
		return []string{opts.Stream}
	}
	return []string{runtime.StreamStdout, runtime.StreamStderr}
}
