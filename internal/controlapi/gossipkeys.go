package controlapi

import (
	"crypto/rand"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/shoalhq/shoal/internal/api"
)

// GossipKeyBytes is the size of a gossip key: AES-256.
const GossipKeyBytes = 32

// Gossip key rotation phases (api.GossipKeys.RotationPhase).
const (
	// GossipPhaseNone: no rotation runs; Keys holds the one key in use.
	GossipPhaseNone = 0
	// GossipPhaseInstall: Keys is [old, new]; every node installs the new
	// key but still encrypts with the old one.
	GossipPhaseInstall = 1
	// GossipPhaseSwitch: Keys is [new, old]; every node encrypts with the
	// new key and still accepts the old one.
	GossipPhaseSwitch = 2
)

// NewGossipKeys returns the gossip keys of a new cluster: one random key, no
// rotation.
func NewGossipKeys(now time.Time) (*api.GossipKeys, error) {
	k, err := newGossipKey()
	if err != nil {
		return nil, err
	}
	return &api.GossipKeys{Keys: [][]byte{k}, PhaseSince: now.UnixNano()}, nil
}

func newGossipKey() ([]byte, error) {
	k := make([]byte, GossipKeyBytes)
	if _, err := rand.Read(k); err != nil {
		return nil, fmt.Errorf("gossip key: %w", err)
	}
	return k, nil
}

// StartGossipKeyRotation returns cur with a new key installed next to the
// current one (phase 1). A rotation already under way is refused: its phases
// must each reach every node before the next begins. A cluster without
// gossip keys (created before they existed) gets its first key instead.
func StartGossipKeyRotation(cur *api.GossipKeys, now time.Time) (*api.GossipKeys, error) {
	if len(cur.GetKeys()) == 0 {
		return NewGossipKeys(now)
	}
	if cur.GetRotationPhase() != GossipPhaseNone {
		return nil, invalid("UpdateClusterRequest.RotateGossipKey",
			"a gossip key rotation is already under way (phase %d of 2): wait until it ends", cur.GetRotationPhase())
	}
	k, err := newGossipKey()
	if err != nil {
		return nil, err
	}
	return &api.GossipKeys{Keys: [][]byte{cur.GetKeys()[0], k}, RotationPhase: GossipPhaseInstall,
		PhaseSince: now.UnixNano()}, nil
}

// NextGossipKeyPhase returns the keys of the rotation's next phase once the
// current one has lasted grace, and whether there is a change to store: phase
// 1 ([old, new]) becomes phase 2 ([new, old]), which ends with [new] alone.
// The grace gives every node time to apply a phase (by its session or its
// store) before the next one relies on it. Missing keys (a cluster created
// before gossip keys existed) are created. cur is not modified.
func NextGossipKeyPhase(cur *api.GossipKeys, now time.Time, grace time.Duration) (*api.GossipKeys, bool, error) {
	if len(cur.GetKeys()) == 0 {
		k, err := NewGossipKeys(now)
		return k, err == nil, err
	}
	phase := cur.GetRotationPhase()
	if phase == GossipPhaseNone || now.Sub(time.Unix(0, cur.GetPhaseSince())) < grace {
		return cur, false, nil
	}
	next := proto.Clone(cur).(*api.GossipKeys)
	next.PhaseSince = now.UnixNano()
	switch {
	case phase == GossipPhaseInstall && len(cur.Keys) >= 2:
		next.Keys = [][]byte{cur.Keys[len(cur.Keys)-1], cur.Keys[0]}
		next.RotationPhase = GossipPhaseSwitch
	default: // phase 2, or a damaged phase 1: keep the key in use now
		next.Keys = [][]byte{cur.Keys[0]}
		next.RotationPhase = GossipPhaseNone
	}
	return next, true, nil
}
