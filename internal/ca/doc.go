// Package ca is the certificate authority of the managers: the CA service
// (Server, api.CAServer), the signer of the cluster's current root (Signers,
// which the join server shares), and the root CA rotation's steps.
//
// The cluster's root CA lives in the cluster object (its key too, unless an
// external cfssl server signs), replicated to every manager, so any manager
// can issue: a joining node's certificate (through the join server), a
// renewal (Server.RenewCertificate) and operator client certificates
// (Server.IssueClientCertificate). A certificate's role (OU) is always the
// role the store records for the node at the time of issue, whatever the CSR
// asks.
//
// # Root rotation
//
// StartRootRotation adds a new root to the cluster's RootCA, with its
// certificate cross-signed by the current root; from then on every
// certificate is issued by the new root (chained through the cross-signed
// certificate, so nodes that trust only the old root accept it) and nodes
// renew to get one. Each node's CertRootDigest records the root of its last
// certificate; RootRotationProgress counts the nodes that are not DOWN and
// still hold one from the old root. FinishRootRotation, once that count is
// zero, makes the new root the only one and replaces both join tokens, whose
// digest pins the root. internal/rootrotation runs it on the leader.
//
// # Concurrency
//
// Server's methods and Signers are safe for concurrent use. The rotation
// functions are pure over the objects and transaction they are given, except
// FinishRootRotation, which writes through the store and may run on any
// manager (the store serializes its write with every other).
package ca
