package controlapi

import (
	"github.com/shoalhq/shoal/internal/ca"
	"github.com/shoalhq/shoal/internal/gossipkeys"
)

// Signers builds and caches the signer of the cluster's current CA.
//
// Deprecated: forwarding for the root package; use ca.Signers.
type Signers = ca.Signers

// CAServer implements api.CAServer over a manager's store.
//
// Deprecated: forwarding for the root package; use ca.Server.
type CAServer = ca.Server

// NewCAServer returns the CA service of a manager.
//
// Deprecated: forwarding for the root package; use ca.NewServer.
var NewCAServer = ca.NewServer

// FinishRootRotation completes a root rotation whose nodes all have
// certificates from the new root.
//
// Deprecated: forwarding for the root package; use ca.FinishRootRotation
// (or the rootrotation component, which runs it on the leader).
var FinishRootRotation = ca.FinishRootRotation

// OU returns the certificate role of a node role.
//
// Deprecated: forwarding for the root package; use ca.OU.
var OU = ca.OU

// ClientNameRE is the rule for operator names (a certificate CN).
//
// Deprecated: forwarding for the root package; use ca.ClientNameRE.
var ClientNameRE = ca.ClientNameRE

// NewGossipKeys returns the gossip keys of a new cluster.
//
// Deprecated: forwarding for the root package; use gossipkeys.NewKeys.
var NewGossipKeys = gossipkeys.NewKeys

// NextGossipKeyPhase returns the keys of a gossip key rotation's next phase
// once the current one has lasted grace.
//
// Deprecated: forwarding for the root package; use gossipkeys.NextPhase (or
// the gossipkeys.Rotator component, which runs it on the leader).
var NextGossipKeyPhase = gossipkeys.NextPhase
