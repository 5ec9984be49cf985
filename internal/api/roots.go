package api

import (
	"bytes"
	"encoding/pem"
)

// TrustBundle returns the root certificates nodes must trust now: the root,
// and during a rotation the new root after it.
func (r *RootCA) TrustBundle() []byte {
	if r == nil {
		return nil
	}
	rot := r.GetRotation()
	if rot == nil || len(rot.GetNewCertPem()) == 0 {
		return r.GetCertPem()
	}
	var b bytes.Buffer
	b.Write(bytes.TrimSpace(r.GetCertPem()))
	b.WriteByte('\n')
	b.Write(bytes.TrimSpace(rot.GetNewCertPem()))
	b.WriteByte('\n')
	return b.Bytes()
}

// NewestRoot returns the last certificate of a PEM bundle (the root node
// certificates should come from), or nil.
func NewestRoot(bundle []byte) []byte {
	var last []byte
	for rest := bundle; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			return last
		}
		if blk.Type == "CERTIFICATE" {
			last = pem.EncodeToMemory(blk)
		}
	}
}
