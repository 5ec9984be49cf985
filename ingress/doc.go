// Package ingress is Shoal's routing mesh: it makes every port that a
// service publishes in ingress mode answer on every node of the cluster and
// spreads the traffic across the service's live tasks, wherever they run.
//
// # Contract
//
// A Balancer receives the whole desired state as a Table (for each
// published Port, its Endpoints: the addresses of the tasks that are
// RUNNING) and makes the node serve exactly that:
//
//   - Apply replaces the whole state. It is idempotent and diffed: a port
//     whose endpoints did not change keeps its listener, connections and
//     flows; calling Apply again with the same table changes nothing.
//   - New TCP connections and new UDP flows (a flow is one client address)
//     go to the port's endpoints round robin.
//   - An endpoint removed by Apply gets no new connection or flow from the
//     moment Apply returns, while the connections and flows already
//     established through it go on until they end (drain). The orchestrator
//     removes a task's endpoint before it stops the task, so a rolling
//     update or a scale-down drops no request.
//   - A port removed by Apply stops answering, and its connections and flows
//     are closed: the service is gone.
//   - A port that cannot be set up (its number is taken, its fields are
//     invalid) is reported as a *PortError naming it; the rest of the table
//     is still applied, and a later Apply retries it.
//   - Stop removes everything the balancer set up.
//
// # Implementations
//
// Userspace, in this package, is the default and needs no privileges: it
// listens on every published port, picks an endpoint round robin for each
// new TCP connection or UDP flow, skips an endpoint that refuses and tries
// the next one, and proxies the data. TCP data between the two sockets moves
// with splice(2) on Linux, so it never crosses user-space buffers. UDP
// flows expire after Config.UDPFlowIdleTimeout without traffic.
//
// Kernel balancers (nftables, IPVS) implement the same Balancer interface
// for hosts where the program may configure the kernel.
//
// # Caveats
//
// The userspace balancer's endpoints see the balancer's address, not the
// client's, as the source of connections. With a wildcard
// Config.ListenAddr on a multi-homed host, UDP replies leave from the
// address the kernel routes by, which may differ from the one the client
// sent to; bind a specific address when that matters.
package ingress
