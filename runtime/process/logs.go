package process

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/shoalhq/shoal/runtime"
)

// maxPartialLine bounds how much of an unterminated line a merged reader
// holds back waiting for its newline.
const maxPartialLine = 64 << 10

// Logs returns a reader of the task's log files. With opts.Stream "" the
// two files are merged line by line (see runtime.LogOptions). With
// opts.Follow the reader polls for new output every
// Config.LogPollInterval until the task exits or is removed (then io.EOF
// once drained) or ctx ends (then ctx.Err()). The reader holds its own file
// descriptors and needs no goroutine; Close unblocks a pending Read.
func (c *Controller) Logs(ctx context.Context, opts runtime.LogOptions) (io.ReadCloser, error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("process: logs of task %s: %w", c.task.ID, err)
	}
	c.mu.Lock()
	removed, prepared := c.isRemoved, c.prepared
	c.mu.Unlock()
	switch {
	case removed:
		return nil, fmt.Errorf("process: logs of task %s: %w", c.task.ID, runtime.ErrAlreadyRemoved)
	case !prepared:
		return nil, fmt.Errorf("process: logs of task %s: %w", c.task.ID, runtime.ErrNotPrepared)
	}
	streams := []string{runtime.StreamStdout, runtime.StreamStderr}
	if opts.Stream != "" {
		streams = []string{opts.Stream}
	}
	r := &logReader{
		ctx:     ctx,
		follow:  opts.Follow,
		poll:    c.rt.poll,
		exited:  c.exited,
		removed: c.removed,
		closed:  make(chan struct{}),
	}
	for _, s := range streams {
		f, err := os.Open(c.rt.LogPath(c.task.ID, s))
		if err != nil {
			r.closeFiles()
			return nil, fmt.Errorf("process: logs of task %s: %w", c.task.ID, err)
		}
		r.srcs = append(r.srcs, &logSource{f: f, br: bufio.NewReader(f)})
	}
	return r, nil
}

type logSource struct {
	f       *os.File
	br      *bufio.Reader
	partial []byte // merged mode: start of a line whose newline is not written yet
}

type logReader struct {
	ctx     context.Context
	follow  bool
	poll    time.Duration
	exited  <-chan struct{}
	removed <-chan struct{}
	srcs    []*logSource
	next    int    // merged mode: source to read first
	pending []byte // merged mode: data ready to return

	closeOnce sync.Once
	closed    chan struct{}
	mu        sync.Mutex // serialises Read
}

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

// fill reads what is available. A single stream is copied straight into p
// (returning n). Merged streams move whole lines into r.pending, taking
// one line from each source in turn; at done, unterminated lines are
// flushed too.
func (r *logReader) fill(p []byte, done bool) (int, error) {
	if len(r.srcs) == 1 {
		n, err := r.srcs[0].br.Read(p)
		if errors.Is(err, io.EOF) {
			err = nil
		}
		return n, err
	}
	for range len(r.srcs) {
		s := r.srcs[r.next]
		r.next = (r.next + 1) % len(r.srcs)
		line, err := s.br.ReadBytes('\n')
		switch {
		case err == nil:
			if len(s.partial) > 0 {
				line = append(s.partial, line...)
				s.partial = nil
			}
			r.pending = line
			return 0, nil
		case errors.Is(err, io.EOF):
			s.partial = append(s.partial, line...)
			if len(s.partial) > 0 && (done || len(s.partial) >= maxPartialLine) {
				r.pending, s.partial = s.partial, nil
				return 0, nil
			}
		default:
			return 0, err
		}
	}
	return 0, nil
}

// Close releases the files and makes a pending or later Read return
// os.ErrClosed. It is safe to call more than once and concurrently with
// Read.
func (r *logReader) Close() error {
	var err error
	r.closeOnce.Do(func() {
		close(r.closed)
		r.mu.Lock() // wait for a Read in progress to notice
		defer r.mu.Unlock()
		err = r.closeFiles()
	})
	return err
}

func (r *logReader) closeFiles() error {
	var errs []error
	for _, s := range r.srcs {
		errs = append(errs, s.f.Close())
	}
	return errors.Join(errs...)
}
