package node

import (
	"context"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// switchable serves a gRPC service through whichever implementation is set,
// answering with down while none is: every node registers the manager
// services when it starts and switches them on and off with its role.
type switchable struct {
	down error
	mu   sync.RWMutex
	impl any // guarded by mu
}

// Set switches the implementation (nil: down). It is safe for concurrent
// use.
func (s *switchable) Set(impl any) {
	s.mu.Lock()
	s.impl = impl
	s.mu.Unlock()
}

func (s *switchable) get() (any, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.impl == nil {
		return nil, s.down
	}
	return s.impl, nil
}

// register registers desc's methods on r, each calling the implementation
// set at the time of the call. impl set later must implement
// desc.HandlerType.
func (s *switchable) register(r grpc.ServiceRegistrar, desc *grpc.ServiceDesc) {
	d := *desc
	d.Methods = make([]grpc.MethodDesc, len(desc.Methods))
	for i, md := range desc.Methods {
		h := md.Handler
		d.Methods[i] = grpc.MethodDesc{MethodName: md.MethodName,
			Handler: func(_ any, ctx context.Context, dec func(any) error, ic grpc.UnaryServerInterceptor) (any, error) {
				impl, err := s.get()
				if err != nil {
					return nil, err
				}
				return h(impl, ctx, dec, ic)
			}}
	}
	d.Streams = make([]grpc.StreamDesc, len(desc.Streams))
	for i, sd := range desc.Streams {
		h := sd.Handler
		sd.Handler = func(_ any, stream grpc.ServerStream) error {
			impl, err := s.get()
			if err != nil {
				return err
			}
			return h(impl, stream)
		}
		d.Streams[i] = sd
	}
	// nil: the implementation is checked when set, not here.
	r.RegisterService(&d, nil)
}

// gate answers Unavailable, until the node serves, for everything but the
// Raft transport (which a joining manager needs before it has its state);
// a locked manager answers FailedPrecondition.
type gate struct {
	serving chan struct{} // closed once the node serves
	once    sync.Once
	locked  func() bool
}

func newGate(locked func() bool) *gate { return &gate{serving: make(chan struct{}), locked: locked} }

// open lets every call through from now on.
func (g *gate) open() { g.once.Do(func() { close(g.serving) }) }

func (g *gate) check(method string) error {
	if strings.HasPrefix(method, "/shoal.api.Raft/") {
		return nil
	}
	select {
	case <-g.serving:
		return nil
	default:
		if g.locked() {
			return status.Error(codes.FailedPrecondition, "the manager is locked (autolock): it serves nothing until Node.Unlock is given the cluster's unlock key")
		}
		return status.Error(codes.Unavailable, "the node is starting")
	}
}

func (g *gate) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err := g.check(info.FullMethod); err != nil {
		return nil, err
	}
	return h(ctx, req)
}

func (g *gate) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if err := g.check(info.FullMethod); err != nil {
		return err
	}
	return h(srv, ss)
}
