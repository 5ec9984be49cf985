package runc

import (
	"bufio"
	"errors"
	"io"
	"os"

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

// Read reads what is available now; io.EOF means nothing for the moment.
func (s *logStream) Read(p []byte) (int, error) {
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

// ReadLine reads one whole line if there is one; at EOF it returns what
// there is of an unterminated line, with io.EOF.
func (s *logStream) ReadLine() ([]byte, error) {
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

func (s *logStream) Close() error { return s.f.Close() }

// streams returns the streams opts selects.
func streams(opts runtime.LogOptions) []string {
	if opts.Stream != "" {
		return []string{opts.Stream}
	}
	return []string{runtime.StreamStdout, runtime.StreamStderr}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
