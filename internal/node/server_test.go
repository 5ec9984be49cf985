package node

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// recordingRegistrar is a grpc.ServiceRegistrar that keeps what is
// registered on it.
type recordingRegistrar struct {
	descs []*grpc.ServiceDesc
	impls []any
}

func (r *recordingRegistrar) RegisterService(desc *grpc.ServiceDesc, impl any) {
	r.descs = append(r.descs, desc)
	r.impls = append(r.impls, impl)
}

var _ grpc.ServiceRegistrar = (*recordingRegistrar)(nil)

// testService is the hand-made service's HandlerType.
type testService interface{ name() string }

type testImpl struct{ n string }

func (i *testImpl) name() string { return i.n }

// call is what one of testDesc's handlers was called with.
type call struct {
	method string
	impl   any
	ctx    context.Context
	stream grpc.ServerStream
	ic     grpc.UnaryServerInterceptor
	decErr error
}

// testDesc returns a ServiceDesc with two unary methods and one stream,
// whose handlers record their calls in calls and answer the impl's name.
func testDesc(mu *sync.Mutex, calls *[]call) *grpc.ServiceDesc {
	record := func(c call) {
		mu.Lock()
		*calls = append(*calls, c)
		mu.Unlock()
	}
	unary := func(method string) grpc.MethodDesc {
		return grpc.MethodDesc{MethodName: method,
			Handler: func(srv any, ctx context.Context, dec func(any) error, ic grpc.UnaryServerInterceptor) (any, error) {
				record(call{method: method, impl: srv, ctx: ctx, ic: ic, decErr: dec(nil)})
				return srv.(testService).name(), nil
			}}
	}
	return &grpc.ServiceDesc{
		ServiceName: "shoal.test.Svc",
		HandlerType: (*testService)(nil),
		Methods:     []grpc.MethodDesc{unary("A"), unary("B")},
		Streams: []grpc.StreamDesc{{StreamName: "Watch", ServerStreams: true,
			Handler: func(srv any, stream grpc.ServerStream) error {
				record(call{method: "Watch", impl: srv, stream: stream})
				return errors.New(srv.(testService).name())
			}}},
		Metadata: "test.proto",
	}
}

// fakeStream is a grpc.ServerStream that is only passed along.
type fakeStream struct{ grpc.ServerStream }

type ctxKey struct{}

