package runtimetest_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/shoalhq/shoal/runtime"
	"github.com/shoalhq/shoal/runtime/runtimetest"
)

func Example() {
	rt := runtimetest.New()
	// Every task of service "flaky" fails to start; the rest run.
	rt.SetBehavior(func(t runtime.Task) runtimetest.Behavior {
		if t.ServiceName == "flaky" {
			return runtimetest.Behavior{StartErr: errors.New("image not found")}
		}
		return runtimetest.Behavior{}
	})
	ctx := context.Background()
	run := func(id, service string) runtime.Controller {
		ctl, _ := rt.Controller(runtime.Task{ID: id, ServiceName: service, Spec: runtime.Spec{Command: []string{"app"}}})
		_ = ctl.Prepare(ctx)
		if err := ctl.Start(ctx); err != nil {
			fmt.Println(id, "start:", err)
		}
		return ctl
	}
	web := run("web.1", "web")
	run("flaky.1", "flaky")
	fmt.Println("running:", len(rt.Running()), rt.Running()[0].ID)

	_ = rt.Exit("web.1", 3) // the task crashes on cue
	st, _ := web.Wait(ctx)
	fmt.Println("web.1:", st.Message)
	fmt.Println("calls:", rt.Calls("web.1"))
	// Output:
	// flaky.1 start: image not found
	// running: 1 web.1
	// web.1: exit code 3
	// calls: [Prepare Start Wait]
}
