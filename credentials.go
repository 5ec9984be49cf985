package shoal

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc/credentials"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/ca"
	"github.com/shoalhq/shoal/internal/errdefs"
	"github.com/shoalhq/shoal/pki"
)

// ClientCredentials are an operator's key and certificate (OU shoal-client)
// and the cluster's root CA: what Dial presents to a manager. The private key
// is made where IssueClientCredentials runs and never sent anywhere.
type ClientCredentials struct {
	// CertPEM is the certificate chain, leaf first; KeyPEM the private key;
	// RootPEM the roots the client trusts managers by.
	CertPEM, KeyPEM, RootPEM []byte
}

// IssueClientCredentials makes a new key and has the cluster's CA certify it
// as an operator named name, valid for validity (0 = the cluster's node
// certificate validity; at least 30 minutes). The caller must be a manager's
// client or an operator's.
func (c *Client) IssueClientCredentials(ctx context.Context, name string, validity time.Duration) (*ClientCredentials, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	if validity != 0 && validity < pki.MinCertValidity {
		return nil, specError("validity", "must be 0 (the cluster's default) or at least %v, got %v", pki.MinCertValidity, validity)
	}
	if !ca.ClientNameRE.MatchString(name) {
		return nil, specError("name", "must be 1-64 characters of letters, digits, '.', '_' and '-', starting with a letter or digit, got %q", name)
	}
	// The CA writes the certificate's subject itself; the CSR only carries the key.
	key, csr, err := pki.NewKeyAndCSR("shoal-client")
	if err != nil {
		return nil, err
	}
	resp, err := api.NewCAClient(c.conn).IssueClientCertificate(ctx, &api.IssueClientCertificateRequest{
		Csr: csr, Name: name, Validity: int64(validity)})
	if err != nil {
		return nil, errdefs.FromGRPC(err)
	}
	creds := &ClientCredentials{CertPEM: resp.GetCertificatePem(), KeyPEM: key, RootPEM: resp.GetRootCaPem()}
	if _, err := creds.transport(); err != nil {
		return nil, err
	}
	return creds, nil
}

// Save writes the credentials to dir (mode 0600 files in a 0700 directory).
func (cc *ClientCredentials) Save(dir string) error {
	return pki.SaveKeyPair(dir, pki.KeyPair{CertPEM: cc.CertPEM, KeyPEM: cc.KeyPEM, RootPEM: cc.RootPEM})
}

// LoadClientCredentials reads credentials written by Save.
func LoadClientCredentials(dir string) (*ClientCredentials, error) {
	kp, err := pki.LoadKeyPair(dir)
	if err != nil {
		return nil, err
	}
	return &ClientCredentials{CertPEM: kp.CertPEM, KeyPEM: kp.KeyPEM, RootPEM: kp.RootPEM}, nil
}

// transport checks the credentials and returns gRPC TLS credentials that
// present them and verify managers by the root CA.
func (cc *ClientCredentials) transport() (credentials.TransportCredentials, error) {
	pc, err := pki.NewCredentials(pki.KeyPair{CertPEM: cc.CertPEM, KeyPEM: cc.KeyPEM, RootPEM: cc.RootPEM})
	if err != nil {
		return nil, fmt.Errorf("client credentials: %w", err)
	}
	if r := pc.Subject().Role; r != pki.OUClient {
		return nil, fmt.Errorf("client credentials: the certificate is a %s certificate, not an operator's (%s): %w", r, pki.OUClient, ErrInvalidSpec)
	}
	return credentials.NewTLS(pc.ClientTLS(pki.ManagerServerName)), nil
}
