package gossip

import "github.com/shoalhq/shoal/internal/clock"

// Clock is the source of time of a Node's own loops: version digests,
// anti-entropy, pull scheduling and the deadlines of the have queries it
// waits to answer. It also seeds the version counter. Serf's and
// memberlist's timers (gossip rounds, probes, suspicion, reaping, query
// timeouts) and stream deadlines run on the wall clock whatever Clock is.
// Implementations are safe for concurrent use.
type Clock = clock.Clock

// Timer is a one-shot timer made by a Clock; one goroutine owns it.
type Timer = clock.Timer

// RealClock returns the Clock of package time, the default.
func RealClock() Clock { return clock.Real() }
