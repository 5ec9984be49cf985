//go:build !race

package shoaltest

const raceEnabled = false
