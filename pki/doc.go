// Package pki holds Shoal's trust material. Today it has the join token:
// SHLTKN-1-<digest>-<secret>, where the digest pins the cluster and the
// secret authorizes the join and selects the role (worker or manager).
// The certificate authority, node certificates and mutual TLS come with the
// security work and slot in behind the same Join path.
package pki
