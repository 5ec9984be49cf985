package pki_test

import (
	"context"
	"fmt"
	"time"

	"github.com/shoalhq/shoal/pki"
)

// A manager creates the cluster's root, and signs a CSR a joining worker made.
func ExampleNewLocalSigner() {
	ca, err := pki.NewRootCA("c0123456789abcdefghijklmn", 0)
	if err != nil {
		panic(err)
	}
	signer, err := pki.NewLocalSigner(ca, nil)
	if err != nil {
		panic(err)
	}

	// On the worker: the key stays here; only the CSR travels.
	_, csrPEM, err := pki.NewKeyAndCSR("w1")
	if err != nil {
		panic(err)
	}

	// On the manager: the subject comes from the join, not from the CSR.
	chain, err := signer.Sign(context.Background(), pki.SignRequest{
		CSR:      csrPEM,
		Subject:  pki.Subject{NodeID: "w1", Role: pki.OUWorker, ClusterID: "c0123456789abcdefghijklmn"},
		Validity: pki.DefaultCertValidity,
	})
	if err != nil {
		panic(err)
	}
	leaf, subject, err := pki.VerifyCert(chain, ca.Pool(), time.Now())
	if err != nil {
		panic(err)
	}
	fmt.Println(subject.NodeID, subject.Role, leaf.DNSNames)
	// Output: w1 shoal-worker [w1]
}

// Credentials give a node its TLS configurations, and take a renewed
// certificate without a restart.
func ExampleCredentials() {
	const cluster = "c0123456789abcdefghijklmn"
	ca, _ := pki.NewRootCA(cluster, 0)
	signer, _ := pki.NewLocalSigner(ca, nil)
	issue := func() pki.KeyPair {
		keyPEM, csrPEM, _ := pki.NewKeyAndCSR("m1")
		chain, err := signer.Sign(context.Background(), pki.SignRequest{
			CSR:      csrPEM,
			Subject:  pki.Subject{NodeID: "m1", Role: pki.OUManager, ClusterID: cluster},
			Validity: pki.DefaultCertValidity,
		})
		if err != nil {
			panic(err)
		}
		return pki.KeyPair{CertPEM: chain, KeyPEM: keyPEM, RootPEM: ca.CertPEM}
	}

	creds, err := pki.NewCredentials(issue())
	if err != nil {
		panic(err)
	}
	server := creds.ServerTLS()                      // for the manager's listener (credentials.NewTLS for gRPC)
	client := creds.ClientTLS(pki.ManagerServerName) // for dialing other managers
	fmt.Println(creds.Subject(), server.MinVersion == client.MinVersion)

	// Later, at pki.RenewAt(creds.Leaf()): a new certificate for new handshakes.
	if err := creds.Update(issue()); err != nil {
		panic(err)
	}
	fmt.Println(creds.Subject().Role)
	// Output:
	// shoal-manager/m1@c0123456789abcdefghijklmn true
	// shoal-manager
}
