package process_test

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/shoalhq/shoal/runtime"
	"github.com/shoalhq/shoal/runtime/process"
)

func Example() {
	dir, err := os.MkdirTemp("", "shoal-process-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)

	cfg := process.DefaultConfig()
	cfg.Dir = dir
	rt, err := process.New(cfg)
	if err != nil {
		panic(err)
	}
	ctl, err := rt.Controller(runtime.Task{
		ID:          "task1",
		ServiceName: "hello",
		Spec: runtime.Spec{
			Command: []string{"/bin/sh", "-c", `echo "hello from $SHOAL_SERVICE_NAME"; exit 3`},
		},
	})
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	if err := ctl.Prepare(ctx); err != nil {
		panic(err)
	}
	if err := ctl.Start(ctx); err != nil {
		panic(err)
	}
	status, err := ctl.Wait(ctx)
	if err != nil {
		panic(err)
	}
	fmt.Println(status.Code, status.Message)

	logs, err := ctl.(runtime.LogStreamer).Logs(ctx, runtime.LogOptions{Stream: runtime.StreamStdout})
	if err != nil {
		panic(err)
	}
	out, _ := io.ReadAll(logs)
	logs.Close()
	fmt.Print(string(out))

	if err := ctl.Remove(ctx); err != nil {
		panic(err)
	}
	// Output:
	// 3 exit code 3
	// hello from hello
}

func ExampleNew() {
	cfg := process.DefaultConfig()
	_, err := process.New(cfg) // Dir is required
	fmt.Println(err)
	// Output:
	// process: Config.Dir: required
}
