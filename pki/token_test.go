package pki

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestTokenRoundTrip(t *testing.T) {
	tok, err := NewToken(Digest([]byte("cluster")))
	require.NoError(t, err)
	got, err := ParseToken(tok.String())
	require.NoError(t, err)
	assert.Equal(t, tok, got)
	assert.True(t, tok.Equal(got))
	other, err := NewToken(tok.Digest)
	require.NoError(t, err)
	assert.False(t, tok.Equal(other))
}

func TestParseTokenErrors(t *testing.T) {
	d := Digest([]byte("x"))
	s := "0123456789abcdefghijklmno"
	tests := []struct{ in, want string }{
		{"", "must have the form"},
		{"SHLTKN-1-" + d, "must have the form"},
		{"XXXTKN-1-" + d + "-" + s, `must start with "SHLTKN-"`},
		{"SHLTKN-2-" + d + "-" + s, `version "2" is not supported`},
		{"SHLTKN-1-" + d[:10] + "-" + s, "digest must be 50"},
		{"SHLTKN-1-" + d + "-" + s[:5], "secret must be 25"},
		{"SHLTKN-1-" + d + "-" + "0123456789ABCDEFGHIJKLMNO", "secret must be 25 lowercase"},
	}
	for _, tc := range tests {
		_, err := ParseToken(tc.in)
		require.Error(t, err, tc.in)
		assert.ErrorIs(t, err, ErrInvalidToken)
		assert.Contains(t, err.Error(), tc.want)
		assert.NotContains(t, err.Error(), s, "the secret is never echoed")
	}
}

func FuzzParseToken(f *testing.F) {
	tok, _ := NewToken(Digest([]byte("seed")))
	f.Add(tok.String())
	f.Add("SHLTKN-1--")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseToken(s)
		if err != nil {
			return
		}
		// Anything accepted prints back to the same text and parses again.
		assert.Equal(t, s, got.String())
		again, err := ParseToken(got.String())
		require.NoError(t, err)
		assert.Equal(t, got, again)
	})
}
