package gossipkeys

import (
	"crypto/rand"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/errdefs"
)

// KeyBytes is the size of a gossip key: AES-256.
const KeyBytes = 32

// Rotation phases (api.GossipKeys.RotationPhase).
const (
	// PhaseNone: no rotation runs; Keys holds the one key in use.
	PhaseNone = 0
	// PhaseInstall: Keys is [old, new]; every node installs the new key but
	// still encrypts with the old one.
	PhaseInstall = 1
	// PhaseSwitch: Keys is [new, old]; every node encrypts with the new key
	// and still accepts the old one.
	PhaseSwitch = 2
)

// NewKeys returns the gossip keys of a new cluster: one random key, no
// rotation, its phase starting at now.
func NewKeys(now time.Time) (*api.GossipKeys, error) {
	k, err := newKey()
	if err != nil {
		return nil, err
	}
	return &api.GossipKeys{Keys: [][]byte{k}, PhaseSince: now.UnixNano()}, nil
}

func newKey() ([]byte, error) {
	k := make([]byte, KeyBytes)
	if _, err := rand.Read(k); err != nil {
		return nil, fmt.Errorf("gossip key: %w", err)
	}
	return k, nil
}

// StartRotation returns cur with a new key installed next to the current one
// (phase 1, starting at now). A rotation already under way is refused with
// errdefs.ErrInvalidSpec naming UpdateClusterRequest.RotateGossipKey: its
// phases must each reach every node before the next begins. Missing keys
// (cur nil or empty) are created instead, as by NewKeys. cur is not
// modified.
func StartRotation(cur *api.GossipKeys, now time.Time) (*api.GossipKeys, error) {
	if len(cur.GetKeys()) == 0 {
		return NewKeys(now)
	}
	if cur.GetRotationPhase() != PhaseNone {
		return nil, fmt.Errorf("UpdateClusterRequest.RotateGossipKey: a gossip key rotation is already under way (phase %d of 2): wait until it ends: %w",
			cur.GetRotationPhase(), errdefs.ErrInvalidSpec)
	}
	k, err := newKey()
	if err != nil {
		return nil, err
	}
	return &api.GossipKeys{Keys: [][]byte{cur.GetKeys()[0], k}, RotationPhase: PhaseInstall,
		PhaseSince: now.UnixNano()}, nil
}

// NextPhase returns the keys of the rotation's next phase once the current
// one has lasted grace, and whether there is a change to store: phase 1
// ([old, new]) becomes phase 2 ([new, old]), which ends with [new] alone.
// The grace gives every node time to apply a phase (by its session or its
// store) before the next one relies on it. Missing keys (cur nil or empty)
// are created. Without a change it returns cur itself; cur is never
// modified.
func NextPhase(cur *api.GossipKeys, now time.Time, grace time.Duration) (*api.GossipKeys, bool, error) {
	if len(cur.GetKeys()) == 0 {
		k, err := NewKeys(now)
		return k, err == nil, err
	}
	phase := cur.GetRotationPhase()
	if phase == PhaseNone || now.Sub(time.Unix(0, cur.GetPhaseSince())) < grace {
		return cur, false, nil
	}
	next := proto.Clone(cur).(*api.GossipKeys)
	next.PhaseSince = now.UnixNano()
	switch {
	case phase == PhaseInstall && len(cur.Keys) >= 2:
		next.Keys = [][]byte{cur.Keys[len(cur.Keys)-1], cur.Keys[0]}
		next.RotationPhase = PhaseSwitch
	default: // phase 2, or a damaged phase 1: keep the key in use now
		next.Keys = [][]byte{cur.Keys[0]}
		next.RotationPhase = PhaseNone
	}
	return next, true, nil
}
