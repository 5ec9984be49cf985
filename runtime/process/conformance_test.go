package process_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/shoalhq/shoal/runtime"
	"github.com/shoalhq/shoal/runtime/conformance"
	"github.com/shoalhq/shoal/runtime/process"
)

func TestConformance(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the conformance suite builds its test program")
	}
	prog := conformance.Program(t)
	conformance.Run(t, func(t *testing.T) conformance.Harness {
		cfg := process.DefaultConfig()
		cfg.Dir = t.TempDir()
		rt, err := process.New(cfg)
		require.NoError(t, err)
		return conformance.Harness{
			Runtime: rt,
			Spec: func(args ...string) runtime.Spec {
				return runtime.Spec{Command: append([]string{prog}, args...)}
			},
			Dir: t.TempDir(),
		}
	})
}
