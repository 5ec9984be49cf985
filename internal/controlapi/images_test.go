package controlapi

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/internal/state"
)

const (
	digestA = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	digestB = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

// fakeResolver answers from a table; refs missing from it fail. While it
// resolves it checks the server holds no lock of its own.
type fakeResolver struct {
	t       *testing.T
	srv     *Server
	answers map[string]string
	block   bool // wait for ctx to end instead

	mu    sync.Mutex
	calls []string
	auths []*api.RegistryAuth
}

func (f *fakeResolver) Resolve(ctx context.Context, ref string, auth *api.RegistryAuth) (string, error) {
	f.mu.Lock()
	f.calls = append(f.calls, ref)
	f.auths = append(f.auths, auth)
	f.mu.Unlock()
	if f.srv != nil {
		if assert.True(f.t, f.srv.portMu.TryLock(), "Resolve runs under the server's port lock") {
			f.srv.portMu.Unlock()
		}
	}
	if f.block {
		<-ctx.Done()
		return "", ctx.Err()
	}
	if pinned, ok := f.answers[ref]; ok {
		return pinned, nil
	}
	return "", errors.New("registry unreachable")
}

func (f *fakeResolver) called() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// pinningServer is a server over a fresh store with resolver r, logging to
// the returned buffer at every level.
func pinningServer(t *testing.T, r *fakeResolver, timeout time.Duration) (*Server, *state.Store, *bytes.Buffer) {
	st := newCheckedStore(t)
	var logs bytes.Buffer
	opts := Options{ResolveTimeout: timeout, Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	if r != nil {
		opts.Resolver = r
	}
	s := New(st, opts)
	if r != nil {
		r.t, r.srv = t, s
	}
	return s, st, &logs
}

func storedImage(st *state.Store, id string) string {
	var svc *api.Service
	st.View(func(tx state.ReadTx) { svc = tx.GetService(id) })
	return svc.GetSpec().GetTask().GetImage()
}

// withImage is a container service spec that publishes a port (so its
// writes take the server's port lock) and pulls with credentials.
func withImage(name, image string) *api.ServiceSpec {
	s := secretSpec(name)
	s.Task.Image = image
	s.Task.Ports = []*api.PortConfig{{TargetPort: 80}}
	return s
}

func TestImagePinning(t *testing.T) {
	ctx := context.Background()
	r := &fakeResolver{answers: map[string]string{
		"nginx:1.13": "nginx:1.13@" + digestA,
		"nginx:1.14": "nginx:1.14@" + digestB,
	}}
	s, st, logs := pinningServer(t, r, 0)

	// Pinned on create, with the service's credentials.
	resp, err := s.CreateService(ctx, &api.CreateServiceRequest{Spec: withImage("web", "nginx:1.13")})
	require.NoError(t, err)
	assert.Empty(t, resp.Warnings)
	id := resp.Service.Id
	assert.Equal(t, "nginx:1.13@"+digestA, storedImage(st, id))
	assert.Equal(t, "nginx:1.13@"+digestA, resp.Service.GetSpec().GetTask().GetImage(), "the answer shows the pinned image")
	require.Equal(t, []string{"nginx:1.13"}, r.called())
	assert.Equal(t, "hunter2", r.auths[0].GetPassword())

	update := func(spec *api.ServiceSpec) *api.ServiceResponse {
		t.Helper()
		cur, err := s.GetService(ctx, &api.GetRequest{Id: id})
		require.NoError(t, err)
		resp, err := s.UpdateService(ctx, &api.UpdateServiceRequest{Id: id, Version: cur.Service.Meta.Version, Spec: spec})
		require.NoError(t, err)
		return resp
	}

	// Unchanged: the client sends back the pinned image (a scale, say).
	cur, err := s.GetService(ctx, &api.GetRequest{Id: id})
	require.NoError(t, err)
	scaled := proto.Clone(cur.Service.Spec).(*api.ServiceSpec)
	scaled.Mode = &api.ServiceSpec_Replicated{Replicated: &api.ReplicatedService{Replicas: 4}}
	up := update(scaled)
	assert.Len(t, r.called(), 1, "an unchanged image is not resolved again")
	assert.Empty(t, up.Warnings)
	assert.Equal(t, uint64(1), up.Service.SpecVersion, "no redeploy")
	assert.Equal(t, "nginx:1.13@"+digestA, storedImage(st, id))

	// Changed: pinned again; the credentials kept from the store are used.
	changed := withImage("web", "nginx:1.14")
	changed.Task.RegistryAuth = nil
	up = update(changed)
	assert.Equal(t, []string{"nginx:1.13", "nginx:1.14"}, r.called())
	assert.Equal(t, "hunter2", r.auths[1].GetPassword(), "the stored credentials pull")
	assert.Equal(t, "nginx:1.14@"+digestB, storedImage(st, id))
	assert.Equal(t, uint64(2), up.Service.SpecVersion)

	// The tag given again over its pinned form is resolved again.
	r.answers["nginx:1.14"] = "nginx:1.14@" + digestA
	up = update(withImage("web", "nginx:1.14"))
	assert.Len(t, r.called(), 3)
	assert.Equal(t, "nginx:1.14@"+digestA, storedImage(st, id), "the tag moved: the new digest")

	// A digest reference is kept as given.
	up = update(withImage("web", "nginx@"+digestB))
	assert.Len(t, r.called(), 3, "a digest reference is not resolved")
	assert.Empty(t, up.Warnings)
	assert.Equal(t, "nginx@"+digestB, storedImage(st, id))

	// A failure keeps the tag, warns in the answer and logs without the
	// credentials.
	up = update(withImage("web", "registry.example/app:v1"))
	assert.Len(t, r.called(), 4)
	assert.Equal(t, "registry.example/app:v1", storedImage(st, id))
	require.Len(t, up.Warnings, 1)
	assert.Equal(t, "image registry.example/app:v1 could not be accessed on a registry to record its digest. "+
		"Each node will access registry.example/app:v1 independently, possibly leading to different nodes running different versions of the image.",
		up.Warnings[0])
	assert.Contains(t, logs.String(), "image not pinned to a digest")
	assert.Contains(t, logs.String(), "registry unreachable")
	assert.NotContains(t, logs.String(), "hunter2")

	// An unpinned tag sent back unchanged is not resolved again either: a
	// scale never pins (and so never redeploys).
	up = update(withImage("web", "registry.example/app:v1"))
	assert.Len(t, r.called(), 4)
	assert.Empty(t, up.Warnings)
	assert.Equal(t, uint64(5), up.Service.SpecVersion)

	// Warnings belong to the write's answer only.
	got, err := s.GetService(ctx, &api.GetRequest{Id: id})
	require.NoError(t, err)
	assert.Empty(t, got.Warnings)
}

func TestImagePinningRefusesOddAnswers(t *testing.T) {
	for _, answer := range []string{"nginx:1.13", "redis@" + digestA, "not a reference"} {
		t.Run(answer, func(t *testing.T) {
			r := &fakeResolver{answers: map[string]string{"nginx:1.13": answer}}
			s, st, logs := pinningServer(t, r, 0)
			resp, err := s.CreateService(context.Background(), &api.CreateServiceRequest{Spec: withImage("web", "nginx:1.13")})
			require.NoError(t, err)
			assert.Equal(t, "nginx:1.13", storedImage(st, resp.Service.Id), "the tag is kept")
			require.Len(t, resp.Warnings, 1)
			assert.Contains(t, resp.Warnings[0], "could not be accessed on a registry")
			assert.Contains(t, logs.String(), "the resolver answered")
		})
	}
}

func TestImagePinningOff(t *testing.T) {
	s, st, _ := pinningServer(t, nil, 0)
	resp, err := s.CreateService(context.Background(), &api.CreateServiceRequest{Spec: withImage("web", "nginx:1.13")})
	require.NoError(t, err)
	assert.Equal(t, "nginx:1.13", storedImage(st, resp.Service.Id))
	require.Len(t, resp.Warnings, 1)
	assert.Contains(t, resp.Warnings[0], "image nginx:1.13 was not pinned to a digest: image pinning is off on this manager")

	resp, err = s.CreateService(context.Background(), &api.CreateServiceRequest{Spec: withImage("pinned", "nginx@"+digestA)})
	require.NoError(t, err)
	assert.Empty(t, resp.Warnings, "a digest reference needs no pinning")
	resp, err = s.CreateService(context.Background(), &api.CreateServiceRequest{Spec: spec("program", 1)})
	require.NoError(t, err)
	assert.Empty(t, resp.Warnings, "a program has no image")
}

func TestImagePinningTimeout(t *testing.T) {
	r := &fakeResolver{block: true}
	s, st, _ := pinningServer(t, r, 20*time.Millisecond)
	resp, err := s.CreateService(context.Background(), &api.CreateServiceRequest{Spec: withImage("web", "nginx:1.13")})
	require.NoError(t, err, "a resolver that does not answer in time keeps the tag")
	assert.Equal(t, "nginx:1.13", storedImage(st, resp.Service.Id))
	require.Len(t, resp.Warnings, 1)
	assert.True(t, strings.HasPrefix(resp.Warnings[0], "image nginx:1.13 could not be accessed"))
	assert.Equal(t, DefaultResolveTimeout, New(st).resolveTimeout)
}

func TestImagePinningCanceled(t *testing.T) {
	r := &fakeResolver{block: true}
	s, st, _ := pinningServer(t, r, time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err := s.CreateService(ctx, &api.CreateServiceRequest{Spec: withImage("web", "nginx:1.13")})
	assert.ErrorIs(t, gerr(err), context.DeadlineExceeded, "the caller gave up: nothing is written")
	st.View(func(tx state.ReadTx) {
		all, err := tx.FindServices(state.All())
		require.NoError(t, err)
		assert.Empty(t, all)
	})
}
