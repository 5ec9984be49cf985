package gossip

import (
	"bytes"
	"testing"

	"github.com/hashicorp/memberlist"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDeltaRoundTrip(t *testing.T) {
	e4 := ep("n1", "svc", "task", 8080, "10.1.2.3:31000")
	e6 := ep("n1", "svc", "task6", 53, "[fd00::1]:31001")
	e6.Protocol = "udp"
	d := &delta{Kind: kindDelta, Node: "n1", Epoch: 7, From: 9, To: 10, Adds: []Endpoint{e4, e6}, Removes: []epKey{e4.key()}}
	got, err := decodeDelta(encodeDelta(d))
	require.NoError(t, err)
	assert.Equal(t, d, got)
	assert.Equal(t, endpointSize(e4)+endpointSize(e6), len(encodeDelta(d))-len(encodeDelta(&delta{Kind: kindDelta, Node: "n1", Epoch: 7, From: 9, To: 10, Removes: []epKey{e4.key()}})))
}

func TestDecodeRejectsBadInput(t *testing.T) {
	good := encodeDelta(&delta{Kind: kindDelta, Node: "n", Epoch: 1, From: 1, To: 2, Adds: []Endpoint{ep("n", "s", "t", 1, "10.0.0.1:1")}})
	for i := range good {
		_, err := decodeDelta(good[:i])
		assert.Error(t, err, "truncated at %d", i)
	}
	_, err := decodeDelta(append(bytes.Clone(good), 0))
	assert.Error(t, err, "trailing byte")
	_, err = decodeDelta(encodeDelta(&delta{Kind: kindDelta, Node: "n", Epoch: 5, From: 3, To: 2}))
	assert.Error(t, err, "versions backwards")
	_, err = decodeSyncReply([]byte{wireFormat, 0xff, 0xff, 0xff, 0xff, 0x0f})
	assert.Error(t, err, "absurd count")
}

func TestSyncMessagesRoundTrip(t *testing.T) {
	req := &syncRequest{Kind: syncFull, Digest: map[string]uint64{"a": 1, "b": 1 << 60}}
	gotReq, err := decodeSyncRequest(encodeSyncRequest(req))
	require.NoError(t, err)
	assert.Equal(t, req, gotReq)
	rep := &syncReply{Records: []*record{{Node: "a", Epoch: 1, Version: 3, Eps: []Endpoint{ep("a", "s", "t", 1, "10.0.0.1:1")}}}, Digest: map[string]uint64{"a": 3}}
	gotRep, err := decodeSyncReply(encodeSyncReply(rep))
	require.NoError(t, err)
	assert.Equal(t, rep, gotRep)
}

func TestFramerEncryption(t *testing.T) {
	k1, k2 := newKey(t), newKey(t)
	kr1, err := memberlist.NewKeyring([][]byte{k1}, k1)
	require.NoError(t, err)
	kr12, err := memberlist.NewKeyring([][]byte{k2, k1}, k2)
	require.NoError(t, err)
	kr2, err := memberlist.NewKeyring([][]byte{k2}, k2)
	require.NoError(t, err)

	var buf bytes.Buffer
	require.NoError(t, framer{keyring: kr1}.write(&buf, []byte("hello")))
	assert.NotContains(t, buf.String(), "hello")
	raw := bytes.Clone(buf.Bytes())
	got, err := framer{keyring: kr12}.read(bytes.NewReader(raw))
	require.NoError(t, err, "any installed key opens a frame")
	assert.Equal(t, "hello", string(got))
	_, err = framer{keyring: kr2}.read(bytes.NewReader(raw))
	assert.Error(t, err, "a frame under a removed key is refused")
	_, err = framer{}.read(bytes.NewReader(raw))
	assert.Error(t, err)

	buf.Reset()
	require.NoError(t, framer{}.write(&buf, []byte("plain")))
	_, err = framer{keyring: kr1}.read(bytes.NewReader(buf.Bytes()))
	assert.ErrorIs(t, err, errPlaintext)

	raw[len(raw)-1] ^= 1
	_, err = framer{keyring: kr1}.read(bytes.NewReader(raw))
	assert.Error(t, err, "tampering is detected")
}

func FuzzDecodeDelta(f *testing.F) {
	f.Add(encodeDelta(&delta{Kind: kindDelta, Node: "n", Epoch: 1, From: 1, To: 2, Adds: []Endpoint{ep("n", "s", "t", 1, "10.0.0.1:1")}, Removes: []epKey{{"s", "t", 1, "udp"}}}))
	f.Add(encodeDelta(&delta{Kind: kindAnnounce, Node: "n", Epoch: 1, From: 1, To: 9}))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := decodeDelta(b)
		if err != nil {
			return
		}
		// Whatever decodes re-encodes to the same bytes and is valid.
		require.Equal(t, b, encodeDelta(d))
		for _, e := range d.Adds {
			require.NoError(t, e.validate())
		}
	})
}

func FuzzDecodeSync(f *testing.F) {
	f.Add(encodeSyncReply(&syncReply{Records: []*record{{Node: "a", Epoch: 1, Version: 3, Eps: []Endpoint{ep("a", "s", "t", 1, "10.0.0.1:1")}}}, Digest: map[string]uint64{"a": 3}}))
	f.Add(encodeSyncRequest(&syncRequest{Kind: syncPull, Digest: map[string]uint64{"a": 1}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		if r, err := decodeSyncReply(b); err == nil {
			for _, rec := range r.Records {
				require.GreaterOrEqual(t, rec.Version, rec.Epoch)
			}
		}
		_, _ = decodeSyncRequest(b)
	})
}
