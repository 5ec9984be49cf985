package gossip

import (
	"maps"
	"math/rand/v2"
	"slices"
)

// digestBudget bounds a digest packet's payload; with the magic byte and
// AES-GCM's 29 bytes it stays well inside one 1400-byte UDP packet. With
// short node IDs it holds ~50 versions.
const digestBudget = 1024

// digestHot is how many of the most recently changed members every digest
// names besides its rotating share: a change that gossip missed somewhere is
// then in nearly every digest while it is fresh.
const digestHot = 8

// digestLoop sends a version digest to GossipNodes random live members
// every DigestInterval (jittered, so members do not send in lockstep).
func (n *Node) digestLoop() {
	defer n.wg.Done()
	for {
		d := n.cfg.DigestInterval*3/4 + rand.N(n.cfg.DigestInterval/2+1)
		t := n.clock.NewTimer(d)
		select {
		case <-n.done:
			t.Stop()
			return
		case <-t.C():
		}
		n.sendDigest()
	}
}

func (n *Node) sendDigest() {
	n.mu.Lock()
	if n.stopped || len(n.addrs) == 0 {
		n.mu.Unlock()
		return
	}
	// Pick GossipNodes distinct peers by partial shuffle.
	peers := slices.Collect(maps.Values(n.addrs))
	n.mu.Unlock()
	k := min(n.cfg.GossipNodes, len(peers))
	for i := range k {
		j := i + rand.N(len(peers)-i)
		peers[i], peers[j] = peers[j], peers[i]
	}
	vd := &versionDigest{From: n.cfg.NodeID, Versions: n.tbl.versionDigest(digestBudget-len(n.cfg.NodeID)-12, digestHot)}
	pkt, err := seal(n.keyring, digestAAD, []byte{packetMagic}, encodeVersionDigest(vd))
	if err != nil {
		n.log.Warn("gossip: digest not sealed", "err", err)
		return
	}
	for _, p := range peers[:k] {
		if _, err := n.mux.WriteTo(pkt, p); err != nil {
			n.log.Debug("gossip: digest not sent", "peer", p, "err", err)
			continue
		}
		n.stats.digestsSent.Add(1)
	}
}

// handleDigest handles a digest packet (the magic byte already removed):
// for every member the sender holds a newer set of, a pull from the sender
// is scheduled after PullDelay, which the delta most likely still in flight
// makes unnecessary if it lands first.
func (n *Node) handleDigest(b []byte) {
	pt, err := open(n.keyring, digestAAD, b)
	if err != nil {
		n.log.Debug("gossip: digest packet refused", "err", err)
		return
	}
	vd, err := decodeVersionDigest(pt)
	if err != nil {
		n.log.Warn("gossip: bad digest", "err", err)
		return
	}
	n.stats.digestsRecv.Add(1)
	for _, node := range n.tbl.noteVersions(vd.Versions) {
		n.stats.digestGaps.Add(1)
		n.schedulePullVia(node, vd.From, n.cfg.PullDelay, false)
	}
}

// antiEntropyLoop runs a full two-way sync with a random live member every
// PushPullInterval (jittered), repairing whatever gossip lost.
func (n *Node) antiEntropyLoop() {
	defer n.wg.Done()
	for {
		iv := n.cfg.PushPullInterval
		if n.cfg.tableSyncInterval > 0 {
			iv = n.cfg.tableSyncInterval
		}
		d := iv/2 + rand.N(iv)
		t := n.clock.NewTimer(d)
		select {
		case <-n.done:
			t.Stop()
			return
		case <-t.C():
		}
		n.mu.Lock()
		peers := slices.Collect(maps.Values(n.addrs))
		n.mu.Unlock()
		if len(peers) == 0 {
			continue
		}
		p := peers[rand.N(len(peers))]
		n.stats.syncs.Add(1)
		if err := n.syncWith(p, nil); err != nil {
			n.log.Debug("gossip: anti-entropy failed", "peer", p, "err", err)
		}
	}
}