func TestSwitchable(t *testing.T) {
	var mu sync.Mutex
	var calls []call
	desc := testDesc(&mu, &calls)

	down := status.Error(codes.Unavailable, "not a manager")
	s := &switchable{down: down}
	var r recordingRegistrar
	s.register(&r, desc)

	require.Len(t, r.descs, 1)
	got := r.descs[0]
	assert.Nil(t, r.impls[0], "registered without an implementation: it is checked when set")
	assert.Equal(t, "shoal.test.Svc", got.ServiceName)
	assert.Equal(t, desc.HandlerType, got.HandlerType)
	assert.Equal(t, "test.proto", got.Metadata)
	require.Len(t, got.Methods, 2)
	assert.Equal(t, "A", got.Methods[0].MethodName)
	assert.Equal(t, "B", got.Methods[1].MethodName)
	require.Len(t, got.Streams, 1)
	assert.Equal(t, "Watch", got.Streams[0].StreamName)
	assert.True(t, got.Streams[0].ServerStreams, "stream flags are kept")
	assert.NotSame(t, desc, got, "register copies the desc")
	// The caller's desc keeps its own handlers: called directly, they use
	// the srv they are given.
	direct := &testImpl{n: "direct"}
	a, err := desc.Methods[0].Handler(direct, context.Background(), func(any) error { return nil }, nil)
	require.NoError(t, err)
	assert.Equal(t, "direct", a)
	assert.EqualError(t, desc.Streams[0].Handler(direct, &fakeStream{}), "direct")
	mu.Lock()
	calls = nil
	mu.Unlock()

	ctx := context.WithValue(context.Background(), ctxKey{}, "v")
	decErr := errors.New("decoded")
	dec := func(any) error { return decErr }
	stream := &fakeStream{}
	var icCalled bool
	ic := grpc.UnaryServerInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		icCalled = true
		return h(ctx, req)
	})

	callAll := func(t *testing.T) (answers []any, errs []error) {
		t.Helper()
		for _, md := range got.Methods {
			// The srv argument is ignored: the handlers use the set impl.
			a, err := md.Handler(&testImpl{n: "ignored"}, ctx, dec, ic)
			answers = append(answers, a)
			errs = append(errs, err)
		}
		err := got.Streams[0].Handler(&testImpl{n: "ignored"}, stream)
		errs = append(errs, err)
		return answers, errs
	}
	takeCalls := func() []call {
		mu.Lock()
		defer mu.Unlock()
		c := calls
		calls = nil
		return c
	}

	t.Run("down without an implementation", func(t *testing.T) {
		answers, errs := callAll(t)
		for _, a := range answers {
			assert.Nil(t, a)
		}
		for _, err := range errs {
			assert.Equal(t, down, err)
		}
		assert.Empty(t, takeCalls(), "no handler runs while down")
	})

	impl1 := &testImpl{n: "one"}
	t.Run("Set reaches the implementation", func(t *testing.T) {
		s.Set(impl1)
		answers, errs := callAll(t)
		assert.Equal(t, []any{"one", "one"}, answers)
		assert.NoError(t, errs[0])
		assert.NoError(t, errs[1])
		assert.EqualError(t, errs[2], "one", "the stream handler's error is returned")

		c := takeCalls()
		require.Len(t, c, 3)
		for i, want := range []string{"A", "B", "Watch"} {
			assert.Equal(t, want, c[i].method)
			assert.Same(t, impl1, c[i].impl, "%s is called with the set impl", want)
		}
		for _, u := range c[:2] {
			assert.Equal(t, "v", u.ctx.Value(ctxKey{}), "the context is passed on")
			assert.Equal(t, decErr, u.decErr, "the decoder is passed on")
			require.NotNil(t, u.ic, "the interceptor is passed on")
		}
		_, _ = c[0].ic(ctx, nil, &grpc.UnaryServerInfo{}, func(context.Context, any) (any, error) { return nil, nil })
		assert.True(t, icCalled, "the interceptor passed on is the caller's")
		assert.Same(t, stream, c[2].stream, "the stream is passed on")
	})

	t.Run("Set switches to another implementation", func(t *testing.T) {
		impl2 := &testImpl{n: "two"}
		s.Set(impl2)
		answers, _ := callAll(t)
		assert.Equal(t, []any{"two", "two"}, answers)
		for _, c := range takeCalls() {
			assert.Same(t, impl2, c.impl)
		}
	})

	t.Run("Set(nil) switches it off", func(t *testing.T) {
		s.Set(nil)
		_, errs := callAll(t)
		for _, err := range errs {
			assert.Equal(t, down, err)
		}
		assert.Empty(t, takeCalls())
	})
}

func TestSwitchableConcurrentSet(t *testing.T) {
	var mu sync.Mutex
	var calls []call
	s := &switchable{down: status.Error(codes.Unavailable, "down")}
	var r recordingRegistrar
	s.register(&r, testDesc(&mu, &calls))
	h := r.descs[0].Methods[0].Handler
	impl := &testImpl{n: "x"}

	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := 0; i < 200; i++ {
			if i%2 == 0 {
				s.Set(impl)
			} else {
				s.Set(nil)
			}
		}
	}()
	go func() {
		defer wg.Done()
		for i := 0; i < 200; i++ {
			a, err := h(nil, context.Background(), func(any) error { return nil }, nil)
			if err != nil {
				assert.Equal(t, codes.Unavailable, status.Code(err))
				continue
			}
			assert.Equal(t, "x", a)
		}
	}()
	wg.Wait()
}

