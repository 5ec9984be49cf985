package ipvs

import (
	"fmt"
	"net"
	"slices"
	"sync"
	"syscall"

	"github.com/moby/ipvs"
	"golang.org/x/sys/unix"
)

// fakeIPVS is an in-memory IPVS that behaves like the kernel for the calls
// the balancer makes: errno errors for missing or duplicate entries, real
// servers in insertion order. It records every call.
type fakeIPVS struct {
	mu     sync.Mutex
	svcs   []*fakeSvc
	calls  []string // "NewService tcp/198.51.100.1:80", ...
	fail   func(call string) error
	closed bool
}

type fakeSvc struct {
	s     ipvs.Service
	dests []ipvs.Destination
}

func svcID(s *ipvs.Service) string {
	proto := "tcp"
	if s.Protocol == unix.IPPROTO_UDP {
		proto = "udp"
	}
	return fmt.Sprintf("%s/%s", proto, net.JoinHostPort(s.Address.String(), fmt.Sprint(s.Port)))
}

func destID(d *ipvs.Destination) string {
	return net.JoinHostPort(d.Address.String(), fmt.Sprint(d.Port))
}

func (f *fakeIPVS) record(call string) error {
	f.calls = append(f.calls, call)
	if f.fail != nil {
		return f.fail(call)
	}
	return nil
}

func (f *fakeIPVS) find(s *ipvs.Service) int {
	return slices.IndexFunc(f.svcs, func(x *fakeSvc) bool {
		return x.s.Protocol == s.Protocol && x.s.Port == s.Port && x.s.Address.Equal(s.Address) && x.s.FWMark == s.FWMark
	})
}

func (f *fakeIPVS) GetServices() ([]*ipvs.Service, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("GetServices"); err != nil {
		return nil, err
	}
	out := make([]*ipvs.Service, len(f.svcs))
	for i, s := range f.svcs {
		c := s.s
		out[i] = &c
	}
	return out, nil
}

func (f *fakeIPVS) NewService(s *ipvs.Service) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("NewService " + svcID(s)); err != nil {
		return err
	}
	if f.find(s) >= 0 {
		return syscall.EEXIST
	}
	f.svcs = append(f.svcs, &fakeSvc{s: *s})
	return nil
}

func (f *fakeIPVS) UpdateService(s *ipvs.Service) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("UpdateService " + svcID(s)); err != nil {
		return err
	}
	i := f.find(s)
	if i < 0 {
		return syscall.ESRCH
	}
	f.svcs[i].s = *s
	return nil
}

func (f *fakeIPVS) DelService(s *ipvs.Service) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("DelService " + svcID(s)); err != nil {
		return err
	}
	i := f.find(s)
	if i < 0 {
		return syscall.ESRCH
	}
	f.svcs = slices.Delete(f.svcs, i, i+1)
	return nil
}

func (f *fakeIPVS) GetDestinations(s *ipvs.Service) ([]*ipvs.Destination, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("GetDestinations " + svcID(s)); err != nil {
		return nil, err
	}
	i := f.find(s)
	if i < 0 {
		return nil, syscall.ESRCH
	}
	out := make([]*ipvs.Destination, len(f.svcs[i].dests))
	for j, d := range f.svcs[i].dests {
		c := d
		out[j] = &c
	}
	return out, nil
}

func (f *fakeIPVS) destOp(call string, s *ipvs.Service, d *ipvs.Destination, fn func(sv *fakeSvc, j int) error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record(call + " " + svcID(s) + " " + destID(d)); err != nil {
		return err
	}
	i := f.find(s)
	if i < 0 {
		return syscall.ESRCH
	}
	sv := f.svcs[i]
	j := slices.IndexFunc(sv.dests, func(x ipvs.Destination) bool { return x.Port == d.Port && x.Address.Equal(d.Address) })
	return fn(sv, j)
}

func (f *fakeIPVS) NewDestination(s *ipvs.Service, d *ipvs.Destination) error {
	return f.destOp("NewDestination", s, d, func(sv *fakeSvc, j int) error {
		if j >= 0 {
			return syscall.EEXIST
		}
		sv.dests = append(sv.dests, *d)
		return nil
	})
}

func (f *fakeIPVS) UpdateDestination(s *ipvs.Service, d *ipvs.Destination) error {
	return f.destOp("UpdateDestination", s, d, func(sv *fakeSvc, j int) error {
		if j < 0 {
			return syscall.ENOENT
		}
		sv.dests[j] = *d
		return nil
	})
}

func (f *fakeIPVS) DelDestination(s *ipvs.Service, d *ipvs.Destination) error {
	return f.destOp("DelDestination", s, d, func(sv *fakeSvc, j int) error {
		if j < 0 {
			return syscall.ENOENT
		}
		sv.dests = slices.Delete(sv.dests, j, j+1)
		return nil
	})
}

func (f *fakeIPVS) Close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
}

// takeCalls returns and clears the recorded calls.
func (f *fakeIPVS) takeCalls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.calls
	f.calls = nil
	return c
}

// writes returns the calls that change state.
func writes(calls []string) []string {
	return slices.DeleteFunc(slices.Clone(calls), func(c string) bool {
		return c == "GetServices" || len(c) > 15 && c[:15] == "GetDestinations"
	})
}

// state returns "proto/vip:port sched -> dest,dest" for every service.
func (f *fakeIPVS) state() map[string][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string][]string)
	for _, s := range f.svcs {
		ds := []string{}
		for _, d := range s.dests {
			ds = append(ds, destID(&d))
		}
		out[svcID(&s.s)+" "+s.s.SchedName] = ds
	}
	return out
}
