// Package shoaltest runs a whole Shoal cluster inside one test process: an
// N-manager, M-worker cluster on an in-memory network, with the fake runtime
// (runtime/runtimetest) by default, and the faults that matter: stop, crash
// and restart nodes with their state directories, and partition nodes from
// each other.
//
//	c := shoaltest.Start(t, shoaltest.Options{Workers: 3})
//	svc, _ := c.Client().CreateService(ctx, spec)
//	c.WaitRunning(svc.ID, 6)
//	c.Workers()[0].Crash()
//	c.WaitRunning(svc.ID, 6) // replaced on the other workers
//
// Timings are short by default (100ms heartbeats, 10ms restart delay) so
// fault tests run in well under a second each; nothing in the harness
// asserts on wall-clock time.
package shoaltest
