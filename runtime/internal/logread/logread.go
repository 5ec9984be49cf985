// Package logread is the reader that runtimes' LogStreamer.Logs return: one
// log stream, or two merged line by line, read now or followed until the
// task exits (see runtime.LogOptions). A runtime supplies the streams.
package logread

import (
	"context"
	"errors"
	"io"
	"os"
	"sync"
	"time"
)

// Source is one log stream. Read and ReadLine return what is available
// now; io.EOF means nothing more for the moment (a follower asks again).
type Source interface {
	// Read reads what is available into p.
	Read(p []byte) (int, error)
	// ReadLine reads one whole line if there is one; at the end of what is
	// available it returns the unterminated rest with io.EOF.
	ReadLine() ([]byte, error)
	Close() error
}

// maxPartialLine bounds how much of an unterminated line a merged reader
// holds back waiting for its newline.
const maxPartialLine = 64 << 10

// Reader reads its sources until they are drained (or, following, until
// exited or removed is closed and they are drained, or ctx ends). Close
// unblocks a pending Read.
type Reader struct {
	ctx     context.Context
	follow  bool
	poll    time.Duration
	exited  <-chan struct{}
	removed <-chan struct{}

	closeOnce sync.Once
	closed    chan struct{}

	mu      sync.Mutex // serialises Read; guards the fields below
	srcs    []Source
	partial [][]byte // merged mode: an unterminated line per source
	next    int      // merged mode: the source to read first
	pending []byte   // merged mode: data ready to return
}

// New returns a reader of srcs (one, or two to merge). With follow it
// polls every poll for new output until exited or removed is closed.
func New(ctx context.Context, srcs []Source, follow bool, poll time.Duration, exited, removed <-chan struct{}) *Reader {
	return &Reader{ctx: ctx, srcs: srcs, partial: make([][]byte, len(srcs)), follow: follow, poll: poll,
		exited: exited, removed: removed, closed: make(chan struct{})}
}

// Read implements io.Reader.
func (r *Reader) Read(p []byte) (int, error) {
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
// (returning n). Merged streams move whole lines into r.pending, taking one
// line from each source in turn; at done, unterminated lines are flushed
// too.
func (r *Reader) fill(p []byte, done bool) (int, error) {
	if len(r.srcs) == 1 {
		n, err := r.srcs[0].Read(p)
		if errors.Is(err, io.EOF) {
			err = nil
		}
		return n, err
	}
	for range len(r.srcs) {
		i := r.next
		r.next = (r.next + 1) % len(r.srcs)
		line, err := r.srcs[i].ReadLine()
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

// Close releases the sources and makes a pending or later Read return
// os.ErrClosed. Safe to call more than once and concurrently with Read.
func (r *Reader) Close() error {
	var err error
	r.closeOnce.Do(func() {
		close(r.closed)
		r.mu.Lock() // wait for a Read in progress to notice
		defer r.mu.Unlock()
		for _, s := range r.srcs {
			err = errors.Join(err, s.Close())
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

var _ io.ReadCloser = (*Reader)(nil)
