package dispatch

import (
	"cmp"
	"net/netip"
	"slices"
	"sync"

	"github.com/shoalhq/shoal/internal/api"
	"github.com/shoalhq/shoal/runtime"
)

// PublishedEndpoint is one port this node publishes in the routing mesh on
// behalf of one of its tasks: connections to PublishedPort on any node of
// the cluster may be forwarded to Addr.
type PublishedEndpoint struct {
	ServiceID string
	TaskID    string
	// PublishedPort is the cluster-wide port of the service (ingress mode).
	PublishedPort uint16
	// Protocol is runtime.ProtocolTCP ("tcp") or runtime.ProtocolUDP ("udp").
	Protocol string
	// Addr is where the task's target port is reachable, as the runtime's
	// EndpointReporter says. An unspecified IP (0.0.0.0, ::, or the zero
	// netip.Addr) means this node's address, which the caller fills in.
	Addr netip.AddrPort
}

// comparePublished orders endpoints by service, task, published port and
// protocol: the order of every set the agent hands out.
func comparePublished(a, b PublishedEndpoint) int {
	return cmp.Or(
		cmp.Compare(a.ServiceID, b.ServiceID),
		cmp.Compare(a.TaskID, b.TaskID),
		cmp.Compare(a.PublishedPort, b.PublishedPort),
		cmp.Compare(a.Protocol, b.Protocol),
		a.Addr.Compare(b.Addr),
	)
}

// publishedEndpoints returns what a running task t publishes: one entry per
// port of its spec in ingress mode with a published port, at the runtime
// endpoint (eps) of the same target port and protocol. Host-mode ports are
// published by the runtime on this node only and are not part of the mesh;
// a port without a runtime endpoint cannot be reached and is left out.
func publishedEndpoints(t *api.Task, eps []runtime.Endpoint) []PublishedEndpoint {
	var out []PublishedEndpoint
	for i, p := range t.GetSpec().GetPorts() {
		if p.GetMode() != api.PublishMode_PUBLISH_MODE_INGRESS || p.GetPublishedPort() == 0 ||
			p.GetPublishedPort() > 0xffff || p.GetTargetPort() > 0xffff {
			continue
		}
		proto := protocolName(p.GetProtocol())
		target := uint16(p.GetTargetPort())
		match := func(e runtime.Endpoint) bool {
			return e.Target == target && cmp.Or(e.Protocol, runtime.ProtocolTCP) == proto && e.Addr.Port() != 0
		}
		// Runtimes report one endpoint per port, in order: the same index is
		// the one for this port; otherwise any endpoint of the same target.
		j := -1
		if i < len(eps) && match(eps[i]) {
			j = i
		} else {
			j = slices.IndexFunc(eps, match)
		}
		if j < 0 {
			continue
		}
		out = append(out, PublishedEndpoint{
			ServiceID:     t.GetServiceId(),
			TaskID:        t.GetId(),
			PublishedPort: uint16(p.GetPublishedPort()),
			Protocol:      proto,
			Addr:          eps[j].Addr,
		})
	}
	slices.SortFunc(out, comparePublished)
	return slices.CompactFunc(out, func(a, b PublishedEndpoint) bool { return comparePublished(a, b) == 0 })
}

// endpointSet is the set of endpoints the node publishes, and the goroutine
// that tells the host of its changes (AgentConfig.OnEndpoints). Every change
// bumps the version; the notifier records the version it delivered last, so
// a task that unpublishes can wait until the host has heard of it.
type endpointSet struct {
	notify func([]PublishedEndpoint) // nil: changes are only recorded

	mu        sync.Mutex
	byTask    map[string][]PublishedEndpoint
	version   uint64        // bumped by every change
	delivered uint64        // the version the host has heard of
	advanced  chan struct{} // closed (and replaced) when delivered advances

	kick chan struct{} // wakes the notifier; capacity 1
	quit chan struct{} // closed by the agent's Stop once its tasks ended
	done chan struct{} // closed when the notifier returned
}

func newEndpointSet(notify func([]PublishedEndpoint)) *endpointSet {
	return &endpointSet{
		notify:   notify,
		byTask:   map[string][]PublishedEndpoint{},
		advanced: make(chan struct{}),
		kick:     make(chan struct{}, 1),
		quit:     make(chan struct{}),
		done:     make(chan struct{}),
	}
}

// set records what task publishes (nothing when eps is empty) and returns
// the version that includes the change; 0 means nothing changed.
func (s *endpointSet) set(taskID string, eps []PublishedEndpoint) uint64 {
	s.mu.Lock()
	if slices.Equal(s.byTask[taskID], eps) { // nothing empty is stored
		s.mu.Unlock()
		return 0
	}
	if len(eps) == 0 {
		delete(s.byTask, taskID)
	} else {
		s.byTask[taskID] = slices.Clone(eps)
	}
	s.version++
	v := s.version
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
	return v
}

// remove withdraws what task publishes; it returns the version without it,
// or 0 if the task published nothing.
func (s *endpointSet) remove(taskID string) uint64 { return s.set(taskID, nil) }

// current returns the set, sorted.
func (s *endpointSet) current() []PublishedEndpoint {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snapshotLocked()
}

func (s *endpointSet) snapshotLocked() []PublishedEndpoint {
	var out []PublishedEndpoint
	for _, eps := range s.byTask {
		out = append(out, eps...)
	}
	slices.SortFunc(out, comparePublished)
	return out
}

// deliveredYet reports whether the host has heard of version v; if not, it
// returns a channel closed when the delivered version next advances (check
// again then).
func (s *endpointSet) deliveredYet(v uint64) (bool, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.delivered >= v {
		return true, nil
	}
	return false, s.advanced
}

// run is the notifier: it calls notify, from this goroutine only, with the
// set each time it changed, coalescing changes that come in a burst. Once
// quit is closed it delivers the last set and returns.
func (s *endpointSet) run() {
	defer close(s.done)
	var last []PublishedEndpoint
	for {
		final := false
		select {
		case <-s.kick:
		case <-s.quit:
			final = true
		}
		s.mu.Lock()
		v := s.version
		snap := s.snapshotLocked()
		s.mu.Unlock()
		if s.notify != nil && !slices.Equal(snap, last) {
			s.notify(slices.Clone(snap))
		}
		last = snap
		s.mu.Lock()
		if v > s.delivered {
			s.delivered = v
			close(s.advanced)
			s.advanced = make(chan struct{})
		}
		s.mu.Unlock()
		if final {
			return
		}
	}
}
