// Package authz is the per-RPC authorization of a node's gRPC server. Every
// RPC is checked against the caller's certificate:
//
//	CA.GetRootCA, Join.Join       anyone (the join handshake; the token authorizes Join)
//	CA.*                          any certificate of this cluster
//	Dispatcher.*                  a node certificate, for the caller's own node ID only
//	Raft.*                        a manager certificate
//	Control.*                     a manager or operator (client) certificate
//
// On a manager whose state is loaded, a node certificate is also checked
// against the store (Config.Lookup): a node that was removed is refused from
// that moment, and Raft and Control need the node to be a manager there too,
// so a demoted manager's old certificate stops working before it is
// reissued.
//
// # Concurrency
//
// An Authorizer is safe for concurrent use; its interceptors run on gRPC's
// goroutines and call Config's functions from there.
package authz
