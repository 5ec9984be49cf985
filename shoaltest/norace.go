//go:build !race

package shoaltest

const slow = 2 // in halves: as written
