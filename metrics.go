package main

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics is the Prometheus view of the daemon, served on the admin
// listener at /metrics. Counters and gauges are read from Stats and the hub
// at scrape time, so the hot path pays nothing for them; only the delivery
// latency histogram is observed as frames are written. No metric has a
// username label: their number would be unbounded.
type metrics struct {
	registry        *prometheus.Registry
	deliveryLatency prometheus.Histogram
}

// deliveryLatencyBuckets go from 100 µs to 2.5 s: a healthy delivery takes
// well under a millisecond; seconds mean a backlog.
var deliveryLatencyBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}

func newMetrics(d *daemon) *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		deliveryLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "fanout_delivery_latency_seconds",
			Help:    "Time from reading an event from Redis to writing its frame to a socket.",
			Buckets: deliveryLatencyBuckets,
		}),
	}
	m.registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.deliveryLatency,
		&statsCollector{d: d},
	)
	return m
}

// handler serves the registry in the Prometheus text format.
func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{})
}

// The descriptions of the metrics read at scrape time.
var (
	connectionsDesc = prometheus.NewDesc("fanout_connections",
		"Open WebSocket connections.", nil, nil)
	usersDesc = prometheus.NewDesc("fanout_users",
		"Distinct users (channels) with at least one open connection.", nil, nil)
	acceptedDesc = prometheus.NewDesc("fanout_connections_accepted_total",
		"WebSocket connections accepted.", nil, nil)
	rejectedDesc = prometheus.NewDesc("fanout_connections_rejected_total",
		"WebSocket requests refused before the upgrade, by reason.", []string{"reason"}, nil)
	receivedDesc = prometheus.NewDesc("fanout_messages_received_total",
		"Messages read from user channels in Redis.", nil, nil)
	deliveredDesc = prometheus.NewDesc("fanout_frames_delivered_total",
		"Frames written to WebSocket connections.", nil, nil)
	droppedDesc = prometheus.NewDesc("fanout_messages_dropped_total",
		"Messages not delivered, by reason: invalid_json (empty or not JSON) and too_large are published payloads dropped whole; slow_client counts frames not queued for a connection that was too slow or closing.",
		[]string{"reason"}, nil)
	disconnectsDesc = prometheus.NewDesc("fanout_disconnects_total",
		"Connections the daemon closed, by reason: slow_client (1013), flood (1008), token_expired (4001).",
		[]string{"reason"}, nil)
	queuedFramesDesc = prometheus.NewDesc("fanout_send_queue_frames",
		"Frames waiting in all send queues.", nil, nil)
	queuedBytesDesc = prometheus.NewDesc("fanout_send_queue_bytes",
		"Bytes waiting in all send queues.", nil, nil)
	redisUpDesc = prometheus.NewDesc("fanout_redis_subscribed",
		"1 while the Redis subscription is confirmed, else 0.", nil, nil)
	redisReadyDesc = prometheus.NewDesc("fanout_redis_ready",
		"1 while the subscription is confirmed and self-probes come back, else 0.", nil, nil)
	redisFailuresDesc = prometheus.NewDesc("fanout_redis_reconnects_total",
		"Redis subscription sessions that ended in an error and were retried.", nil, nil)
	probesMissedDesc = prometheus.NewDesc("fanout_redis_probes_missed_total",
		"Self-probes that did not come back in time (each forces a resubscribe).", nil, nil)
)

// statsCollector turns the daemon's counters into metrics at scrape time.
type statsCollector struct {
	d *daemon
}

func (c *statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{connectionsDesc, usersDesc, acceptedDesc, rejectedDesc, receivedDesc,
		deliveredDesc, droppedDesc, disconnectsDesc, queuedFramesDesc, queuedBytesDesc, redisUpDesc,
		redisReadyDesc, redisFailuresDesc, probesMissedDesc} {
		ch <- d
	}
}

func (c *statsCollector) Collect(ch chan<- prometheus.Metric) {
	d, s := c.d, c.d.stats
	gauge := func(desc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, labels...)
	}
	counter := func(desc *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(connectionsDesc, float64(d.hub.connections.Load()))
	gauge(usersDesc, float64(d.hub.users.Load()))
	counter(acceptedDesc, s.ConnectionsAccepted.Load())
	for reason := range rejectReasonCount {
		counter(rejectedDesc, s.Rejected[reason].Load(), reason.String())
	}
	counter(receivedDesc, s.MessagesReceived.Load())
	counter(deliveredDesc, s.FramesDelivered.Load())
	counter(droppedDesc, s.MessagesInvalid.Load(), "invalid_json")
	counter(droppedDesc, s.MessagesTooLarge.Load(), "too_large")
	counter(droppedDesc, s.FramesDropped.Load(), "slow_client")
	counter(disconnectsDesc, s.SlowDisconnects.Load(), "slow_client")
	counter(disconnectsDesc, s.FloodDisconnects.Load(), "flood")
	counter(disconnectsDesc, s.ExpiredDisconnects.Load(), "token_expired")
	gauge(queuedFramesDesc, float64(d.hub.queuedFrames.Load()))
	gauge(queuedBytesDesc, float64(d.hub.queuedBytes.Load()))
	gauge(redisUpDesc, boolValue(d.sub.confirmed.Load()))
	ready, _ := d.sub.ready()
	gauge(redisReadyDesc, boolValue(ready))
	counter(redisFailuresDesc, s.RedisFailures.Load())
	counter(probesMissedDesc, s.ProbesMissed.Load())
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
