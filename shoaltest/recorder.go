package shoaltest

import (
	"context"
	"fmt"
	"github.com/shoalhq/shoal"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// recorderSize is how many log records a cluster keeps for its failure
// report: the newest ones, at level Info and above.
const recorderSize = 400

// recorder is a slog handler that keeps the cluster's newest log records in
// a ring, so that a failing test can print what the nodes said just before
// (a node marked down, a leader change, a session ended) without every
// passing test printing anything.
type recorder struct {
	ring  *ring
	attrs []slog.Attr
	group string
}

type ring struct {
	mu    sync.Mutex
	start time.Time
	buf   []string
	next  int
	full  bool
	lost  int
}

func newRecorder() *recorder {
	return &recorder{ring: &ring{start: time.Now(), buf: make([]string, recorderSize)}}
}

func (r *recorder) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }

func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%8.3fs %-5s %s", rec.Time.Sub(r.ring.start).Seconds(), rec.Level, rec.Message)
	write := func(a slog.Attr) {
		if a.Equal(slog.Attr{}) {
			return
		}
		key := a.Key
		if r.group != "" {
			key = r.group + "." + key
		}
		fmt.Fprintf(&b, " %s=%v", key, a.Value.Resolve())
	}
	for _, a := range r.attrs {
		write(a)
	}
	rec.Attrs(func(a slog.Attr) bool { write(a); return true })
	r.ring.add(b.String())
	return nil
}

func (r *recorder) WithAttrs(as []slog.Attr) slog.Handler {
	n := *r
	n.attrs = append(append([]slog.Attr(nil), r.attrs...), as...)
	return &n
}

func (r *recorder) WithGroup(name string) slog.Handler {
	n := *r
	if n.group != "" {
		name = n.group + "." + name
	}
	n.group = name
	return &n
}

func (g *ring) add(line string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.full {
		g.lost++
	}
	g.buf[g.next] = line
	g.next++
	if g.next == len(g.buf) {
		g.next, g.full = 0, true
	}
}

// lines returns the kept records, oldest first, and how many older ones
// were dropped.
func (g *ring) lines() ([]string, int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.full {
		return append([]string(nil), g.buf[:g.next]...), 0
	}
	out := append([]string(nil), g.buf[g.next:]...)
	return append(out, g.buf[:g.next]...), g.lost
}

// reportFailure logs, if the test failed, every node's state and every
// task's placement and states as the cluster sees them now, then the kept
// log records (rec may be nil: the test brought its own logger).
func (c *Cluster) reportFailure(rec *recorder) {
	if !c.tb.Failed() {
		return
	}
	var b strings.Builder
	b.WriteString("shoaltest: the test failed; the cluster now:\n")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	reported := false
	for _, n := range c.Nodes() {
		s := n.Shoal()
		if s == nil || !n.IsManager() {
			continue
		}
		nodes, err := s.Client().ListNodes(ctx)
		if err != nil {
			fmt.Fprintf(&b, "  %s: list nodes: %v\n", n.Name, err)
			continue
		}
		for _, n := range nodes {
			fmt.Fprintf(&b, "  node %s %s role=%v state=%v %q leader=%v\n", n.ID, n.Hostname, n.Role, n.State, n.StateMessage, n.Leader)
		}
		if tasks, err := s.Client().ListTasks(ctx, shoal.TaskFilter{}); err != nil {
			fmt.Fprintf(&b, "  tasks: %v\n", err)
		} else {
			for _, t := range tasks {
				fmt.Fprintf(&b, "  task %s %s node=%s desired=%v state=%v %q %q\n", t.ID, t.Name(), t.NodeID,
					t.DesiredState, t.Status.State, t.Status.Message, t.Status.Err)
			}
		}
		reported = true
		break
	}
	if !reported {
		b.WriteString("  no manager answered\n")
	}
	if rec != nil {
		lines, lost := rec.ring.lines()
		fmt.Fprintf(&b, "shoaltest: the newest %d log records (%d older ones dropped):\n", len(lines), lost)
		for _, l := range lines {
			b.WriteString("  " + l + "\n")
		}
	}
	c.tb.Log(b.String())
}
