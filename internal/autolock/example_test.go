package autolock_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/autolock"
	"github.com/shoalhq/shoal/internal/keys"
	"github.com/shoalhq/shoal/internal/state"
	"github.com/shoalhq/shoal/internal/state/statetest"
)

// A manager whose cluster has autolock on keeps its data key file wrapped
// with the cluster's unlock key.
func ExampleNew() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "autolock")
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "data.key")
	dek, _ := keys.NewDataKey()
	_ = keys.SaveDataKey(path, dek, nil) // plain: autolock was off

	unlockKey, _ := keys.NewUnlockKey()
	store := statetest.NewStore(state.Config{})
	_ = store.Update(ctx, func(tx state.WriteTx) error {
		return tx.CreateCluster(&api.Cluster{Id: "c1", Spec: &api.ClusterSpec{Autolock: true}, UnlockKey: unlockKey})
	})

	cfg := autolock.DefaultConfig()
	cfg.ClusterID = "c1"
	cfg.DataKeyPath = path
	cfg.Wrapped = nil // the file is plain
	k, err := autolock.New(store, cfg)
	if err != nil {
		fmt.Println(err)
		return
	}
	_ = k.Start(ctx)
	defer k.Stop(ctx)
	<-k.Ready()

	_, err = keys.LoadDataKey(path, nil)
	fmt.Println("opens without the unlock key:", err == nil)
	fmt.Println("autolock key held:", k.Wrapped() != nil)
	// Output:
	// opens without the unlock key: false
	// autolock key held: true
}
