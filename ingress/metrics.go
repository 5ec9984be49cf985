package ingress

import (
	"errors"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the balancer's Prometheus metrics, labelled by protocol and
// published port. With no registerer they are still updated, just never
// exported.
type metrics struct {
	accepted     *prometheus.CounterVec
	active       *prometheus.GaugeVec
	dialFailures *prometheus.CounterVec
	rejected     *prometheus.CounterVec
	bytes        *prometheus.CounterVec
}

var portLabels = []string{"protocol", "port"}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		accepted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "shoal", Subsystem: "ingress", Name: "balanced_total",
			Help: "TCP connections and UDP flows given an endpoint.",
		}, portLabels),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "shoal", Subsystem: "ingress", Name: "active",
			Help: "TCP connections being proxied and UDP flows in the flow table.",
		}, portLabels),
		dialFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "shoal", Subsystem: "ingress", Name: "endpoint_failures_total",
			Help: "Endpoints that refused or timed out; the next endpoint was tried.",
		}, portLabels),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "shoal", Subsystem: "ingress", Name: "rejected_total",
			Help: "TCP connections and UDP datagrams dropped, by reason (no_endpoint, flow_table_full).",
		}, append([]string{"reason"}, portLabels...)),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "shoal", Subsystem: "ingress", Name: "bytes_total",
			Help: "Bytes proxied, by direction (in: client to endpoint, out: endpoint to client).",
		}, append([]string{"direction"}, portLabels...)),
	}
	if reg != nil {
		m.accepted = register(reg, m.accepted)
		m.active = register(reg, m.active)
		m.dialFailures = register(reg, m.dialFailures)
		m.rejected = register(reg, m.rejected)
		m.bytes = register(reg, m.bytes)
	}
	return m
}

// forget drops the series of a removed port.
func (m *metrics) forget(k portKey) {
	l := prometheus.Labels{"protocol": k.proto.String(), "port": strconv.Itoa(int(k.num))}
	m.accepted.DeletePartialMatch(l)
	m.active.DeletePartialMatch(l)
	m.dialFailures.DeletePartialMatch(l)
	m.rejected.DeletePartialMatch(l)
	m.bytes.DeletePartialMatch(l)
}

// portMetrics are one port's series, resolved once.
type portMetrics struct {
	accepted     prometheus.Counter
	active       prometheus.Gauge
	dialFailures prometheus.Counter
	noEndpoint   prometheus.Counter
	tableFull    prometheus.Counter
	bytesIn      prometheus.Counter
	bytesOut     prometheus.Counter
}

func (m *metrics) port(k portKey) portMetrics {
	p, n := k.proto.String(), strconv.Itoa(int(k.num))
	return portMetrics{
		accepted:     m.accepted.WithLabelValues(p, n),
		active:       m.active.WithLabelValues(p, n),
		dialFailures: m.dialFailures.WithLabelValues(p, n),
		noEndpoint:   m.rejected.WithLabelValues("no_endpoint", p, n),
		tableFull:    m.rejected.WithLabelValues("flow_table_full", p, n),
		bytesIn:      m.bytes.WithLabelValues("in", p, n),
		bytesOut:     m.bytes.WithLabelValues("out", p, n),
	}
}

// register registers c, or returns the collector already registered under
// the same name, so a balancer made again on the same registry works.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
	}
	return c
}
