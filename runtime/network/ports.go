package network

import (
	"cmp"
	"net/netip"
	"slices"
)

// maxElemsPerBatch bounds the deletions, and the additions, sent in one
// netlink batch: the elements of one message must fit a netlink attribute
// (64 KiB, about 40 bytes each here), and a batch the socket buffers.
// Bigger changes take several batches.
const maxElemsPerBatch = 1024

// portKey is a key of the ports map: protocol and host port.
type portKey struct {
	proto byte
	port  uint16
}

// portTarget is a value of the ports map: the container's address and port.
type portTarget struct {
	addr netip.Addr
	port uint16
}

// portTable is the content of the ports map.
type portTable map[portKey]portTarget

// mapBatch is one netlink batch of changes to the ports map: entries to
// delete, then entries to add.
type mapBatch struct {
	dels, adds []portKey
}

// planMapBatches is the changes that turn the map have into want, in
// batches of at most limit deletions and limit additions, in key order so the
// plan is reproducible. An entry whose value changes is deleted and added
// in the same batch (the kernel refuses to add a key that exists with
// another value), so between batches every entry holds either its old
// value or its new one. Entries that do not change are not in the plan.
func planMapBatches(have, want portTable, limit int) []mapBatch {
	keys := make([]portKey, 0, len(have)+len(want))
	for k := range have {
		keys = append(keys, k)
	}
	for k := range want {
		if _, ok := have[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, func(a, b portKey) int {
		return cmp.Or(cmp.Compare(a.proto, b.proto), cmp.Compare(a.port, b.port))
	})
	var (
		out []mapBatch
		cur mapBatch
	)
	for _, k := range keys {
		old, had := have[k]
		v, wanted := want[k]
		if had && wanted && old == v {
			continue
		}
		if (had && len(cur.dels) == limit) || (wanted && len(cur.adds) == limit) {
			out = append(out, cur)
			cur = mapBatch{}
		}
		if had {
			cur.dels = append(cur.dels, k)
		}
		if wanted {
			cur.adds = append(cur.adds, k)
		}
	}
	if len(cur.dels)+len(cur.adds) > 0 {
		out = append(out, cur)
	}
	return out
}
