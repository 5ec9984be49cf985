//go:build !linux

package process

// awaitExit cannot wait without reaping on this platform; the caller reaps
// first and then kills what is left of the group, which leaves a tiny
// window in which the group ID could be reused.
func awaitExit(int) bool { return false }
