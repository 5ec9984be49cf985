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
	gone := epKey{Service: "svc", Task: "old", Port: 8080, Protocol: "tcp"}
	d := &delta{Kind: kindDelta, Node: "n1", Epoch: 7, From: 9, To: 10, Adds: []Endpoint{e4, e6}, Removes: []epKey{gone}}
	got, err := decodeDelta(encodeDelta(d))
	require.NoError(t, err)
	assert.Equal(t, d, got)
	assert.Equal(t, endpointSize(e4)+endpointSize(e6), len(encodeDelta(d))-len(encodeDelta(&delta{Kind: kindDelta, Node: "n1", Epoch: 7, From: 9, To: 10, Removes: []epKey{gone}})))
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

// Every decoder accepts only the encoders' canonical output: one message,
// one encoding.
func TestDecodeRejectsNonCanonical(t *testing.T) {
	e := ep("n", "s", "t", 1, "10.0.0.1:1")
	other := ep("n", "s", "t2", 1, "10.0.0.1:2")
	rec := func(eps ...Endpoint) *record { return &record{Node: "n", Epoch: 1, Version: 2, Eps: eps} }
	for name, c := range map[string]struct {
		b      []byte
		decode func([]byte) error
	}{
		// The two inputs the fuzz targets found (also in testdata/fuzz).
		"delta, To as 0xbf 0x00":                {[]byte("\x01\x01\x010\x010\xbf\x00\x00\x00"), decodeDeltaErr},
		"version digest, count as 0x80 0x00":    {[]byte("\x01\x010\x80\x00"), decodeVersionDigestErr},
		"have reply, version as 0x81 0x80 0x00": {[]byte{wireFormat, 0x81, 0x80, 0x00}, decodeHaveReplyErr},
		"have query, epoch padded":              {[]byte{wireFormat, 1, 'x', 0x81, 0x00, 0x01}, decodeHaveQueryErr},
		"sync request, count padded":            {[]byte{wireFormat, syncFull, 0x80, 0x80, 0x00}, decodeSyncRequestErr},
		"ten-byte varint over 64 bits":          {[]byte{wireFormat, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}, decodeHaveReplyErr},
		"delta adds a key twice": {
			encodeDelta(&delta{Kind: kindDelta, Node: "n", Epoch: 1, From: 1, To: 2, Adds: []Endpoint{e, e}}), decodeDeltaErr},
		"delta adds and removes a key": {
			encodeDelta(&delta{Kind: kindDelta, Node: "n", Epoch: 1, From: 1, To: 2, Adds: []Endpoint{e}, Removes: []epKey{e.key()}}), decodeDeltaErr},
		"delta removes a key twice": {
			encodeDelta(&delta{Kind: kindDelta, Node: "n", Epoch: 1, From: 1, To: 2, Removes: []epKey{e.key(), e.key()}}), decodeDeltaErr},
		"announcement with endpoints": {
			encodeDelta(&delta{Kind: kindAnnounce, Node: "n", Epoch: 1, From: 1, To: 2, Adds: []Endpoint{e}}), decodeDeltaErr},
		"record lists a key twice": {
			encodeSyncReply(&syncReply{Records: []*record{rec(e, other, e)}}), decodeSyncReplyErr},
		"sync reply names a node twice": {
			encodeSyncReply(&syncReply{Records: []*record{rec(e), rec(other)}}), decodeSyncReplyErr},
		"sync request digest names a node twice": {
			[]byte{wireFormat, syncPull, 2, 1, 'a', 1, 1, 'a', 2}, decodeSyncRequestErr},
	} {
		err := c.decode(c.b)
		assert.ErrorIs(t, err, errBad, name)
	}
	// What the encoders write still decodes.
	require.NoError(t, decodeSyncRequestErr([]byte{wireFormat, syncPull, 2, 1, 'a', 1, 1, 'b', 2}))
	require.NoError(t, decodeSyncReplyErr(encodeSyncReply(&syncReply{Records: []*record{rec(e, other)}})))
}

func decodeDeltaErr(b []byte) error         { _, err := decodeDelta(b); return err }
func decodeVersionDigestErr(b []byte) error { _, err := decodeVersionDigest(b); return err }
func decodeHaveQueryErr(b []byte) error     { _, err := decodeHaveQuery(b); return err }
func decodeHaveReplyErr(b []byte) error     { _, err := decodeHaveReply(b); return err }
func decodeSyncRequestErr(b []byte) error   { _, err := decodeSyncRequest(b); return err }
func decodeSyncReplyErr(b []byte) error     { _, err := decodeSyncReply(b); return err }

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
		// A digest's entries come in map order, so re-encoding may reorder
		// them; it gives the same message in as many bytes.
		if r, err := decodeSyncReply(b); err == nil {
			for _, rec := range r.Records {
				require.GreaterOrEqual(t, rec.Version, rec.Epoch)
			}
			again := encodeSyncReply(r)
			require.Len(t, again, len(b))
			r2, err := decodeSyncReply(again)
			require.NoError(t, err)
			require.Equal(t, r, r2)
		}
		if r, err := decodeSyncRequest(b); err == nil {
			again := encodeSyncRequest(r)
			require.Len(t, again, len(b))
			r2, err := decodeSyncRequest(again)
			require.NoError(t, err)
			require.Equal(t, r, r2)
		}
	})
}

func FuzzDecodeHave(f *testing.F) {
	f.Add(encodeHaveQuery(&haveQuery{Node: "n", Epoch: 1, Version: 1 << 40}))
	f.Add(encodeHaveReply(7))
	f.Add([]byte{wireFormat, 0x81, 0x80, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		// Whatever decodes re-encodes to the same bytes.
		if hq, err := decodeHaveQuery(b); err == nil {
			require.Equal(t, b, encodeHaveQuery(hq))
			require.NotEmpty(t, hq.Node)
			require.GreaterOrEqual(t, hq.Version, hq.Epoch)
		}
		if v, err := decodeHaveReply(b); err == nil {
			require.Equal(t, b, encodeHaveReply(v))
		}
	})
}
