package keys

import (
	"bytes"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func newTestCipher(t testing.TB) *Cipher {
	dek, err := NewDataKey()
	require.NoError(t, err)
	c, err := NewCipher(dek)
	require.NoError(t, err)
	return c
}

func TestCipherRoundTrip(t *testing.T) {
	c := newTestCipher(t)
	for _, pt := range [][]byte{nil, {}, []byte("x"), bytes.Repeat([]byte("shoal"), 10000)} {
		ad := []byte("entry\x00\x00\x00\x00\x00\x00\x00\x07")
		sealed := c.Seal(pt, ad)
		require.Len(t, sealed, len(pt)+Overhead)
		got, err := c.Open(sealed, ad)
		require.NoError(t, err)
		assert.Equal(t, len(pt), len(got))
		assert.True(t, bytes.Equal(pt, got))
		assert.NotNil(t, got)
		// A short plaintext can occur in random ciphertext by chance (one byte
		// in 42 random ones: ~15%); only a long one says anything.
		if len(pt) >= 16 {
			assert.False(t, bytes.Contains(sealed, pt), "plaintext visible in sealed blob")
		}
	}
}

func TestCipherNoncesDiffer(t *testing.T) {
	c := newTestCipher(t)
	a := c.Seal([]byte("same"), nil)
	b := c.Seal([]byte("same"), nil)
	assert.NotEqual(t, a, b)
}

func TestCipherRefusesTampering(t *testing.T) {
	c := newTestCipher(t)
	ad := []byte("snapshot/42")
	sealed := c.Seal([]byte("the state of the cluster"), ad)
	// Every single-bit flip, in the version byte, nonce, ciphertext or tag, is refused.
	for i := range sealed {
		for bit := range 8 {
			bad := bytes.Clone(sealed)
			bad[i] ^= 1 << bit
			_, err := c.Open(bad, ad)
			require.Error(t, err, "flip of bit %d in byte %d accepted", bit, i)
		}
	}
	for _, otherAD := range [][]byte{nil, []byte("snapshot/43"), []byte("entry/42"), append(bytes.Clone(ad), 0)} {
		_, err := c.Open(sealed, otherAD)
		assert.Error(t, err, "opened with additional data %q", otherAD)
	}
	_, err := c.Open(sealed[:len(sealed)-1], ad)
	assert.Error(t, err)
	_, err = c.Open(sealed[:Overhead-1], ad)
	assert.ErrorContains(t, err, "shorter than")
	_, err = c.Open(append(bytes.Clone(sealed), 0), ad)
	assert.Error(t, err)
	bad := bytes.Clone(sealed)
	bad[0] = 9
	_, err = c.Open(bad, ad)
	assert.ErrorContains(t, err, "unknown format version 9")

	other := newTestCipher(t)
	_, err = other.Open(sealed, ad)
	assert.Error(t, err, "opened with another key")
}

func TestNewCipherKeySize(t *testing.T) {
	for _, n := range []int{0, 16, 31, 33, 64} {
		_, err := NewCipher(make([]byte, n))
		assert.ErrorContains(t, err, "must be 32 bytes")
	}
}

func TestCipherConcurrent(t *testing.T) {
	c := newTestCipher(t)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				pt := []byte{byte(g), byte(i)}
				got, err := c.Open(c.Seal(pt, pt), pt)
				if !assert.NoError(t, err) || !assert.Equal(t, pt, got) {
					return
				}
			}
		})
	}
	wg.Wait()
}

func BenchmarkCipher(b *testing.B) {
	c := newTestCipher(b)
	pt := make([]byte, 4096)
	ad := []byte("entry\x00\x00\x00\x00\x00\x00\x00\x07")
	b.Run("Seal4KiB", func(b *testing.B) {
		b.SetBytes(int64(len(pt)))
		for b.Loop() {
			c.Seal(pt, ad)
		}
	})
	sealed := c.Seal(pt, ad)
	b.Run("Open4KiB", func(b *testing.B) {
		b.SetBytes(int64(len(pt)))
		for b.Loop() {
			if _, err := c.Open(sealed, ad); err != nil {
				b.Fatal(err)
			}
		}
	})
}
