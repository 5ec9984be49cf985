package shoal_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal"
	"github.com/shoalhq/shoal/pki"
	"github.com/shoalhq/shoal/shoaltest"
)

// A root CA rotation under a running workload: every node moves to a
// certificate from the new root while the control API keeps answering and
// no task restarts; then the old root is retired, the join tokens change
// (the old ones stop working), and a node can join with the new token.
func TestRootCARotationUnderLoad(t *testing.T) {
	c := shoaltest.Start(t, shoaltest.Options{Managers: 3, Workers: 3})
	ctx := ctxT(t)
	cl := c.Leader().Shoal().Client()
	svc, err := cl.CreateService(ctx, webSpec("web", 6))
	require.NoError(t, err)
	c.WaitRunning(svc.ID, 6)
	before := map[string]bool{}
	for _, task := range c.Tasks(svc.ID) {
		if task.Status.State == shoal.TaskRunning {
			before[task.ID] = true
		}
	}
	require.Len(t, before, 6)
	info, err := cl.Cluster(ctx)
	require.NoError(t, err)
	oldDigest, oldWorkerToken := info.RootCADigest, info.WorkerToken

	// Load: reads and writes through every manager, bounded, counting errors.
	var calls, failures atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i, m := range c.Managers() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mc := m.Shoal().Client()
			for j := 0; j < 100000; j++ {
				select {
				case <-stop:
					return
				default:
				}
				var err error
				if j%4 == 0 {
					_, err = mc.CreateService(ctx, shoal.ServiceSpec{Name: fmt.Sprintf("load-%d-%d", i, j),
						Task: shoal.TaskSpec{Command: []string{"x"}}})
				} else {
					_, err = mc.ListNodes(ctx)
				}
				calls.Add(1)
				if err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}

	upd, err := cl.UpdateCluster(ctx, shoal.ClusterUpdate{RotateRootCA: true})
	require.NoError(t, err)
	require.True(t, upd.RootRotating)
	c.WaitFor("root rotation complete", func() bool {
		i, err := cl.Cluster(ctx)
		return err == nil && !i.RootRotating && i.RootCADigest != oldDigest
	})
	info, err = cl.Cluster(ctx)
	require.NoError(t, err)
	newDigest := info.RootCADigest
	c.WaitFor("every node trusts only the new root", func() bool {
		for _, n := range c.Nodes() {
			if n.Shoal().Certificate().RootDigest != newDigest {
				return false
			}
		}
		return true
	})
	close(stop)
	wg.Wait()
	require.Positive(t, calls.Load())
	if f := failures.Load(); f != 0 {
		t.Fatalf("%d of %d calls failed during the rotation; first: %v", f, calls.Load(), firstErr.Load())
	}

	// No task restarted.
	for _, task := range c.Tasks(svc.ID) {
		if task.Status.State == shoal.TaskRunning {
			assert.True(t, before[task.ID], "task %s started during the rotation", task.ID)
		}
	}
	assert.Len(t, c.Running(svc.ID), len(c.Workers()))

	// The tokens changed with the root: the old one is refused, the new one
	// admits a node, whose certificate comes from the new root.
	assert.NotEqual(t, oldWorkerToken, info.WorkerToken)
	ctx2, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err = shoal.Join(ctx2, shoal.Config{StateDir: t.TempDir(), ListenAddr: "127.0.0.1:0", Dial: c.Network().Dialer("old-token")},
		c.Leader().Addr, oldWorkerToken)
	require.ErrorIs(t, err, pki.ErrDigestMismatch, "the old token must not work after the rotation")
	w, err := c.AddWorker()
	require.NoError(t, err)
	assert.Equal(t, newDigest, w.Shoal().Certificate().RootDigest)
}
