// Package controlapi serves the control API (api.ControlServer) of a manager
// over its object store: services, tasks, nodes and the cluster object; and
// the join service (JoinServer, api.JoinServer), which admits nodes with a
// join token. The CA service is internal/ca's.
//
// Every request is validated before anything is written (ValidateServiceSpec
// and its siblings; errors name the field and the rule); errors are gRPC
// status errors that errdefs.FromGRPC turns back into the module's
// sentinels. A service write allocates its published ports
// (internal/allocator) in the same store transaction, and pins its image to
// a digest first (Options.Resolver; when it cannot, the tag is kept and the
// answer's warnings say so).
//
// Secrets stay on the managers: every answer and watch event passes through
// redact.go, which removes the CA keys, the gossip keys and the registry
// credentials of services and tasks (those reach only the nodes that run the
// tasks, through the dispatcher). Clients never read credentials back, so an
// update without them keeps the stored ones.
//
// Reads wait for a read barrier, so they see every write committed before
// them; without a quorum they are served from this manager's state and say
// so in the StaleReadHeader response header. Writes that need the Raft
// leader (role changes, removing a manager, a manager's join) are made there
// or forwarded there.
//
// # Concurrency
//
// Server and JoinServer are safe for concurrent use, as gRPC calls them. The
// service writes of one Server that allocate ports are serialized, so they do
// not pick the same free port; writes on different managers that do are
// caught by the store and retried. Images are resolved before any of
// this, outside every lock, each call bounded by Options.ResolveTimeout.
package controlapi
