package process

import (
	"errors"

	"golang.org/x/sys/unix"
)

// awaitExit blocks until the process pid has exited, without reaping it:
// while it is a zombie its PID, which is also the process group ID, cannot
// be reused, so signalling the group stays safe. It reports whether it
// managed to wait that way; if not, the caller reaps without peeking.
func awaitExit(pid int) bool {
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err == nil {
			return true
		}
		if !errors.Is(err, unix.EINTR) {
			return false
		}
	}
}
