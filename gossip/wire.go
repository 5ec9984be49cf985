package gossip

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// Wire format. Everything this package sends besides serf's own traffic is
// one of the messages below, in a compact hand-written binary encoding
// (uvarint lengths and counts, strings as length + bytes). It is private to
// the package: no other component reads it, and the leading format byte
// names the encoding, so members of different builds can tell it apart.
//
// Decoders accept only what the encoders write: varints in their shortest
// form, no trailing bytes, no endpoint key twice in one set or delta, no
// node twice in a sync request's digest or a sync reply, and announcements
// without endpoints. Anything else is refused with an error wrapping errBad or
// errShort, so every accepted message has one encoding (up to the order of
// a digest's entries, which follows map iteration).

const wireFormat byte = 1

// Delta message kinds (the payload of a serf user event).
const (
	kindDelta    byte = 1 // carries the endpoint changes from one version to the next
	kindAnnounce byte = 2 // "node X is now at version V": too big to gossip, pull it
)

// errShort and errBad describe undecodable input.
var (
	errShort = errors.New("gossip: message truncated")
	errBad   = errors.New("gossip: malformed message")
)

// delta is one step of a node's endpoint set, From -> To. A delta whose From
// equals Epoch applies to the empty set, which lets a receiver that has never
// heard of the node start from nothing.
type delta struct {
	Kind    byte
	Node    string
	Epoch   uint64
	From    uint64
	To      uint64
	Adds    []Endpoint // added or changed endpoints (Node is implied)
	Removes []epKey
}

// record is the whole endpoint set of one node at one version.
type record struct {
	Node    string
	Epoch   uint64
	Version uint64
	Eps     []Endpoint
}

type encoder struct{ b []byte }

func (e *encoder) byte(v byte)      { e.b = append(e.b, v) }
func (e *encoder) uvarint(v uint64) { e.b = binary.AppendUvarint(e.b, v) }
func (e *encoder) str(s string) {
	e.uvarint(uint64(len(s)))
	e.b = append(e.b, s...)
}

func (e *encoder) endpoint(ep Endpoint) {
	e.str(ep.Service)
	e.str(ep.Task)
	e.uvarint(uint64(ep.Port))
	e.proto(ep.Protocol)
	a := ep.Addr.Addr()
	if a.Is4() {
		e.byte(4)
		b := a.As4()
		e.b = append(e.b, b[:]...)
	} else {
		e.byte(16)
		b := a.As16()
		e.b = append(e.b, b[:]...)
	}
	e.b = binary.BigEndian.AppendUint16(e.b, ep.Addr.Port())
}

func (e *encoder) proto(p string) {
	if p == "udp" {
		e.byte(1)
	} else {
		e.byte(0)
	}
}

func (e *encoder) key(k epKey) {
	e.str(k.Service)
	e.str(k.Task)
	e.uvarint(uint64(k.Port))
	e.proto(k.Protocol)
}

func (e *encoder) record(r *record) {
	e.str(r.Node)
	e.uvarint(r.Epoch)
	e.uvarint(r.Version)
	e.uvarint(uint64(len(r.Eps)))
	for _, ep := range r.Eps {
		e.endpoint(ep)
	}
}

// endpointSize is the exact encoded size of ep, used to fill chunks.
func endpointSize(ep Endpoint) int {
	var e encoder
	e.endpoint(ep)
	return len(e.b)
}

func keySize(k epKey) int {
	var e encoder
	e.key(k)
	return len(e.b)
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
}

// format reads a message's leading format byte and fails on an unknown one.
func (d *decoder) format() {
	if f := d.byte(); d.err == nil && f != wireFormat {
		d.fail(fmt.Errorf("%w: unknown format %d", errBad, f))
	}
}

// end fails on bytes left after a whole message and returns the first error.
func (d *decoder) end() error {
	if d.err == nil && len(d.b) != 0 {
		d.fail(fmt.Errorf("%w: trailing bytes", errBad))
	}
	return d.err
}

