// Package gossipkeys holds the cluster's gossip encryption keys
// (api.GossipKeys in the cluster object) and their rotation.
//
// Gossip traffic (serf/memberlist) is encrypted with AES-256 keys that every
// node must share. A rotation replaces the key in use without a moment in
// which two nodes cannot read each other, in three phases, each of which
// must reach every node before the next begins:
//
//	phase 0 (PhaseNone)     Keys = [k]          encrypt with k
//	phase 1 (PhaseInstall)  Keys = [k, k']      install k', still encrypt with k
//	phase 2 (PhaseSwitch)   Keys = [k', k]      encrypt with k', still accept k
//	phase 0                 Keys = [k']         k is dropped
//
// StartRotation begins phase 1 (the control API calls it); NextPhase moves a
// rotation on once its phase has lasted the grace. Rotator is the leader's
// loop that calls NextPhase on the stored cluster object and writes the
// result; it also gives a cluster without keys its first.
//
// # Failover
//
// A phase's start time (GossipKeys.PhaseSince) is stored with the keys, and
// the Rotator keeps nothing else, so a new leader's Rotator continues a
// rotation where the old one left it, measuring the grace from the stored
// start.
//
// # Concurrency
//
// The functions are pure. A Rotator's methods are safe for concurrent use;
// its loop is one goroutine, started by Start and ended by Stop.
package gossipkeys
