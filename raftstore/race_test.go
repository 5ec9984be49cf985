//go:build race

package raftstore

// raceEnabled: the race detector slows everything several times; the tests'
// Raft ticks are longer under it so that a stall of the loaded test process
// is not taken for a dead leader (an election in the middle of a test that
// proposes to the member it found leading).
const raceEnabled = true
