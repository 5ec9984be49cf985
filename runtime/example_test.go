package runtime_test

import (
	"errors"
	"fmt"

	"github.com/shoalhq/shoal/runtime"
)

func ExampleParseSignal() {
	for _, s := range []string{"SIGTERM", "int", "9", "SIGFOO"} {
		sig, err := runtime.ParseSignal(s)
		if err != nil {
			fmt.Println("error:", err)
			continue
		}
		fmt.Println(s, "→", runtime.SignalName(sig), int(sig))
	}
	// Output:
	// SIGTERM → SIGTERM 15
	// int → SIGINT 2
	// 9 → SIGKILL 9
	// error: signal "SIGFOO": unknown signal; want a name such as SIGTERM or TERM, or a number
}

func ExampleSpec_Validate() {
	err := runtime.Spec{Command: nil}.Validate()
	fmt.Println(err)
	fmt.Println(errors.Is(err, runtime.ErrInvalidTask))
	// Output:
	// runtime: invalid task: Spec.Command: must not be empty (or set Spec.Image)
	// true
}
