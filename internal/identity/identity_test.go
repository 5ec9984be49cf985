package identity

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestNewID(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 10000; i++ {
		id := NewID()
		assert.True(t, Valid(id), id)
		assert.False(t, seen[id], "duplicate %s", id)
		seen[id] = true
	}
}

func TestValid(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want bool
	}{
		{"0123456789abcdefghijklmno", true},
		{"0123456789abcdefghijklmn", false},
		{"0123456789ABCDEFGHIJKLMNO", false},
		{"0123456789abcdefghijklmn-", false},
		{"", false},
	} {
		assert.Equal(t, tc.want, Valid(tc.in), tc.in)
	}
}
