// Package runtimetest provides a fake runtime.Runtime for tests of agents
// and whole clusters: tasks "run" without any process, so thousands of them
// cost almost nothing, and a test decides when and how each one ends.
//
// By default a started task runs until Shutdown, then exits with code 0.
// Scripting:
//
//   - Runtime.SetBehavior(func(runtime.Task) Behavior) scripts tasks by a
//     matcher (service name, slot, ...); Runtime.SetTaskBehavior scripts one
//     task ID and wins over the matcher. Behaviors can make Prepare or Start
//     fail or block, exit right after Start with a code, ignore Shutdown
//     until Runtime.Release, fail Wait or Remove, supply log output, answer
//     Exec (health check commands: pass, fail, hang until ctx ends), and
//     report an image HEALTHCHECK.
//   - Runtime.Exit(taskID, code) and Runtime.ExitWith make a running task
//     exit on cue.
//
// Observation: Runtime.Running, Tasks, Started, State, ExitStatus, Calls
// and CallCount report what happened; Runtime.WaitFor and WaitStarted block
// until a condition holds, without sleeping; Runtime.OnEvent sets a hook
// called on every transition.
//
// The fake starts no goroutines: everything blocks in the caller's
// goroutine, so it never leaks one.
package runtimetest
