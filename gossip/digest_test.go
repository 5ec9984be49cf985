package gossip

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestVersionDigestRoundTrip(t *testing.T) {
	vd := &versionDigest{From: "a", Versions: []nodeVersion{{"a", 7}, {"b", 1 << 62}}}
	got, err := decodeVersionDigest(encodeVersionDigest(vd))
	require.NoError(t, err)
	assert.Equal(t, vd, got)

	b := encodeVersionDigest(vd)
	for i := range len(b) {
		_, err := decodeVersionDigest(b[:i])
		assert.Error(t, err, "truncated at %d", i)
	}
	_, err = decodeVersionDigest(append(b, 0))
	assert.ErrorIs(t, err, errBad)
	_, err = decodeVersionDigest(encodeVersionDigest(&versionDigest{From: "a", Versions: []nodeVersion{{"", 1}}}))
	assert.ErrorIs(t, err, errBad)
}

func FuzzDecodeVersionDigest(f *testing.F) {
	f.Add(encodeVersionDigest(&versionDigest{From: "a", Versions: []nodeVersion{{"a", 7}, {"b", 9}}}))
	f.Add(encodeVersionDigest(&versionDigest{From: "a"}))
	f.Fuzz(func(t *testing.T, b []byte) {
		vd, err := decodeVersionDigest(b)
		if err != nil {
			return
		}
		require.Equal(t, b, encodeVersionDigest(vd))
		require.NotEmpty(t, vd.From)
		for _, nv := range vd.Versions {
			require.NotEmpty(t, nv.Node)
		}
	})
}

// A digest lists this node first, then the most recently changed, then
// rotates over the rest so successive digests cover the whole table, and
// its sealed packet fits one UDP packet even with 200 maximal node IDs.
func TestTableVersionDigestRotatesAndFits(t *testing.T) {
	self := strings.Repeat("s", maxNodeIDLen)
	tb := newTable(self, 1<<60)
	id := func(i int) string { return fmt.Sprintf("%0*d", maxNodeIDLen, i) }
	for i := range 200 {
		require.False(t, tb.applyRecord(&record{Node: id(i), Epoch: 1 << 60, Version: 1<<60 + uint64(i)}))
	}
	hotID := id(17)
	tb.applyRecord(&record{Node: hotID, Epoch: 1 << 60, Version: 1<<61 + 5})

	kr, err := memberlist.NewKeyring(nil, make([]byte, KeySize))
	require.NoError(t, err)
	seen := map[string]bool{}
	for round := 0; len(seen) < 201; round++ {
		require.Less(t, round, 200, "digests never covered the table")
		vs := tb.versionDigest(digestBudget-len(self)-12, digestHot)
		require.GreaterOrEqual(t, len(vs), 2)
		assert.Equal(t, nodeVersion{self, 1 << 60}, vs[0])
		assert.Equal(t, nodeVersion{hotID, 1<<61 + 5}, vs[1], "the most recent change comes right after self")
		pkt, err := seal(kr, digestAAD, []byte{packetMagic}, encodeVersionDigest(&versionDigest{From: self, Versions: vs}))
		require.NoError(t, err)
		require.LessOrEqual(t, len(pkt), 1400, "digest packet exceeds memberlist's UDP buffer")
		once := map[string]bool{}
		for _, nv := range vs {
			require.False(t, once[nv.Node], "node %s twice in one digest", nv.Node)
			once[nv.Node] = true
			seen[nv.Node] = true
		}
	}
}

func TestTableNoteVersions(t *testing.T) {
	tb := newTable("me", 10)
	require.False(t, tb.applyRecord(&record{Node: "x", Epoch: 100, Version: 105}))
	tb.drop("gone")
	behind := tb.noteVersions([]nodeVersion{{"me", 99}, {"x", 105}, {"y", 3}, {"gone", 50}, {"x", 107}})
	assert.Equal(t, []string{"y", "x"}, behind)
	assert.True(t, tb.behind("x"))
	assert.True(t, tb.behind("y"))
	assert.False(t, tb.behind("gone"))
	require.False(t, tb.applyRecord(&record{Node: "x", Epoch: 100, Version: 107}))
	assert.False(t, tb.behind("x"))
}

// A change that gossip missed everywhere (here: never gossiped at all) still
// reaches every member through version digests, long before anti-entropy.
func TestDigestRepairsMissedChange(t *testing.T) {
	c := startCluster(t, 5, newKey(t), func(cfg *Config) {
		cfg.PushPullInterval = time.Hour // no anti-entropy: only digests can repair
		cfg.DigestInterval = 100 * time.Millisecond
	})
	a := c.nodes[0]
	e := ep(a.cfg.NodeID, "web", "t1", 80, "10.0.0.1:30001")
	_, _, v := a.tbl.local()
	a.tbl.setLocal(map[epKey]Endpoint{e.key(): e}, v+1) // the version moves, no delta leaves
	want := []Endpoint{e}
	require.Eventually(t, func() bool { return converged(c.nodes, want) }, 30*time.Second, 20*time.Millisecond)
	var gaps, pulls int64
	for _, nd := range c.nodes[1:] {
		gaps += nd.stats.digestGaps.Load()
		pulls += nd.stats.pulls.Load()
		assert.Zero(t, nd.stats.syncs.Load())
	}
	assert.Positive(t, gaps)
	assert.Positive(t, pulls)
}

// Digest packets sealed under a key the receiver lacks are refused.
func TestDigestUnderForeignKeyRefused(t *testing.T) {
	c := startCluster(t, 2, newKey(t), nil)
	b := c.nodes[1]
	kr, err := memberlist.NewKeyring(nil, newKey(t))
	require.NoError(t, err)
	body, err := seal(kr, digestAAD, nil, encodeVersionDigest(&versionDigest{From: "evil", Versions: []nodeVersion{{"victim", 1 << 62}}}))
	require.NoError(t, err)
	b.handleDigest(body)
	assert.Zero(t, b.stats.digestsRecv.Load())
	assert.Zero(t, b.stats.digestGaps.Load())
	body, err = seal(nil, digestAAD, nil, encodeVersionDigest(&versionDigest{From: "evil", Versions: []nodeVersion{{"victim", 1 << 62}}}))
	require.NoError(t, err)
	b.handleDigest(body)
	assert.Zero(t, b.stats.digestsRecv.Load())
	assert.Zero(t, b.stats.digestGaps.Load())
}
