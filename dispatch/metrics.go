package dispatch

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// dispatcherMetrics are the dispatcher's Prometheus metrics. With no
// registerer they are still updated, just never exported.
type dispatcherMetrics struct {
	sessions       prometheus.Gauge
	heartbeats     prometheus.Counter
	nodesDown      prometheus.Counter
	nodesLeft      prometheus.Counter
	stalls         prometheus.Counter
	statusUpdates  *prometheus.CounterVec
	statusWrites   prometheus.Counter
	statusBatchLen prometheus.Histogram
}

func newDispatcherMetrics(reg prometheus.Registerer) *dispatcherMetrics {
	m := &dispatcherMetrics{
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "shoal", Subsystem: "dispatcher", Name: "sessions",
			Help: "Agent sessions open on this dispatcher.",
		}),
		heartbeats: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "shoal", Subsystem: "dispatcher", Name: "heartbeats_total",
			Help: "Heartbeats accepted.",
		}),
		nodesDown: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "shoal", Subsystem: "dispatcher", Name: "nodes_down_total",
			Help: "Nodes marked DOWN after missing their heartbeat deadline.",
		}),
		nodesLeft: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "shoal", Subsystem: "dispatcher", Name: "nodes_left_total",
			Help: "Nodes marked DOWN because their agent left gracefully (Leave).",
		}),
		stalls: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "shoal", Subsystem: "dispatcher", Name: "stalls_total",
			Help: "Times the dispatcher found it had not run on time and extended every heartbeat deadline.",
		}),
		statusUpdates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "shoal", Subsystem: "dispatcher", Name: "task_status_updates_total",
			Help: "Task status reports received, by result (queued, foreign, invalid).",
		}, []string{"result"}),
		statusWrites: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "shoal", Subsystem: "dispatcher", Name: "task_status_writes_total",
			Help: "Store transactions written by the status batcher.",
		}),
		statusBatchLen: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "shoal", Subsystem: "dispatcher", Name: "task_status_batch_size",
			Help:    "Task updates per status write transaction.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 7),
		}),
	}
	if reg != nil {
		m.sessions = register(reg, m.sessions)
		m.heartbeats = register(reg, m.heartbeats)
		m.nodesDown = register(reg, m.nodesDown)
		m.nodesLeft = register(reg, m.nodesLeft)
		m.stalls = register(reg, m.stalls)
		m.statusUpdates = register(reg, m.statusUpdates)
		m.statusWrites = register(reg, m.statusWrites)
		m.statusBatchLen = register(reg, m.statusBatchLen)
	}
	return m
}

// register registers c, or returns the collector already registered under
// the same name: the node makes a new Dispatcher each time it becomes leader,
// on the same registry.
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
