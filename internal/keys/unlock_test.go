package keys

import (
	"math/big"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// bigKey encodes k with math/big, an independent implementation of the text form.
func bigKey(k []byte) string {
	s := new(big.Int).SetBytes(k).Text(36)
	return "SHLKEY-1-" + strings.Repeat("0", 52-len(s)) + s
}

func TestNewUnlockKeyRoundTrip(t *testing.T) {
	seen := map[string]bool{}
	for range 200 {
		s, err := NewUnlockKey()
		require.NoError(t, err)
		require.Len(t, s, len("SHLKEY-1-")+52)
		require.False(t, seen[s], "duplicate unlock key")
		seen[s] = true
		k, err := ParseUnlockKey(s)
		require.NoError(t, err)
		require.Len(t, k, KeySize)
		assert.Equal(t, bigKey(k), s, "text form differs from math/big's base 36")
	}
}

func TestFormatUnlockKeyVectors(t *testing.T) {
	var zero, max [KeySize]byte
	for i := range max {
		max[i] = 0xff
	}
	one := [KeySize]byte{KeySize - 1: 1}
	for _, k := range [][KeySize]byte{zero, max, one, {0: 0x80}} {
		s := formatUnlockKey(k)
		assert.Equal(t, bigKey(k[:]), s)
		got, err := ParseUnlockKey(s)
		require.NoError(t, err)
		assert.Equal(t, k[:], got)
	}
	assert.Equal(t, "SHLKEY-1-"+strings.Repeat("0", 52), formatUnlockKey(zero))
}

func TestParseUnlockKey(t *testing.T) {
	valid, err := NewUnlockKey()
	require.NoError(t, err)
	digits := valid[len("SHLKEY-1-"):]
	// 2^256 is the smallest value that does not fit.
	over := new(big.Int).Lsh(big.NewInt(1), 256).Text(36)
	over = strings.Repeat("0", 52-len(over)) + over

	tests := []struct {
		name string
		in   string
		rule string // substring of the error; "" = valid
	}{
		{"valid", valid, ""},
		{"surrounding white space", "  " + valid + "\n", ""},
		{"empty", "", "empty"},
		{"blank", " \t", "empty"},
		{"no prefix", digits, `must start with "SHLKEY-"`},
		{"lowercase prefix", "shlkey-1-" + digits, `must start with "SHLKEY-"`},
		{"join token prefix", "SHLTKN-1-" + digits, `must start with "SHLKEY-"`},
		{"no version separator", "SHLKEY-1" + digits, "must have the form"},
		{"version 2", "SHLKEY-2-" + digits, "unsupported version 2"},
		{"version 0", "SHLKEY-0-" + digits, "unsupported version 0"},
		{"empty version", "SHLKEY--" + digits, "version must be 1"},
		{"non-numeric version", "SHLKEY-v1-" + digits, "version must be 1"},
		{"short", valid[:len(valid)-1], "must be 52 characters, got 51"},
		{"long", valid + "0", "must be 52 characters, got 53"},
		{"empty key part", "SHLKEY-1-", "must be 52 characters, got 0"},
		{"uppercase digit", "SHLKEY-1-" + strings.Repeat("0", 51) + "A", "only the characters 0-9 and a-z (character 52"},
		{"punctuation", "SHLKEY-1-" + "-" + digits[1:], "only the characters 0-9 and a-z (character 1"},
		{"non-ASCII", "SHLKEY-1-" + "é" + digits[2:], "only the characters 0-9 and a-z (character 1"},
		{"inner space", "SHLKEY-1-" + digits[:10] + " " + digits[11:], "character 11"},
		{"2^256", "SHLKEY-1-" + over, "at most 256 bits"},
		{"all z", "SHLKEY-1-" + strings.Repeat("z", 52), "at most 256 bits"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := ParseUnlockKey(tt.in)
			if tt.rule == "" {
				require.NoError(t, err)
				assert.Len(t, k, KeySize)
				return
			}
			require.Error(t, err)
			assert.Nil(t, k)
			assert.ErrorIs(t, err, ErrInvalidUnlockKey)
			assert.Contains(t, err.Error(), tt.rule)
			assert.NotContains(t, err.Error(), digits[2:20], "error echoes the secret")
		})
	}
}

func FuzzParseUnlockKey(f *testing.F) {
	valid, _ := NewUnlockKey()
	f.Add(valid)
	f.Add("SHLKEY-1-" + strings.Repeat("0", 52))
	f.Add("SHLKEY-1-" + strings.Repeat("z", 52))
	f.Add("SHLKEY-2-abc")
	f.Add("SHLKEY-1-" + strings.Repeat("A", 52))
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParseUnlockKey(s)
		if err != nil {
			if k != nil {
				t.Fatal("key returned with an error")
			}
			if !strings.Contains(err.Error(), ErrInvalidUnlockKey.Error()) {
				t.Fatalf("error %q does not match ErrInvalidUnlockKey", err)
			}
			_, rest, _ := strings.Cut(strings.TrimSpace(s), "SHLKEY-1-")
			if len(rest) >= 12 && strings.Contains(err.Error(), rest) {
				t.Fatalf("error %q echoes the key", err)
			}
			return
		}
		if len(k) != KeySize {
			t.Fatalf("key of %d bytes", len(k))
		}
		// Every accepted key has exactly one text form.
		if got := formatUnlockKey([KeySize]byte(k)); got != strings.TrimSpace(s) {
			t.Fatalf("parsed %q, formats back as %q", s, got)
		}
	})
}

func BenchmarkParseUnlockKey(b *testing.B) {
	s, _ := NewUnlockKey()
	for b.Loop() {
		if _, err := ParseUnlockKey(s); err != nil {
			b.Fatal(err)
		}
	}
}
