// Package allocator assigns the network resources that must be unique across
// a cluster to the services that use them. It allocates published ports; it
// is also the package for the other cluster-wide network resources of
// services: network subnets, task addresses and virtual IPs.
//
// An allocation is made inside the store write transaction that stores the
// service (AllocatePorts takes the transaction), so it is atomic with the
// spec and replicated with it: a new leader sees every allocation, and
// removing a service frees what it held, because allocations are only ever
// read back from the stored services. Nothing is cached between calls.
//
// # Concurrency
//
// The functions are pure over the transaction they are given and safe to
// call concurrently. Two writers that allocate at the same moment may pick
// the same free port; the store refuses the second when it applies
// (ErrConflict) and its writer calls again (state.Store.UpdateRetry). A
// caller that wants to avoid those retries among its own writes serializes
// them (the control API does).
package allocator
