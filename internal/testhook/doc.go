// Package testhook carries fault-injection hooks from a test harness
// (shoaltest) to the node it starts, through the context of Init, Join or
// Start. Only code inside this module can set them: the public Config has
// nothing for tests.
package testhook
