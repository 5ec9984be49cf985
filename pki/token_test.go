package pki

import (
	"errors"
	"strings"
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

// Every refused token, whatever the reason, matches ErrInvalidToken and
// keeps its detailed cause; one whose digest is not the root's also matches
// ErrDigestMismatch.
func TestRefusedTokensAreInvalidTokens(t *testing.T) {
	require.ErrorIs(t, ErrDigestMismatch, ErrInvalidToken)

	ca, other := newCA(t, testCluster), newCA(t, "c9876543210abcdefghijklmn")
	good, err := NewToken(ca.Digest())
	require.NoError(t, err)
	require.NoError(t, good.VerifyRoot(ca))
	text := good.String()
	tamper := func(s string, i int) string { // one base-36 character changed
		c := byte('0')
		if s[i] == '0' {
			c = '1'
		}
		return s[:i] + string(c) + s[i+1:]
	}
	foreign, err := NewToken(other.Digest())
	require.NoError(t, err)

	tests := []struct {
		name   string
		token  string
		root   *RootCA // the root the node is shown; nil: parsing alone
		says   string
		digest bool // refused for its digest: ErrDigestMismatch too
	}{
		{name: "empty", token: "", says: "must have the form SHLTKN-1-<digest>-<secret>"},
		{name: "malformed", token: "not-a-token", says: "must have the form"},
		{name: "extra part", token: text + "-x", says: "must have the form"},
		{name: "wrong prefix", token: strings.Replace(text, "SHLTKN-", "SHLKEY-", 1), says: `must start with "SHLTKN-"`},
		{name: "wrong version", token: strings.Replace(text, "SHLTKN-1-", "SHLTKN-2-", 1), says: `version "2" is not supported`},
		{name: "truncated digest", token: "SHLTKN-1-" + good.Digest[1:] + "-" + good.Secret, says: "digest must be 50"},
		{name: "uppercase digest", token: "SHLTKN-1-" + strings.ToUpper(good.Digest) + "-" + good.Secret, says: "digest must be 50 lowercase"},
		{name: "truncated secret", token: "SHLTKN-1-" + good.Digest + "-" + good.Secret[1:], says: "secret must be 25"},
		{name: "uppercase secret", token: "SHLTKN-1-" + good.Digest + "-" + strings.ToUpper(good.Secret), says: "secret must be 25 lowercase"},
		{name: "trailing newline", token: text + "\n", says: "secret must be 25"},
		{name: "tampered digest", token: "SHLTKN-1-" + tamper(good.Digest, 7) + "-" + good.Secret, root: ca,
			says: "does not match the join token", digest: true},
		{name: "another cluster's token", token: foreign.String(), root: ca, says: "does not match the join token", digest: true},
		{name: "a rogue manager's root", token: text, root: other, says: "does not match the join token", digest: true},
		{name: "no root", token: text, root: &RootCA{}, says: "no root CA", digest: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := ParseToken(tc.token)
			if tc.root != nil {
				require.NoError(t, err, "the token is well formed")
				err = tok.VerifyRoot(tc.root)
			}
			require.Error(t, err, "the token was accepted")
			assert.ErrorIs(t, err, ErrInvalidToken)
			assert.Equal(t, tc.digest, errors.Is(err, ErrDigestMismatch), "ErrDigestMismatch: %v", err)
			assert.Contains(t, err.Error(), tc.says)
			assert.NotContains(t, err.Error(), good.Secret, "the secret is never echoed")
		})
	}
}
