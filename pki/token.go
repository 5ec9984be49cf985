package pki

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"math/big"
	"strings"

	"github.com/shoalhq/shoal/internal/errdefs"
)

// Join token layout: SHLTKN-<version>-<digest>-<secret>.
const (
	tokenPrefix  = "SHLTKN"
	tokenVersion = "1"
	// DigestLength is the length of the digest part: a SHA-256 in base 36.
	DigestLength = 50
	// SecretLength is the length of the secret part: 128 random bits in base 36.
	SecretLength = 25
)

// ErrInvalidToken is returned for a token that is malformed or not accepted.
var ErrInvalidToken = errdefs.ErrInvalidToken

// Token is a parsed join token. A token does not identify a node:
// certificates do. It pins the cluster's root CA, so that a joining node
// trusts the right managers, and it authorizes the join.
type Token struct {
	// Digest pins the cluster's root of trust: the digest (RootCA.Digest) of
	// the root CA certificate, so a joining node refuses a manager that
	// serves another root (a rogue manager, or another cluster).
	Digest string
	// Secret authorizes the join and selects the role (worker or manager).
	Secret string
}

// String returns the token in its text form.
func (t Token) String() string {
	return tokenPrefix + "-" + tokenVersion + "-" + t.Digest + "-" + t.Secret
}

// Digest returns the base-36 SHA-256 of data, padded to DigestLength.
func Digest(data []byte) string {
	sum := sha256.Sum256(data)
	return pad(new(big.Int).SetBytes(sum[:]).Text(36), DigestLength)
}

// NewToken returns a token for the given digest with a new random secret.
func NewToken(digest string) (Token, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return Token{}, fmt.Errorf("join token: %w", err)
	}
	return Token{Digest: digest, Secret: pad(n.Text(36), SecretLength)}, nil
}

func pad(s string, n int) string {
	if len(s) < n {
		s = strings.Repeat("0", n-len(s)) + s
	}
	return s
}

// ParseToken parses a join token. Errors wrap ErrInvalidToken and say which
// part is wrong, never echoing the secret.
func ParseToken(s string) (Token, error) {
	bad := func(rule string) (Token, error) {
		return Token{}, fmt.Errorf("join token: %s: %w", rule, ErrInvalidToken)
	}
	parts := strings.Split(s, "-")
	if len(parts) != 4 {
		return bad(`must have the form SHLTKN-1-<digest>-<secret>`)
	}
	if parts[0] != tokenPrefix {
		return bad(`must start with "SHLTKN-"`)
	}
	if parts[1] != tokenVersion {
		return bad(fmt.Sprintf("version %q is not supported (want %s)", clip(parts[1]), tokenVersion))
	}
	if len(parts[2]) != DigestLength || !base36(parts[2]) {
		return bad(fmt.Sprintf("digest must be %d lowercase base-36 characters", DigestLength))
	}
	if len(parts[3]) != SecretLength || !base36(parts[3]) {
		return bad(fmt.Sprintf("secret must be %d lowercase base-36 characters", SecretLength))
	}
	return Token{Digest: parts[2], Secret: parts[3]}, nil
}

func clip(s string) string {
	if len(s) > 8 {
		return s[:8] + "..."
	}
	return s
}

func base36(s string) bool {
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'z') {
			return false
		}
	}
	return true
}

// Equal compares two tokens in constant time.
func (t Token) Equal(o Token) bool {
	return subtle.ConstantTimeCompare([]byte(t.String()), []byte(o.String())) == 1
}

// ErrDigestMismatch is returned when a token's digest is not the digest of
// the root CA the node is shown: the token is for another cluster, or the
// manager is a rogue. It is a refused token: errors.Is(err,
// ErrInvalidToken) holds for it too.
var ErrDigestMismatch = fmt.Errorf("join token: digest does not match the cluster (wrong cluster, or a rogue manager): %w", ErrInvalidToken)

// VerifyRoot checks that ca is the root CA t pins: its digest is t.Digest.
// The error wraps ErrDigestMismatch (and so ErrInvalidToken) and gives both
// digests; digests are public, the secret is never echoed.
func (t Token) VerifyRoot(ca *RootCA) error {
	if ca == nil || ca.Cert == nil {
		return fmt.Errorf("join token: no root CA to check its digest against: %w", ErrDigestMismatch)
	}
	if got := ca.Digest(); got != t.Digest {
		return fmt.Errorf("the root CA (digest %s) does not match the join token (digest %s): %w", got, t.Digest, ErrDigestMismatch)
	}
	return nil
}
