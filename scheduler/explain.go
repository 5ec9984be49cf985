package scheduler

import (
	"strconv"
	"strings"
)

// rejections counts, per filter, the nodes that rejected a group.
type rejections struct {
	notReady    int
	paused      int
	drained     int
	constraint  []int // per constraint of the group
	cpu         int
	memory      int
	maxReplicas int
	hostPort    int
}

func (r *rejections) add(f fit) {
	switch f {
	case fitCPU:
		r.cpu++
	case fitMemory:
		r.memory++
	case fitMaxReplicas:
		r.maxReplicas++
	case fitHostPort:
		r.hostPort++
	}
}

// explain builds the Reason of a task that fits nowhere, e.g.
// "no suitable node (2 nodes not ready; 1 node lacks 1 GiB memory)".
func (r *rejections) explain(cons []compiled, key groupKey, ports []HostPort, nodes int) string {
	const prefix = "no suitable node ("
	if nodes == 0 {
		return prefix + "no nodes in the cluster)"
	}
	var b strings.Builder
	b.WriteString(prefix)
	n := 0
	part := func(count int, singular, plural string) {
		if count == 0 {
			return
		}
		if n > 0 {
			b.WriteString("; ")
		}
		n++
		b.WriteString(strconv.Itoa(count))
		if count == 1 {
			b.WriteString(" node ")
			b.WriteString(singular)
		} else {
			b.WriteString(" nodes ")
			b.WriteString(plural)
		}
	}
	part(r.notReady, "not ready", "not ready")
	part(r.paused, "paused", "paused")
	part(r.drained, "drained", "drained")
	for i := range cons {
		part(r.constraint[i], "does not satisfy constraint "+cons[i].text, "do not satisfy constraint "+cons[i].text)
	}
	cpu := formatCPUs(key.res.NanoCPUs)
	part(r.cpu, "lacks "+cpu, "lack "+cpu)
	mem := formatBytes(key.res.MemoryBytes) + " memory"
	part(r.memory, "lacks "+mem, "lack "+mem)
	limit := "at max replicas (" + strconv.FormatUint(key.maxRep, 10) + ") for this service"
	part(r.maxReplicas, limit, limit)
	if r.hostPort > 0 {
		list := make([]string, len(ports))
		for i, p := range ports {
			list[i] = p.String()
		}
		what := "host port"
		if len(ports) > 1 {
			what = "a host port of "
		} else {
			what += " "
		}
		what += strings.Join(list, ", ") + " in use"
		part(r.hostPort, "has "+what, "have "+what)
	}
	if n == 0 {
		// Not reached: every node is counted under some filter.
		b.WriteString("no candidates")
	}
	b.WriteString(")")
	return b.String()
}

// formatCPUs renders nano-CPUs as e.g. "0.5 CPU" or "2 CPUs".
func formatCPUs(nano int64) string {
	s := strconv.FormatFloat(float64(nano)/1e9, 'f', -1, 64)
	if nano > 1e9 {
		return s + " CPUs"
	}
	return s + " CPU"
}

// formatBytes renders a byte count with binary units, e.g. "512 MiB",
// "1.5 GiB", "100 B"; at most two decimals, trailing zeros dropped.
func formatBytes(v int64) string {
	const units = "KMGTPE"
	if v < 1024 {
		return strconv.FormatInt(v, 10) + " B"
	}
	x := float64(v)
	u := -1
	for x >= 1024 && u < len(units)-1 {
		x /= 1024
		u++
	}
	s := strconv.FormatFloat(x, 'f', 2, 64)
	s = strings.TrimRight(s, "0")
	s = strings.TrimSuffix(s, ".")
	return s + " " + units[u:u+1] + "iB"
}
