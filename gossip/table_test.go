package gossip

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestTableDeltasInOrderAndOutOfOrder(t *testing.T) {
	tb := newTable("me", 1)
	e1 := ep("x", "s", "t1", 80, "10.0.0.1:1")
	e2 := ep("x", "s", "t2", 80, "10.0.0.1:2")
	e3 := ep("x", "s", "t3", 80, "10.0.0.1:3")
	d1 := &delta{Kind: kindDelta, Node: "x", Epoch: 100, From: 100, To: 101, Adds: []Endpoint{e1}}
	d2 := &delta{Kind: kindDelta, Node: "x", Epoch: 100, From: 101, To: 102, Adds: []Endpoint{e2}}
	d3 := &delta{Kind: kindDelta, Node: "x", Epoch: 100, From: 102, To: 103, Adds: []Endpoint{e3}, Removes: []epKey{e1.key()}}

	// d3 and d2 arrive before d1: buffered, a pull is due later if the gap stays.
	changed, now, later := tb.applyDelta(d3)
	assert.False(t, changed)
	assert.False(t, now)
	assert.True(t, later)
	_, _, later = tb.applyDelta(d2)
	assert.True(t, later)
	assert.True(t, tb.behind("x"))
	// d1 applies to the empty set (From == Epoch) and drains the rest.
	changed, _, later = tb.applyDelta(d1)
	assert.True(t, changed)
	assert.False(t, later)
	assert.False(t, tb.behind("x"))
	assert.Equal(t, sortedCopy([]Endpoint{e2, e3}), tb.endpoints())
	assert.Equal(t, uint64(103), tb.versionOf("x"))

	// Duplicates are ignored.
	changed, now, later = tb.applyDelta(d2)
	assert.False(t, changed || now || later)
}

func TestTableAnnounceAndRecords(t *testing.T) {
	tb := newTable("me", 1)
	_, now, _ := tb.applyDelta(&delta{Kind: kindAnnounce, Node: "x", Epoch: 5, From: 5, To: 9})
	assert.True(t, now, "an announcement means pull now")
	assert.True(t, tb.behind("x"))
	e := ep("x", "s", "t1", 80, "10.0.0.1:1")
	assert.True(t, tb.applyRecord(&record{Node: "x", Epoch: 5, Version: 9, Eps: []Endpoint{e}}))
	assert.False(t, tb.behind("x"))
	assert.False(t, tb.applyRecord(&record{Node: "x", Epoch: 5, Version: 8}), "older record loses")
	assert.Equal(t, []Endpoint{e}, tb.endpoints())

	// Records about this node itself are never accepted from peers.
	assert.False(t, tb.applyRecord(&record{Node: "me", Epoch: 1, Version: 1 << 40, Eps: []Endpoint{e}}))

	// newerThan: full mode includes nodes the peer lacks, targeted mode only those asked.
	assert.Len(t, tb.newerThan(map[string]uint64{}, true), 2)
	assert.Empty(t, tb.newerThan(map[string]uint64{"x": 9}, false))
	rs := tb.newerThan(map[string]uint64{"x": 3}, false)
	require.Len(t, rs, 1)
	assert.Equal(t, uint64(9), rs[0].Version)
}

func TestTableDropRefusesUntilRevived(t *testing.T) {
	tb := newTable("me", 1)
	e := ep("x", "s", "t1", 80, "10.0.0.1:1")
	rec := &record{Node: "x", Epoch: 5, Version: 6, Eps: []Endpoint{e}}
	require.True(t, tb.applyRecord(rec))
	assert.True(t, tb.drop("x"))
	assert.Empty(t, tb.endpoints())
	// Stale anti-entropy and in-flight deltas must not resurrect it.
	assert.False(t, tb.applyRecord(rec))
	changed, now, later := tb.applyDelta(&delta{Kind: kindDelta, Node: "x", Epoch: 5, From: 6, To: 7, Adds: []Endpoint{e}})
	assert.False(t, changed || now || later)
	assert.False(t, tb.behind("x"))
	tb.revive("x")
	assert.True(t, tb.applyRecord(rec))
	assert.False(t, tb.drop("me"), "a node never drops itself")
}

func TestTableNewIncarnationStartsEmpty(t *testing.T) {
	tb := newTable("me", 1)
	old := ep("x", "s", "old", 80, "10.0.0.1:1")
	require.True(t, tb.applyRecord(&record{Node: "x", Epoch: 5, Version: 50, Eps: []Endpoint{old}}))
	nw := ep("x", "s", "new", 80, "10.0.0.1:2")
	changed, _, _ := tb.applyDelta(&delta{Kind: kindDelta, Node: "x", Epoch: 1000, From: 1000, To: 1001, Adds: []Endpoint{nw}})
	assert.True(t, changed)
	assert.Equal(t, []Endpoint{nw}, tb.endpoints())
}

func TestTablePendingBounded(t *testing.T) {
	tb := newTable("me", 1)
	var now bool
	for i := range maxPending + 1 {
		_, now, _ = tb.applyDelta(&delta{Kind: kindDelta, Node: "x", Epoch: 1, From: uint64(10 + i), To: uint64(11 + i)})
	}
	assert.True(t, now, "overflowing the pending buffer falls back to a pull")
}
