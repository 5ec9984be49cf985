package process

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"github.com/shoalhq/shoal/runtime"
)

// pickPorts chooses the host port of every Spec.Ports entry: HostPort when
// set (checked free by binding it), else a free port the kernel picks for a
// wildcard bind. Every socket stays open until all ports are chosen, so one
// task never gets the same port twice, then all are closed and the task
// binds them itself.
//
// Between the close and the task's own bind another program may take the
// port; the task then fails to bind and is replaced like any failed task.
// A process runtime cannot hand a socket over without the program's
// cooperation, so this small race is the honest price of running plain
// programs.
func pickPorts(ports []runtime.PortRequest) ([]runtime.Endpoint, error) {
	if len(ports) == 0 {
		return nil, nil
	}
	var closers []func() error
	defer func() {
		for _, c := range closers {
			_ = c()
		}
	}()
	out := make([]runtime.Endpoint, len(ports))
	for i, p := range ports {
		proto := p.EffectiveProtocol()
		addr := ":" + strconv.Itoa(int(p.HostPort))
		var bound net.Addr
		switch proto {
		case runtime.ProtocolUDP:
			pc, err := net.ListenPacket("udp", addr)
			if err != nil {
				return nil, fmt.Errorf("host port for %d/%s: %w", p.Target, proto, err)
			}
			closers = append(closers, pc.Close)
			bound = pc.LocalAddr()
		default:
			l, err := net.Listen("tcp", addr)
			if err != nil {
				return nil, fmt.Errorf("host port for %d/%s: %w", p.Target, proto, err)
			}
			closers = append(closers, l.Close)
			bound = l.Addr()
		}
		ap, err := netip.ParseAddrPort(bound.String())
		if err != nil {
			return nil, fmt.Errorf("host port for %d/%s: bound address %s: %w", p.Target, proto, bound, err)
		}
		out[i] = runtime.Endpoint{Target: p.Target, Protocol: proto,
			Addr: netip.AddrPortFrom(netip.IPv4Unspecified(), ap.Port())}
	}
	return out, nil
}

// portEnv returns the variables that tell a task its host ports: PORT for
// the first port, SHOAL_PORT_<target> for each TCP port and for UDP ports
// whose target has no TCP port, and SHOAL_PORT_<target>_UDP for each UDP
// port.
func portEnv(eps []runtime.Endpoint) []string {
	if len(eps) == 0 {
		return nil
	}
	env := []string{"PORT=" + strconv.Itoa(int(eps[0].Addr.Port()))}
	tcp := make(map[uint16]bool)
	for _, e := range eps {
		if e.Protocol == runtime.ProtocolTCP {
			tcp[e.Target] = true
		}
	}
	for _, e := range eps {
		port := strconv.Itoa(int(e.Addr.Port()))
		name := "SHOAL_PORT_" + strconv.Itoa(int(e.Target))
		if e.Protocol == runtime.ProtocolUDP {
			env = append(env, name+"_UDP="+port)
			if tcp[e.Target] {
				continue
			}
		}
		env = append(env, name+"="+port)
	}
	return env
}
