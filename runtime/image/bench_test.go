//go:build linux

package image

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/stretchr/testify/require"
)

// BenchmarkPullUnpack pulls a 50 MiB image of four layers of random data
// from a loopback registry into a fresh store ("store" with the default 3
// downloads at once, "store-serial" with 1) and, as a baseline, fetches it
// with go-containerregistry's own client (remote.Image, then each layer's
// Uncompressed, one after the other) into `tar -x -C dir`. The three run
// in turn, rounds times (round 2 is "store#01" and so on), so that a
// change in the machine's load shows in all of them.
func BenchmarkPullUnpack(b *testing.B) {
	if _, err := exec.LookPath("tar"); err != nil {
		b.Skip("the baseline needs the tar command")
	}
	const layers, size = 4, 50 << 20
	reg := newRegistry(b, nil)
	var ls []v1.Layer
	for range layers {
		l, err := random.Layer(size/layers, types.DockerLayer)
		require.NoError(b, err)
		ls = append(ls, l)
	}
	img, err := mutate.AppendLayers(empty.Image, ls...)
	require.NoError(b, err)
	ref := reg.push(b, "bench/app:1", img)

	pull := func(b *testing.B, downloads int) {
		b.SetBytes(size)
		for range b.N {
			b.StopTimer()
			dir := filepath.Join(b.TempDir(), "store")
			s, err := New(Config{Dir: dir, InsecureRegistries: []string{reg.host}, Transport: reg.tr, MaxConcurrentDownloads: downloads})
			require.NoError(b, err)
			b.StartTimer()
			_, err = s.Pull(ctxT(b), ref, noAuth)
			require.NoError(b, err)
			b.StopTimer()
			require.NoError(b, s.Close())
			require.NoError(b, os.RemoveAll(dir))
			b.StartTimer()
		}
	}
	baseline := func(b *testing.B) {
		b.SetBytes(size)
		r, err := name.ParseReference(ref, name.Insecure)
		require.NoError(b, err)
		for range b.N {
			b.StopTimer()
			dir := b.TempDir()
			b.StartTimer()
			im, err := remote.Image(r, remote.WithTransport(reg.tr))
			require.NoError(b, err)
			layers, err := im.Layers()
			require.NoError(b, err)
			for i, l := range layers {
				rc, err := l.Uncompressed()
				require.NoError(b, err)
				out := filepath.Join(dir, string(rune('0'+i)))
				require.NoError(b, os.Mkdir(out, 0o755))
				cmd := exec.Command("tar", "-x", "-C", out)
				cmd.Stdin = rc
				require.NoError(b, cmd.Run())
				rc.Close()
			}
			b.StopTimer()
			require.NoError(b, os.RemoveAll(dir))
			b.StartTimer()
		}
	}
	const rounds = 3
	for range rounds {
		b.Run("store", func(b *testing.B) { pull(b, 3) })
		b.Run("store-serial", func(b *testing.B) { pull(b, 1) })
		b.Run("baseline", baseline)
	}
}
