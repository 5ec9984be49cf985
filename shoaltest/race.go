//go:build race

package shoaltest

// raceEnabled: the race detector slows everything several times, and a
// heartbeat that arrives late marks a healthy node DOWN; clusters built
// with it default to a longer heartbeat period.
const raceEnabled = true
