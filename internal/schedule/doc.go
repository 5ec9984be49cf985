// Package schedule drives the pure scheduler package on the leader: it keeps
// the scheduler's view of nodes and occupying tasks current from store watch
// events, places PENDING tasks in passes, and commits the decisions in
// batched store transactions (PENDING → ASSIGNED), retrying conflicts. Tasks
// that fit nowhere stay PENDING with the scheduler's explanation as their
// status message, and are retried whenever nodes or their load change, and
// every Config.RetryInterval.
//
// A transaction that creates many tasks is placed in one pass: the driver
// takes the rest of the transaction's events (and whatever else is queued)
// before it schedules. Each commit writes at most Config.BatchSize tasks; a
// commit that fails leaves its tasks pending for the next pass.
//
// # Time
//
// The driver reads time only through Config.Clock: it stamps assignments
// with its Now and times the retries with its timers, so tests drive it with
// clocktest.Fake.
//
// # Failover
//
// A driver runs for one leadership term. It holds nothing the store cannot
// rebuild: Start reads every node and task in one ViewAndWatch, so a new
// leader's driver counts the tasks already placed, and a watch that ends
// (the store restored from a snapshot) is rebuilt the same way. A commit
// that conflicts with another write is run again on fresh reads, a few
// times, and one that still fails is planned again in a later pass.
//
// # Concurrency
//
// The driver's state belongs to its one goroutine, which a store watch
// feeds; Start and Stop are its only methods. SchedulerNode is a pure
// function, safe for concurrent use.
package schedule
