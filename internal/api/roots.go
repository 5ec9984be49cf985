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

// FirstRoot returns the first certificate of a PEM bundle (the cluster's
// current root; join tokens carry its digest), or nil.
func FirstRoot(bundle []byte) []byte {
	certs := rootCerts(bundle)
	if len(certs) == 0 {
		return nil
	}
	return certs[0]
}

// NewestRoot returns the last certificate of a PEM bundle (the root node
// certificates should come from), or nil.
func NewestRoot(bundle []byte) []byte {
	certs := rootCerts(bundle)
	if len(certs) == 0 {
		return nil
	}
	return certs[len(certs)-1]
}

// rootCerts splits a PEM bundle into its certificates.
func rootCerts(bundle []byte) [][]byte {
	var out [][]byte
	for rest := bundle; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			return out
		}
		if blk.Type == "CERTIFICATE" {
			out = append(out, pem.EncodeToMemory(blk))
		}
	}
}
