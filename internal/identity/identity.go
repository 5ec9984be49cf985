// Package identity makes the random IDs of nodes, services, tasks and
// clusters: 25 lowercase base-36 characters (about 129 bits), as DESIGN.md
// fixes them.
package identity

import (
	"crypto/rand"
	"math/big"
)

// IDLength is the length of every generated ID.
const IDLength = 25

var maxID = new(big.Int).Exp(big.NewInt(36), big.NewInt(IDLength), nil)

// NewID returns a new random ID. It is safe for concurrent use.
func NewID() string {
	n, err := rand.Int(rand.Reader, maxID)
	if err != nil {
		panic("identity: crypto/rand failed: " + err.Error()) // crypto/rand does not fail on Linux
	}
	s := n.Text(36)
	for len(s) < IDLength {
		s = "0" + s
	}
	return s
}

// Valid reports whether s has the form of a generated ID.
func Valid(s string) bool {
	if len(s) != IDLength {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'z') {
			return false
		}
	}
	return true
}
