package gossip

import (
	"bytes"
	"context"
	"log"
	"log/slog"
)

// slogWriter turns serf's and memberlist's "[LEVEL] text" log lines into
// slog records at the matching level.
type slogWriter struct{ l *slog.Logger }

func newStdLogger(l *slog.Logger) *log.Logger {
	return log.New(slogWriter{l: l}, "", 0)
}

func (w slogWriter) Write(p []byte) (int, error) {
	msg := bytes.TrimSpace(p)
	lvl := slog.LevelInfo
	for _, m := range []struct {
		tag string
		lvl slog.Level
	}{
		{"[DEBUG]", slog.LevelDebug},
		{"[TRACE]", slog.LevelDebug},
		{"[INFO]", slog.LevelInfo},
		{"[WARN]", slog.LevelWarn},
		{"[ERR]", slog.LevelError},
		{"[ERROR]", slog.LevelError},
	} {
		if rest, ok := bytes.CutPrefix(msg, []byte(m.tag)); ok {
			lvl, msg = m.lvl, bytes.TrimSpace(rest)
			break
		}
	}
	if w.l.Enabled(context.Background(), lvl) {
		w.l.Log(context.Background(), lvl, string(msg))
	}
	return len(p), nil
}
