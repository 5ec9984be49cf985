package shim

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRotating(t *testing.T) {
	tests := []struct {
		name      string
		max       int64
		files     int
		writes    []string
		wantFiles map[string]string // name → content; absent names must not exist
	}{
		{"under the cap", 10, 3, []string{"abc", "def"}, map[string]string{"out.log": "abcdef"}},
		{"rotates at the cap", 4, 3, []string{"abcdef"}, map[string]string{"out.log": "ef", "out.log.1": "abcd"}},
		{"keeps files-1 older files", 2, 3, []string{"aabbccdd"}, map[string]string{"out.log": "dd", "out.log.1": "cc", "out.log.2": "bb"}},
		{"one file starts over", 3, 1, []string{"abcdefg"}, map[string]string{"out.log": "g"}},
		{"no cap", 0, 3, []string{strings.Repeat("x", 1000)}, map[string]string{"out.log": strings.Repeat("x", 1000)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "out.log")
			r, err := OpenRotating(p, tt.max, tt.files)
			require.NoError(t, err)
			for _, w := range tt.writes {
				n, err := r.Write([]byte(w))
				require.NoError(t, err)
				assert.Equal(t, len(w), n)
			}
			require.NoError(t, r.Close())
			ents, err := os.ReadDir(dir)
			require.NoError(t, err)
			got := map[string]string{}
			for _, e := range ents {
				b, err := os.ReadFile(filepath.Join(dir, e.Name()))
				require.NoError(t, err)
				got[e.Name()] = string(b)
			}
			assert.Equal(t, tt.wantFiles, got)
		})
	}
}

func TestRotatingAppendsAfterReopen(t *testing.T) {
	p := filepath.Join(t.TempDir(), "out.log")
	r, err := OpenRotating(p, 6, 2)
	require.NoError(t, err)
	_, _ = r.Write([]byte("abcd"))
	require.NoError(t, r.Close())
	r, err = OpenRotating(p, 6, 2) // a shim of a restarted container
	require.NoError(t, err)
	_, _ = r.Write([]byte("efgh"))
	require.NoError(t, r.Close())
	b, _ := os.ReadFile(p)
	assert.Equal(t, "gh", string(b))
	b, _ = os.ReadFile(RotatedName(p, 1))
	assert.Equal(t, "abcdef", string(b), "the size found at open counts toward the cap")
}

func TestProcessStartTimeAndAtomicWrites(t *testing.T) {
	st, err := ProcessStartTime(os.Getpid())
	require.NoError(t, err)
	assert.NotZero(t, st)
	_, err = ProcessStartTime(1 << 30)
	assert.Error(t, err)

	p := filepath.Join(t.TempDir(), "rec.json")
	require.NoError(t, WriteJSONAtomic(p, Exit{Code: 3, Signal: "SIGKILL"}))
	var e Exit
	require.NoError(t, ReadJSON(p, &e))
	assert.Equal(t, Exit{Code: 3, Signal: "SIGKILL"}, e)
	_, err = os.Stat(p + ".tmp")
	assert.True(t, os.IsNotExist(err), "no temporary file left")
}
