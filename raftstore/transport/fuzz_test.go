package transport

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/shoalhq/shoal/internal/api"
)

// FuzzAssembler feeds the snapshot reassembler arbitrary first chunks and data splits. It must
// never panic, and whenever it accepts a stream the result must be exactly what was announced.
func FuzzAssembler(f *testing.F) {
	good, err := proto.Marshal(withoutSnapshotData(snapMsg(1, 2, 9, []byte("x"))))
	require.NoError(f, err)
	f.Add(good, uint64(5), []byte("hello"), uint8(2), []byte(nil))
	f.Add(good, uint64(3), []byte("hello"), uint8(1), []byte(nil))
	f.Add(good, uint64(1<<40), []byte(""), uint8(0), []byte(nil))
	f.Add([]byte{0x08, 0x0a}, uint64(0), []byte{}, uint8(0), []byte("junk"))
	f.Add(good, uint64(6), []byte("hello"), uint8(3), []byte("m"))
	f.Fuzz(func(t *testing.T, head []byte, total uint64, data []byte, split uint8, extraMsg []byte) {
		a := assembler{max: 1 << 20, to: 2}
		chunks := []*api.SnapshotChunk{{Message: head, TotalSize: total}}
		step := int(split)%7 + 1
		for off := 0; off < len(data); off += step {
			chunks = append(chunks, &api.SnapshotChunk{Data: data[off:min(off+step, len(data))]})
		}
		if len(extraMsg) > 0 {
			chunks = append(chunks, &api.SnapshotChunk{Message: extraMsg})
		}
		var addErr error
		for _, c := range chunks {
			if addErr = a.add(c); addErr != nil {
				break
			}
		}
		m, err := a.finish()
		if addErr != nil || err != nil {
			return
		}
		require.Empty(t, extraMsg, "a later chunk with a message must be refused")
		require.Equal(t, pb.MsgSnap, m.GetType())
		require.Equal(t, uint64(2), m.GetTo())
		require.LessOrEqual(t, total, uint64(1<<20))
		require.Equal(t, total, uint64(len(data)))
		require.True(t, bytes.Equal(data, m.GetSnapshot().GetData()))
	})
}
