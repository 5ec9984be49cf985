package orchestrator_test

import (
	"context"
	"fmt"
	"time"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/orchestrator"
	"github.com/shoalhq/shoal/internal/state"
	"github.com/shoalhq/shoal/internal/state/statetest"
)

// The leader runs one Orchestrator over its store; creating a replicated
// service makes it create one pending task per replica.
func ExampleNew() {
	ctx := context.Background()
	store := statetest.NewStore(state.Config{})

	o, err := orchestrator.New(store, orchestrator.DefaultConfig())
	if err != nil {
		panic(err)
	}
	if err := o.Start(ctx); err != nil {
		panic(err)
	}
	defer o.Stop(ctx) //nolint:errcheck // nothing to do about it here

	err = store.Update(ctx, func(tx state.WriteTx) error {
		return tx.CreateService(&api.Service{
			Id:          "web0000000000000000000000",
			SpecVersion: 1,
			Spec: &api.ServiceSpec{
				Name: "web",
				Task: &api.TaskSpec{Command: []string{"httpd"}},
				Mode: &api.ServiceSpec_Replicated{Replicated: &api.ReplicatedService{Replicas: 3}},
			},
		})
	})
	if err != nil {
		panic(err)
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		var tasks []*api.Task
		store.View(func(tx state.ReadTx) { tasks, _ = tx.FindTasks(state.ByServiceID("web0000000000000000000000")) })
		if len(tasks) == 3 {
			fmt.Println(len(tasks), "tasks,", tasks[0].Status.State)
			break
		}
	}
	// Output: 3 tasks, TASK_STATE_PENDING
}

// Start and Stop follow leadership: a new Orchestrator per term.
func ExampleOrchestrator_Stop() {
	store := statetest.NewStore(state.Config{})
	for term := 1; term <= 2; term++ {
		o, err := orchestrator.New(store, orchestrator.DefaultConfig())
		if err != nil {
			panic(err)
		}
		if err := o.Start(context.Background()); err != nil {
			panic(err)
		}
		<-o.Ready()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = o.Stop(ctx) // leadership lost
		cancel()
		fmt.Println("term", term, "stopped:", err)
	}
	// Output:
	// term 1 stopped: <nil>
	// term 2 stopped: <nil>
}
