// Package pki holds Shoal's trust material: the cluster's root certificate
// authority, node certificates, join tokens and the mutual-TLS credentials
// every connection between nodes uses. It is built on cfssl (initca, csr,
// signer/local, api/client); every key is ECDSA P-256.
//
// # What is here
//
//   - RootCA: NewRootCA makes a cluster's self-signed root; ParseRootCA loads
//     one (with its key on managers that sign, without it on nodes that only
//     trust it, or for an external CA).
//   - Signer: NewLocalSigner signs with the root's key in-process;
//     NewExternalSigner forwards CSRs to a cfssl signing server and checks
//     what comes back. Either way the certificate names what the SignRequest
//     says (CN node ID, OU role, O cluster ID, DNS SANs), never what the CSR
//     asked for.
//   - NewKeyAndCSR, ParseCSR: a node makes its own key and sends only the CSR.
//   - VerifyCert, SubjectOf: check a chain and read who it names; expired and
//     untrusted chains give ErrCertExpired and ErrUnknownAuthority.
//   - KeyPair, SaveKeyPair, LoadKeyPair: node.crt, node.key and ca.crt on
//     disk, written atomically, mode 0600 in a 0700 directory.
//   - Credentials: a node's live identity behind ServerTLS and ClientTLS
//     (TLS 1.3); Update swaps certificate, key and roots for new handshakes
//     without touching established connections. PeerSubject reads the
//     verified client identity inside a gRPC handler.
//   - Join tokens: SHLTKN-1-<digest>-<secret> (Token, NewToken, ParseToken,
//     Token.VerifyRoot). Every refused token gives an error that matches
//     ErrInvalidToken and says why; a digest that is not the root's also
//     matches ErrDigestMismatch.
//   - CrossSign, RenewAt: root rotation and certificate renewal.
//
// # Trust model
//
// Every connection between nodes is mutual TLS 1.3, and certificates
// identify nodes. The join token's digest is RootCA.Digest, the SHA-256 of
// the root certificate: a joining node fetches the root from the manager it
// dials and refuses it unless its digest matches the token
// (Token.VerifyRoot), so a rogue manager cannot slip in another CA. The
// token's secret authorizes the join; the node then holds a certificate
// signed by that root, and from then on it trusts only that root (or, during
// a rotation, the old and new roots together).
//
// The role is the certificate's OU: OUManager, OUWorker or OUClient (operator
// clients of the control API). Servers accept clients without certificates at
// the TLS layer, because a joining node has none yet; each RPC authorizes the
// caller from PeerSubject (no subject: only the join and CA RPCs). Every
// manager certificate also carries the DNS SAN ManagerServerName, and clients
// dialing managers verify the server against it, so a worker's certificate
// can never pose as a manager.
//
// # Renewal and rotation
//
// Node certificates are valid for DefaultCertValidity unless the cluster says
// otherwise (never less than MinCertValidity). A node renews at RenewAt, a
// random point between 50% and 80% of its certificate's validity, so a
// cluster's nodes do not all ask the CA at once, and a node has the last 20%
// of the validity to retry through failures. To rotate the root, a manager
// cross-signs the new root with the old one (CrossSign) and issues new
// certificates chained through that cross-signed certificate, which nodes
// still trusting only the old root accept; once every node trusts the new
// root, the intermediate is dropped.
//
// # Caveats
//
// cfssl logs through its own package-level logger (github.com/cloudflare/cfssl/log),
// at Info level by default: every CSR and signature to the standard logger. The
// first time this package uses cfssl (NewRootCA, NewKeyAndCSR, NewLocalSigner,
// NewExternalSigner) it sets that logger's Level to errors, once per process, so
// a host program's output carries no cfssl chatter; a program that wants cfssl's
// logs sets the Level back after that.
package pki
