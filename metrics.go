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

// The descriptions of the gauges read at scrape time; the counters' are
// counterDescs.
var (
	connectionsDesc = prometheus.NewDesc("fanout_connections",
		"Open WebSocket connections.", nil, nil)
	usersDesc = prometheus.NewDesc("fanout_users",
		"Distinct users (channels) with at least one open connection.", nil, nil)
	queuedFramesDesc = prometheus.NewDesc("fanout_send_queue_frames",
		"Frames waiting in all send queues.", nil, nil)
	queuedBytesDesc = prometheus.NewDesc("fanout_send_queue_bytes",
		"Bytes waiting in all send queues.", nil, nil)
	redisUpDesc = prometheus.NewDesc("fanout_redis_subscribed",
		"1 while the Redis subscription is confirmed, else 0.", nil, nil)
	redisReadyDesc = prometheus.NewDesc("fanout_redis_ready",
		"1 while the subscription is confirmed and self-probes come back, else 0.", nil, nil)
	catchupsDesc = prometheus.NewDesc("fanout_history_catchups",
		"Connections catching up on their history (resuming or late-joining) before their live events.", nil, nil)
	channelsDesc = prometheus.NewDesc("fanout_redis_channels",
		"SUBSCRIBE_MODE=user: the user channels Redis holds for this instance (0 in pattern mode).", nil, nil)
	leaseDesc = prometheus.NewDesc("fanout_recorder_lease",
		"SUBSCRIBE_MODE=user with history: 1 while this instance holds the recorder lease and records every user's events, else 0.", nil, nil)
	soleDesc = prometheus.NewDesc("fanout_sole_recorder",
		"Pattern mode with history on one Redis: 1 while no other instance reads events from it and this one appends them without looking them up, else 0.", nil, nil)
)

// gaugeDescs are the gauges, as Describe lists them.
var gaugeDescs = []*prometheus.Desc{connectionsDesc, usersDesc, queuedFramesDesc, queuedBytesDesc, redisUpDesc, redisReadyDesc, catchupsDesc, channelsDesc, leaseDesc, soleDesc}

// counterDescs describes each counter metric of counterTable, and the
// refusals by reason.
var counterDescs = func() map[*counterMetric]*prometheus.Desc {
	descs := map[*counterMetric]*prometheus.Desc{}
	for _, m := range counterMetrics() {
		var labels []string
		if m.labelName != "" {
			labels = []string{m.labelName}
		}
		descs[m] = prometheus.NewDesc(m.name, m.help, labels, nil)
	}
	return descs
}()

// statsCollector turns the daemon's counters into metrics at scrape time.
type statsCollector struct {
	d *daemon
}

func (c *statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range gaugeDescs {
		ch <- d
	}
	for _, m := range counterMetrics() {
		ch <- counterDescs[m]
	}
}

func (c *statsCollector) Collect(ch chan<- prometheus.Metric) {
	d, s := c.d, c.d.stats
	gauge := func(desc *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v)
	}
	counter := func(m *counterMetric, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(counterDescs[m], prometheus.CounterValue, float64(v), labels...)
	}
	gauge(connectionsDesc, float64(d.hub.connections.Load()))
	gauge(usersDesc, float64(d.hub.users.Load()))
	gauge(queuedFramesDesc, float64(d.hub.queuedFrames.Load()))
	gauge(catchupsDesc, float64(d.hub.catchups()))
	gauge(queuedBytesDesc, float64(d.hub.queuedBytes.Load()))
	gauge(redisUpDesc, boolValue(d.sub.status().confirmed))
	ready, _ := d.sub.ready()
	gauge(redisReadyDesc, boolValue(ready))
	sub := d.subscription()
	gauge(channelsDesc, float64(sub.Channels))
	gauge(leaseDesc, boolValue(sub.RecorderLease))
	gauge(soleDesc, boolValue(sub.SoleRecorder))
	for _, row := range counterTable {
		if row.metric != nil {
			counter(row.metric, row.field(s).Load(), row.labels()...)
		}
	}
	for reason := range rejectReasonCount {
		counter(connectionsRejectedTotal, s.Rejected[reason].Load(), reason.String())
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
