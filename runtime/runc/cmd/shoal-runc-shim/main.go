// Command shoal-runc-shim is the shim of runtime/runc's containers and
// nothing else: a small program that starts in a few milliseconds and
// keeps little memory per container, where the default shim (the host
// program started again) carries the whole host program. Install it next
// to the host program and point runc.Config.ShimPath at it:
//
//	go install github.com/shoalhq/shoal/runtime/runc/cmd/shoal-runc-shim@latest
//
// It is started by the runtime, never by hand.
package main

import (
	"fmt"
	"os"

	"github.com/shoalhq/shoal/runtime/runc/shim"
)

func main() {
	// shim's init function has run the shim and exited when the runtime
	// started this program.
	fmt.Fprintf(os.Stderr, "shoal-runc-shim: runtime/runc starts this program (runc.Config.ShimPath) with %s set; it is not run by hand\n", shim.Env)
	os.Exit(2)
}
