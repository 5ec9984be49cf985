package keys

import (
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
)

// Unlock key text form: UnlockKeyPrefix, the format version, a dash, then the 256-bit key as
// exactly unlockKeyDigits lowercase base-36 digits (most significant first, zero-padded).
const (
	unlockKeyPrefix  = "SHLKEY-"
	unlockKeyVersion = "1"
	// unlockKeyDigits is the fixed width of the key part. 50 base-36 digits already hold 256
	// bits; 52 gives a round, recognisable length and leaves the top digits always small.
	unlockKeyDigits = 52
	// KeySize is the length in bytes of an unlock key and of a data key.
	KeySize = 32
)

const base36 = "0123456789abcdefghijklmnopqrstuvwxyz"

var (
	// ErrInvalidUnlockKey is matched (errors.Is) by every error ParseUnlockKey returns; the
	// message names the rule broken and never includes the key.
	ErrInvalidUnlockKey = errors.New("keys: invalid unlock key")
	// ErrLocked is returned by LoadDataKey (and RewrapDataKey) for a data key file that is
	// wrapped with an unlock key when no unlock key was given: the node must wait for one.
	ErrLocked = errors.New("keys: data key is locked; an unlock key is needed")
	// ErrWrongUnlockKey is returned when the unlock key given does not open the data key file.
	ErrWrongUnlockKey = errors.New("keys: unlock key does not match the data key file")
)

// NewUnlockKey returns a new random unlock key in its text form, SHLKEY-1-<52 base-36 digits>.
func NewUnlockKey() (string, error) {
	var k [KeySize]byte
	if _, err := rand.Read(k[:]); err != nil {
		return "", fmt.Errorf("keys: generating unlock key: %w", err)
	}
	return formatUnlockKey(k), nil
}

// formatUnlockKey writes k (a big-endian 256-bit number) as fixed-width base-36 digits.
func formatUnlockKey(k [KeySize]byte) string {
	var digits [unlockKeyDigits]byte
	n := k
	for i := unlockKeyDigits - 1; i >= 0; i-- {
		// Long division of n by 36, most significant byte first; the remainder is the digit.
		var rem uint32
		for j := range n {
			cur := rem<<8 | uint32(n[j])
			n[j] = byte(cur / 36)
			rem = cur % 36
		}
		digits[i] = base36[rem]
	}
	return unlockKeyPrefix + unlockKeyVersion + "-" + string(digits[:])
}

func invalid(rule string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidUnlockKey, fmt.Sprintf(rule, args...))
}

// ParseUnlockKey validates the text form of an unlock key and returns its 32 key bytes.
// Surrounding white space (as left by copying and pasting) is ignored. Errors match
// ErrInvalidUnlockKey, name the rule broken (prefix, version, length, alphabet, range) and never
// repeat the key or any of its characters.
func ParseUnlockKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, invalid("empty")
	}
	if !strings.HasPrefix(s, unlockKeyPrefix) {
		return nil, invalid("must start with %q", unlockKeyPrefix)
	}
	rest := s[len(unlockKeyPrefix):]
	version, digits, ok := strings.Cut(rest, "-")
	if !ok {
		return nil, invalid("must have the form %s<version>-<key>", unlockKeyPrefix)
	}
	if version != unlockKeyVersion {
		if version == "" || len(version) > 8 || strings.ContainsFunc(version, func(r rune) bool { return r < '0' || r > '9' }) {
			return nil, invalid("version must be %s", unlockKeyVersion)
		}
		return nil, invalid("unsupported version %s (this build reads version %s)", version, unlockKeyVersion)
	}
	if len(digits) != unlockKeyDigits {
		return nil, invalid("key part must be %d characters, got %d", unlockKeyDigits, len(digits))
	}
	var n [KeySize]byte
	for i := 0; i < len(digits); i++ {
		c := digits[i]
		var d uint32
		switch {
		case c >= '0' && c <= '9':
			d = uint32(c - '0')
		case c >= 'a' && c <= 'z':
			d = uint32(c-'a') + 10
		default:
			return nil, invalid("key part must use only the characters 0-9 and a-z (character %d does not)", i+1)
		}
		// n = n*36 + d, least significant byte first.
		carry := d
		for j := KeySize - 1; j >= 0; j-- {
			cur := uint32(n[j])*36 + carry
			n[j] = byte(cur)
			carry = cur >> 8
		}
		if carry != 0 {
			return nil, invalid("key part must encode at most 256 bits")
		}
	}
	return n[:], nil
}
