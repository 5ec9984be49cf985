package process

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"

	"github.com/shoalhq/shoal/runtime"
	"github.com/shoalhq/shoal/runtime/internal/logread"
)

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
	var srcs []logread.Source
	for _, s := range streams {
		f, err := os.Open(c.rt.LogPath(c.task.ID, s))
		if err != nil {
			for _, src := range srcs {
				_ = src.Close()
			}
			return nil, fmt.Errorf("process: logs of task %s: %w", c.task.ID, err)
		}
		srcs = append(srcs, &logSource{f: f, br: bufio.NewReader(f)})
	}
	return logread.New(ctx, srcs, opts.Follow, c.rt.poll, c.exited, c.removed), nil
}

// logSource is one log file of a task, read as it grows.
type logSource struct {
	f  *os.File
	br *bufio.Reader
}

func (s *logSource) Read(p []byte) (int, error) { return s.br.Read(p) }

func (s *logSource) ReadLine() ([]byte, error) { return s.br.ReadBytes('\n') }

func (s *logSource) Close() error { return s.f.Close() }