func TestGateCheck(t *testing.T) {
	for _, tc := range []struct {
		name   string
		method string
		locked bool
		open   bool
		want   codes.Code
	}{
		{"control before open", "/shoal.api.Control/ListServices", false, false, codes.Unavailable},
		{"dispatcher before open", "/shoal.api.Dispatcher/Session", false, false, codes.Unavailable},
		{"join before open", "/shoal.api.Join/Join", false, false, codes.Unavailable},
		{"control locked", "/shoal.api.Control/ListServices", true, false, codes.FailedPrecondition},
		{"CA locked", "/shoal.api.CA/IssueCertificate", true, false, codes.FailedPrecondition},
		{"raft before open", "/shoal.api.Raft/Send", false, false, codes.OK},
		{"raft locked", "/shoal.api.Raft/Send", true, false, codes.OK},
		{"raft-like name is not raft", "/shoal.api.RaftAdmin/Send", false, false, codes.Unavailable},
		{"raft without leading slash is not raft", "shoal.api.Raft/Send", false, false, codes.Unavailable},
		{"control after open", "/shoal.api.Control/ListServices", false, true, codes.OK},
		{"control after open, locked", "/shoal.api.Control/ListServices", true, true, codes.OK},
		{"raft after open", "/shoal.api.Raft/Send", false, true, codes.OK},
		{"empty method before open", "", false, false, codes.Unavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newGate(func() bool { return tc.locked })
			if tc.open {
				g.open()
			}
			err := g.check(tc.method)
			assert.Equal(t, tc.want, status.Code(err), "%v", err)
			switch tc.want {
			case codes.Unavailable:
				assert.Contains(t, status.Convert(err).Message(), "the node is starting")
			case codes.FailedPrecondition:
				assert.Contains(t, status.Convert(err).Message(), "locked")
			}
		})
	}
}

func TestGateOpen(t *testing.T) {
	var lockedCalls int
	g := newGate(func() bool { lockedCalls++; return false })
	assert.Equal(t, codes.Unavailable, status.Code(g.check("/shoal.api.Control/X")))
	assert.Equal(t, 1, lockedCalls)

	g.open()
	g.open() // a second open is harmless
	assert.NoError(t, g.check("/shoal.api.Control/X"))
	assert.Equal(t, 1, lockedCalls, "locked is not asked once the gate is open")
}

func TestGateOpenConcurrent(t *testing.T) {
	g := newGate(func() bool { return false })
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g.open()
			_ = g.check("/shoal.api.Control/X")
		}()
	}
	wg.Wait()
	assert.NoError(t, g.check("/shoal.api.Control/X"))
}

func TestGateInterceptors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		method  string
		open    bool
		locked  bool
		want    codes.Code
		handled bool
	}{
		{"starting", "/shoal.api.Control/X", false, false, codes.Unavailable, false},
		{"locked", "/shoal.api.Control/X", false, true, codes.FailedPrecondition, false},
		{"raft while starting", "/shoal.api.Raft/Send", false, false, codes.OK, true},
		{"open", "/shoal.api.Control/X", true, false, codes.OK, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newGate(func() bool { return tc.locked })
			if tc.open {
				g.open()
			}

			t.Run("unary", func(t *testing.T) {
				var called bool
				ctx := context.WithValue(context.Background(), ctxKey{}, "v")
				resp, err := g.unary(ctx, "req", &grpc.UnaryServerInfo{FullMethod: tc.method},
					func(ctx context.Context, req any) (any, error) {
						called = true
						assert.Equal(t, "v", ctx.Value(ctxKey{}))
						assert.Equal(t, "req", req)
						return "resp", nil
					})
				assert.Equal(t, tc.handled, called, "handler called")
				assert.Equal(t, tc.want, status.Code(err))
				if tc.handled {
					assert.Equal(t, "resp", resp)
				} else {
					assert.Nil(t, resp)
				}
			})

			t.Run("stream", func(t *testing.T) {
				var called bool
				srv, ss := &testImpl{}, &fakeStream{}
				handlerErr := status.Error(codes.Aborted, "from the handler")
				err := g.stream(srv, ss, &grpc.StreamServerInfo{FullMethod: tc.method},
					func(gotSrv any, gotSS grpc.ServerStream) error {
						called = true
						assert.Same(t, srv, gotSrv)
						assert.Same(t, ss, gotSS)
						return handlerErr
					})
				assert.Equal(t, tc.handled, called, "handler called")
				if tc.handled {
					assert.Equal(t, handlerErr, err, "the handler's error is returned")
				} else {
					assert.Equal(t, tc.want, status.Code(err))
				}
			})
		})
	}
}
