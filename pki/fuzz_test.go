package pki

import (
	"context"
	"encoding/pem"
	"errors"
	"testing"
	"time"
)

func FuzzParseCSR(f *testing.F) {
	_, good, err := NewKeyAndCSR("n1")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	block, _ := pem.Decode(good)
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: block.Bytes}))
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: block.Bytes[:len(block.Bytes)/2]}))
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, in []byte) {
		req, err := ParseCSR(in)
		if err != nil {
			if req != nil {
				t.Fatal("request returned with an error")
			}
			if !errors.Is(err, ErrInvalidCSR) {
				t.Fatalf("error does not wrap ErrInvalidCSR: %v", err)
			}
			return
		}
		if len(in) > MaxCSRSize {
			t.Fatalf("accepted %d bytes", len(in))
		}
		if err := req.CheckSignature(); err != nil {
			t.Fatalf("accepted a CSR whose signature does not verify: %v", err)
		}
	})
}

func BenchmarkSignCSR(b *testing.B) {
	ca := newCA(b, testCluster)
	s := newSigner(b, ca, nil)
	_, csrPEM, err := NewKeyAndCSR("n1")
	if err != nil {
		b.Fatal(err)
	}
	req := SignRequest{CSR: csrPEM, Subject: Subject{NodeID: "n1", Role: OUWorker, ClusterID: testCluster}, Validity: DefaultCertValidity}
	ctx := context.Background()
	b.ReportAllocs()
	start := time.Now()
	for b.Loop() {
		if _, err := s.Sign(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "certs/s")
}
