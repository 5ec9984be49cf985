package ingress

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
)

// Userspace is the default Balancer: it needs no privileges. It listens on
// every published port, picks an endpoint round robin for each new TCP
// connection and UDP flow, skips endpoints that refuse, and proxies the
// traffic. Between two TCP connections the data moves with splice(2) on
// Linux, never through user-space buffers.
//
// Create it with New; Apply opens the listeners; Stop closes them.
type Userspace struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics

	mu      sync.Mutex // serializes Apply and Stop; guards the fields below
	ports   map[portKey]proxyPort
	stopped bool
}

var _ Balancer = (*Userspace)(nil)

// proxyPort is one published port's listener and connections.
//
// Concurrency: the Userspace calls its methods with its mu held, so one at a
// time; each method is also safe to run while the port's own goroutines
// (accepting, proxying, expiring flows) run, and none blocks on them.
type proxyPort interface {
	// service is the owner of the port.
	service() string
	// setEndpoints swaps the endpoint list used for new connections and
	// flows; established ones are not touched. The port's goroutines see
	// the new list from their next pick, atomically.
	setEndpoints(eps []Endpoint)
	// endpoints returns the current list.
	endpoints() []Endpoint
	// close stops the listener and closes every connection or flow. It
	// does not wait. Idempotent.
	close()
	// done is closed when every goroutine of the port has ended.
	done() <-chan struct{}
}

// New validates cfg and returns a balancer with no ports. It opens nothing.
func New(cfg Config) (*Userspace, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Userspace{
		cfg:     c,
		log:     c.Logger.With("component", "ingress"),
		metrics: newMetrics(c.Registerer),
		ports:   make(map[portKey]proxyPort),
	}, nil
}

// Apply makes the balancer serve exactly t. See Balancer.Apply.
func (u *Userspace) Apply(ctx context.Context, t Table) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.stopped {
		return ErrStopped
	}

	var errs []error
	desired := make(map[portKey]Port, len(t))
	desiredEps := make(map[portKey][]Endpoint, len(t))
	// Sorted so that conflicts and errors come out the same every time.
	for _, p := range slices.SortedFunc(maps.Keys(t), comparePorts) {
		if err := validatePort(p); err != nil {
			errs = append(errs, &PortError{Port: p, Err: err})
			continue
		}
		k := keyOf(p)
		if other, dup := desired[k]; dup {
			errs = append(errs, &PortError{Port: p, Err: fmt.Errorf("%s/%d is already published by service %q", p.Protocol, p.Published, other.Service)})
			continue
		}
		eps, err := validEndpoints(t[p])
		if err != nil {
			errs = append(errs, &PortError{Port: p, Err: err})
		}
		desired[k] = p
		desiredEps[k] = eps
	}

	// Close first what goes away (or changed owner), so its port number is
	// free for a new owner in this same Apply.
	var closing []proxyPort
	for k, pp := range u.ports {
		if p, ok := desired[k]; !ok || p.Service != pp.service() {
			u.log.Info("closing published port", "protocol", k.proto, "port", k.num, "service", pp.service())
			pp.close()
			closing = append(closing, pp)
			delete(u.ports, k)
			u.metrics.forget(k)
		}
	}
	for _, pp := range closing {
		select {
		case <-pp.done():
		case <-ctx.Done():
			return errors.Join(append(errs, ctx.Err())...)
		}
	}

	for _, k := range slices.SortedFunc(maps.Keys(desired), compareKeys) {
		p, eps := desired[k], desiredEps[k]
		if pp, ok := u.ports[k]; ok {
			if !slices.Equal(pp.endpoints(), eps) {
				u.log.Info("endpoints changed", "protocol", k.proto, "port", k.num, "service", p.Service, "endpoints", len(eps))
				pp.setEndpoints(eps)
			}
			continue
		}
		pp, err := u.open(ctx, p, eps)
		if err != nil {
			u.log.Warn("cannot open published port", "protocol", k.proto, "port", k.num, "service", p.Service, "err", err)
			errs = append(errs, &PortError{Port: p, Err: err})
			continue
		}
		u.log.Info("opened published port", "protocol", k.proto, "port", k.num, "service", p.Service, "endpoints", len(eps))
		u.ports[k] = pp
	}
	return errors.Join(errs...)
}

func (u *Userspace) open(ctx context.Context, p Port, eps []Endpoint) (proxyPort, error) {
	pm := u.metrics.port(keyOf(p))
	switch p.Protocol {
	case TCP:
		return openTCP(ctx, u.cfg, u.log, pm, p, eps)
	default:
		return openUDP(ctx, u.cfg, u.log, pm, p, eps)
	}
}

// Stop closes every listener, connection and flow and waits, bounded by
// ctx, for the balancer's goroutines to end. See Balancer.Stop.
func (u *Userspace) Stop(ctx context.Context) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.stopped = true
	for _, pp := range u.ports {
		pp.close()
	}
	for k, pp := range u.ports {
		select {
		case <-pp.done():
		case <-ctx.Done():
			return ctx.Err()
		}
		delete(u.ports, k)
		u.metrics.forget(k)
	}
	return nil
}

func validatePort(p Port) error {
	switch {
	case !p.Protocol.valid():
		return fmt.Errorf("Port.Protocol: must be tcp or udp, got %v", p.Protocol)
	case p.Published == 0:
		return errors.New("Port.Published: must not be 0")
	}
	return nil
}

// validEndpoints returns a copy of eps without the invalid ones, and an error
// naming those.
func validEndpoints(eps []Endpoint) ([]Endpoint, error) {
	out := make([]Endpoint, 0, len(eps))
	var errs []error
	for _, e := range eps {
		if !e.Addr.IsValid() || e.Addr.Port() == 0 || e.Addr.Addr().IsUnspecified() {
			errs = append(errs, fmt.Errorf("endpoint %q: Endpoint.Addr: must be a specified address with a non-zero port, got %v", e.Task, e.Addr))
			continue
		}
		out = append(out, e)
	}
	return out, errors.Join(errs...)
}

func comparePorts(a, b Port) int {
	return cmp.Or(cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Published, b.Published), cmp.Compare(a.Service, b.Service))
}

func compareKeys(a, b portKey) int {
	return cmp.Or(cmp.Compare(a.proto, b.proto), cmp.Compare(a.num, b.num))
}

// rotation is a port's endpoint list and round-robin cursor. The list is
// swapped atomically; the cursor survives swaps.
type rotation struct {
	eps  atomic.Pointer[[]Endpoint]
	next atomic.Uint64
}

func (r *rotation) set(eps []Endpoint) { r.eps.Store(&eps) }

func (r *rotation) list() []Endpoint {
	if p := r.eps.Load(); p != nil {
		return *p
	}
	return nil
}

// pick returns the current list and the index to try first; the caller
// tries the others in order after it.
func (r *rotation) pick() ([]Endpoint, int) {
	eps := r.list()
	if len(eps) == 0 {
		return nil, 0
	}
	return eps, int((r.next.Add(1) - 1) % uint64(len(eps)))
}