func (d *decoder) byte() byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) < 1 {
		d.fail(errShort)
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	switch {
	case n == 0:
		d.fail(errShort)
		return 0
	case n < 0:
		d.fail(fmt.Errorf("%w: varint overflows 64 bits", errBad))
		return 0
	case n > 1 && d.b[n-1] == 0:
		// A last byte of zero adds nothing: the encoder never writes it, and
		// accepting it would give one value several encodings.
		d.fail(fmt.Errorf("%w: varint not in its shortest form", errBad))
		return 0
	}
	d.b = d.b[n:]
	return v
}

// count reads a element count and rejects counts that cannot fit in the
// remaining bytes, given each element takes at least min bytes, so a hostile
// count cannot make the decoder allocate more than the message size.
func (d *decoder) count(min int) int {
	n := d.uvarint()
	if d.err != nil {
		return 0
	}
	if n > uint64(len(d.b)/min) {
		d.fail(errBad)
		return 0
	}
	return int(n)
}

func (d *decoder) str(max int) string {
	n := d.uvarint()
	if d.err != nil {
		return ""
	}
	if n > uint64(max) {
		d.fail(fmt.Errorf("%w: string of %d bytes exceeds %d", errBad, n, max))
		return ""
	}
	if uint64(len(d.b)) < n {
		d.fail(errShort)
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

func (d *decoder) proto() string {
	switch d.byte() {
	case 0:
		return "tcp"
	case 1:
		return "udp"
	default:
		d.fail(fmt.Errorf("%w: unknown protocol", errBad))
		return ""
	}
}

func (d *decoder) port() uint32 {
	p := d.uvarint()
	if d.err == nil && (p == 0 || p > 65535) {
		d.fail(fmt.Errorf("%w: port %d", errBad, p))
	}
	return uint32(p)
}

// minEndpointSize is the smallest encoding of an endpoint (empty strings are
// rejected later, but the bound only needs to be a lower bound).
const minEndpointSize = 1 + 1 + 1 + 1 + 1 + 4 + 2

func (d *decoder) endpoint(node string) Endpoint {
	var ep Endpoint
	ep.Service = d.str(maxIDLen)
	ep.Task = d.str(maxIDLen)
	ep.Port = d.port()
	ep.Protocol = d.proto()
	var addr netip.Addr
	switch d.byte() {
	case 4:
		if len(d.b) < 4 {
			d.fail(errShort)
			return ep
		}
		addr = netip.AddrFrom4([4]byte(d.b[:4]))
		d.b = d.b[4:]
	case 16:
		if len(d.b) < 16 {
			d.fail(errShort)
			return ep
		}
		addr = netip.AddrFrom16([16]byte(d.b[:16]))
		d.b = d.b[16:]
	default:
		d.fail(fmt.Errorf("%w: address length", errBad))
		return ep
	}
	if d.err != nil {
		return ep
	}
	if len(d.b) < 2 {
		d.fail(errShort)
		return ep
	}
	ep.Addr = netip.AddrPortFrom(addr, binary.BigEndian.Uint16(d.b))
	d.b = d.b[2:]
	ep.Node = node
	if d.err == nil {
		if err := ep.validate(); err != nil {
			d.fail(fmt.Errorf("%w: %v", errBad, err))
		}
	}
	return ep
}

func (d *decoder) key() epKey {
	var k epKey
	k.Service = d.str(maxIDLen)
	k.Task = d.str(maxIDLen)
	k.Port = d.port()
	k.Protocol = d.proto()
	return k
}

// unique fails if k is already in seen, else adds it: a set or a map is
// never encoded with the same key twice.
func (d *decoder) unique(seen map[epKey]bool, k epKey, what string) {
	if d.err != nil {
		return
	}
	if seen[k] {
		d.fail(fmt.Errorf("%w: %s %s/%s %d/%s listed twice", errBad, what, k.Service, k.Task, k.Port, k.Protocol))
		return
	}
	seen[k] = true
}

// maxNodeIDLen matches serf's limit on node names.
const maxNodeIDLen = 128

func (d *decoder) nodeID() string {
	s := d.str(maxNodeIDLen)
	if d.err == nil && s == "" {
		d.fail(fmt.Errorf("%w: empty node ID", errBad))
	}
	return s
}

func (d *decoder) record() *record {
	r := &record{}
	r.Node = d.nodeID()
	r.Epoch = d.uvarint()
	r.Version = d.uvarint()
	n := d.count(minEndpointSize)
	if d.err != nil {
		return nil
	}
	r.Eps = make([]Endpoint, 0, n)
	seen := make(map[epKey]bool, n)
	for i := 0; i < n && d.err == nil; i++ {
		ep := d.endpoint(r.Node)
		d.unique(seen, ep.key(), "endpoint")
		r.Eps = append(r.Eps, ep)
	}
	if d.err != nil {
		return nil
	}
	if r.Version < r.Epoch {
		d.fail(fmt.Errorf("%w: version below epoch", errBad))
		return nil
	}
	return r
}

// encodeDelta renders a delta message.
func encodeDelta(dl *delta) []byte {
	var e encoder
	e.byte(wireFormat)
	e.byte(dl.Kind)
	e.str(dl.Node)
	e.uvarint(dl.Epoch)
	e.uvarint(dl.From)
	e.uvarint(dl.To)
	e.uvarint(uint64(len(dl.Adds)))
	for _, ep := range dl.Adds {
		e.endpoint(ep)
	}
	e.uvarint(uint64(len(dl.Removes)))
	for _, k := range dl.Removes {
		e.key(k)
	}
	return e.b
}

// deltaHeaderSize bounds the bytes of a delta message that are not endpoints.
func deltaHeaderSize(node string) int {
	return 2 + binary.MaxVarintLen64*6 + len(node)
}

// decodeDelta parses a delta message; it never panics on bad input.
func decodeDelta(b []byte) (*delta, error) {
	d := decoder{b: b}
	d.format()
	dl := &delta{}
	dl.Kind = d.byte()
	if d.err == nil && dl.Kind != kindDelta && dl.Kind != kindAnnounce {
		return nil, fmt.Errorf("%w: unknown kind %d", errBad, dl.Kind)
	}
	dl.Node = d.nodeID()
	dl.Epoch = d.uvarint()
	dl.From = d.uvarint()
	dl.To = d.uvarint()
	if d.err == nil && (dl.To <= dl.From || dl.From < dl.Epoch) {
		return nil, fmt.Errorf("%w: versions out of order", errBad)
	}
	// An endpoint key appears at most once in a delta, added or removed:
	// the author diffs two sets.
	seen := make(map[epKey]bool)
	n := d.count(minEndpointSize)
	for i := 0; i < n && d.err == nil; i++ {
		ep := d.endpoint(dl.Node)
		d.unique(seen, ep.key(), "endpoint")
		dl.Adds = append(dl.Adds, ep)
	}
	n = d.count(4)
	for i := 0; i < n && d.err == nil; i++ {
		k := d.key()
		d.unique(seen, k, "removed endpoint")
		dl.Removes = append(dl.Removes, k)
	}
	if d.err == nil && dl.Kind == kindAnnounce && len(seen) > 0 {
		d.fail(fmt.Errorf("%w: announcement carries endpoints", errBad))
	}
	if err := d.end(); err != nil {
		return nil, err
	}
	return dl, nil
}

// Sync stream messages.
const (
	syncFull byte = 1 // anti-entropy: both sides exchange whatever the other lacks
	syncPull byte = 2 // targeted pull: send me these nodes if you have newer
)

// syncRequest is the opening message of a sync stream.
type syncRequest struct {
	Kind   byte
	Digest map[string]uint64 // node -> version the requester holds
}

func encodeDigest(e *encoder, dg map[string]uint64) {
	e.uvarint(uint64(len(dg)))
	for id, v := range dg {
		e.str(id)
		e.uvarint(v)
	}
}

func (d *decoder) digest() map[string]uint64 {
	n := d.count(2)
	dg := make(map[string]uint64, n)
	for i := 0; i < n && d.err == nil; i++ {
		id := d.nodeID()
		v := d.uvarint()
		if _, dup := dg[id]; dup && d.err == nil {
			d.fail(fmt.Errorf("%w: node %q twice in a digest", errBad, id))
		}
		dg[id] = v
	}
	return dg
}

func encodeSyncRequest(r *syncRequest) []byte {
	var e encoder
	e.byte(wireFormat)
	e.byte(r.Kind)
	encodeDigest(&e, r.Digest)
	return e.b
}

func decodeSyncRequest(b []byte) (*syncRequest, error) {
	d := decoder{b: b}
	d.format()
	r := &syncRequest{Kind: d.byte()}
	if d.err == nil && r.Kind != syncFull && r.Kind != syncPull {
		return nil, fmt.Errorf("%w: unknown sync kind %d", errBad, r.Kind)
	}
	r.Digest = d.digest()
	if err := d.end(); err != nil {
		return nil, err
	}
	return r, nil
}

// syncReply carries records the peer lacks and, for a full sync, the
// sender's digest so the peer can push back what it has newer.
type syncReply struct {
	Records []*record
	Digest  map[string]uint64 // nil when absent
}

func encodeSyncReply(r *syncReply) []byte {
	var e encoder
	e.byte(wireFormat)
	e.uvarint(uint64(len(r.Records)))
	for _, rec := range r.Records {
		e.record(rec)
	}
	if r.Digest == nil {
		e.byte(0)
	} else {
		e.byte(1)
		encodeDigest(&e, r.Digest)
	}
	return e.b
}

func decodeSyncReply(b []byte) (*syncReply, error) {
	d := decoder{b: b}
	d.format()
	r := &syncReply{}
	n := d.count(4)
	seen := make(map[string]bool)
	for i := 0; i < n && d.err == nil; i++ {
		rec := d.record()
		if rec == nil {
			break
		}
		if seen[rec.Node] {
			d.fail(fmt.Errorf("%w: node %q twice in a sync reply", errBad, rec.Node))
			break
		}
		seen[rec.Node] = true
		r.Records = append(r.Records, rec)
	}
	switch d.byte() {
	case 0:
	case 1:
		r.Digest = d.digest()
	default:
		d.fail(fmt.Errorf("%w: digest flag", errBad))
	}
	if err := d.end(); err != nil {
		return nil, err
	}
	return r, nil
}

// versionDigest is the payload of a digest packet: some of the versions its
// sender holds (its own first), so a receiver that missed a delta learns
// that it is behind without waiting for anti-entropy.
type versionDigest struct {
	From     string // sender's node ID
	Versions []nodeVersion
}

// nodeVersion is one entry of a version digest.
type nodeVersion struct {
	Node    string
	Version uint64
}

// nodeVersionSize is the encoded size of one digest entry.
func nodeVersionSize(nv nodeVersion) int {
	return uvarintLen(uint64(len(nv.Node))) + len(nv.Node) + uvarintLen(nv.Version)
}

// uvarintLen is the encoded size of v as a uvarint.
func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

func encodeVersionDigest(vd *versionDigest) []byte {
	var e encoder
	e.byte(wireFormat)
	e.str(vd.From)
	e.uvarint(uint64(len(vd.Versions)))
	for _, nv := range vd.Versions {
		e.str(nv.Node)
		e.uvarint(nv.Version)
	}
	return e.b
}

// decodeVersionDigest parses a digest packet's payload; it never panics on
// bad input.
func decodeVersionDigest(b []byte) (*versionDigest, error) {
	d := decoder{b: b}
	d.format()
	vd := &versionDigest{From: d.nodeID()}
	n := d.count(3)
	if d.err == nil {
		vd.Versions = make([]nodeVersion, 0, n)
	}
	for i := 0; i < n && d.err == nil; i++ {
		nv := nodeVersion{Node: d.nodeID()}
		nv.Version = d.uvarint()
		vd.Versions = append(vd.Versions, nv)
	}
	if err := d.end(); err != nil {
		return nil, err
	}
	return vd, nil
}
