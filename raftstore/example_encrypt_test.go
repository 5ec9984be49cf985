package raftstore_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/shoalhq/shoal/internal/keys"
	"github.com/shoalhq/shoal/raftstore"
)

// ExampleConfig_encryptor stores the log encrypted with a data key: the written values are not
// readable in the file, and a restart with the same key replays them.
func ExampleConfig_encryptor() {
	dir, err := os.MkdirTemp("", "raftstore-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()

	dek, err := keys.NewDataKey() // in Shoal, kept in the node's data key file (keys.SaveDataKey)
	if err != nil {
		panic(err)
	}
	cipher, err := keys.NewCipher(dek)
	if err != nil {
		panic(err)
	}
	run := func(values ...string) {
		cfg := raftstore.DefaultConfig()
		cfg.ID, cfg.Dir = 1, dir
		sm := &counter{}
		cfg.StateMachine = sm
		cfg.Encryptor = cipher
		n, err := raftstore.New(cfg)
		if err != nil {
			panic(err)
		}
		if err := n.Start(ctx); err != nil {
			panic(err)
		}
		defer n.Stop(ctx)
		<-n.Ready()
		for _, v := range values {
			if _, err := n.Propose(ctx, []byte(v)); err != nil {
				panic(err)
			}
		}
		fmt.Println("total:", sm.total)
	}
	run("123456789")
	raw, _ := os.ReadFile(filepath.Join(dir, raftstore.DBFileName))
	fmt.Println("value readable in the file:", bytes.Contains(raw, []byte("123456789")))
	run() // replayed from the encrypted log
	// Output:
	// total: 123456789
	// value readable in the file: false
	// total: 123456789
}
