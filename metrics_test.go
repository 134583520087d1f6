package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// metricFamilies is one scrape of /metrics, parsed, by metric name.
type metricFamilies map[string]*dto.MetricFamily

// scrapeMetrics fetches and parses the admin listener's /metrics.
func scrapeMetrics(t *testing.T, td *testDaemon) metricFamilies {
	t.Helper()
	return scrapeMetricsAt(t, td.adminURL, "")
}

// scrapeMetricsAt fetches adminURL/metrics with the Authorization header
// auth (none when empty) and parses the Prometheus text format.
func scrapeMetricsAt(t *testing.T, adminURL, auth string) metricFamilies {
	t.Helper()
	resp, body := adminGet(t, adminURL+"/metrics", auth)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %d %.200q", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("/metrics Content-Type %q, want the text format", ct)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, body)
	}
	return families
}

// metric returns the series of name whose labels are exactly labels (name,
// value pairs), failing the test when there is none.
func (m metricFamilies) metric(t *testing.T, name string, labels ...string) (*dto.Metric, dto.MetricType) {
	t.Helper()
	family, ok := m[name]
	if !ok {
		t.Fatalf("/metrics has no %s", name)
	}
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	for _, metric := range family.GetMetric() {
		if len(metric.GetLabel()) != len(want) {
			continue
		}
		match := true
		for _, pair := range metric.GetLabel() {
			if v, ok := want[pair.GetName()]; !ok || v != pair.GetValue() {
				match = false
			}
		}
		if match {
			return metric, family.GetType()
		}
	}
	t.Fatalf("/metrics has no %s%v", name, labels)
	return nil, 0
}

// value returns the value of a counter or gauge series.
func (m metricFamilies) value(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	metric, typ := m.metric(t, name, labels...)
	switch typ {
	case dto.MetricType_COUNTER:
		return metric.GetCounter().GetValue()
	case dto.MetricType_GAUGE:
		return metric.GetGauge().GetValue()
	case dto.MetricType_UNTYPED:
		return metric.GetUntyped().GetValue()
	}
	t.Fatalf("%s is a %v, not a counter or gauge", name, typ)
	return 0
}

// histogram returns the unlabelled histogram name.
func (m metricFamilies) histogram(t *testing.T, name string) *dto.Histogram {
	t.Helper()
	metric, typ := m.metric(t, name)
	if typ != dto.MetricType_HISTOGRAM {
		t.Fatalf("%s is a %v, want a histogram", name, typ)
	}
	return metric.GetHistogram()
}

// wantType fails the test unless each named family has type typ.
func (m metricFamilies) wantType(t *testing.T, typ dto.MetricType, names ...string) {
	t.Helper()
	for _, name := range names {
		if family, ok := m[name]; !ok || family.GetType() != typ {
			t.Errorf("%s: type %v (present %v), want %v", name, family.GetType(), ok, typ)
		}
	}
}

// dialStuck opens a WebSocket for username that never reads, with a small
// socket receive buffer so that the daemon's writes to it block soon, and
// waits until the hub has it.
func dialStuck(t *testing.T, td *testDaemon, username string) *websocket.Conn {
	t.Helper()
	dialer := *websocket.DefaultDialer
	dialer.NetDialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err == nil {
			_ = conn.(*net.TCPConn).SetReadBuffer(4 << 10)
		}
		return conn, err
	}
	before := td.d.hub.connectionCount(username)
	conn, _, err := dialer.Dial(td.wsURL+"?username="+username, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", username, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	eventually(t, 5*time.Second, "stuck connection registered", func() bool {
		return td.d.hub.connectionCount(username) > before
	})
	return conn
}

// publishUntil publishes payload to username, one at a time, until done
// holds, and returns how many it published. Each publish is followed by a
// fence, an event for a user with no connection: the subscriber handles
// messages one after another, so once the fence is counted the payload's
// broadcast is over, and done sees its effect before the next publish.
func publishUntil(t *testing.T, td *testDaemon, username, payload string, limit int, done func() bool) int {
	t.Helper()
	for i := 1; i <= limit; i++ {
		want := td.d.stats.MessagesReceived.Load() + 2
		td.publish(username, payload)
		td.publish("fence", `{}`)
		deadline := time.Now().Add(10 * time.Second)
		for td.d.stats.MessagesReceived.Load() < want {
			if time.Now().After(deadline) {
				t.Fatalf("publish %d: daemon did not read it within 10s", i)
			}
			time.Sleep(50 * time.Microsecond)
		}
		if done() {
			return i
		}
	}
	t.Fatalf("condition not reached after %d publishes of %d bytes", limit, len(payload))
	return 0
}

func TestMetricsCountDeliveriesDropsAndRefusalsExactly(t *testing.T) {
	const maxBytes = 1024
	td := startDaemon(t, startRedis(t), map[string]string{"MAX_MESSAGE_BYTES": fmt.Sprint(maxBytes), "LOG_LEVEL": "info"})
	td.waitReady()
	// Self-probes run every 100 ms from here on; none may be counted.
	before := scrapeMetrics(t, td)

	alice := []*websocket.Conn{td.dial("alice"), td.dial("alice")}
	_ = td.dial("bob")
	if status, _, err := get(td.baseURL + "/ws?username=bad*name"); err != nil || status != http.StatusBadRequest {
		t.Fatalf("bad username: %d %v, want 400", status, err)
	}

	const n = 25
	start := time.Now()
	for i := range n {
		td.publish("alice", event("alice", i))
		if i == n/2 {
			td.publish("alice", `{"type":"truncated"`)
			td.publish("alice", `{"data":"`+strings.Repeat("x", maxBytes)+`"}`)
		}
	}
	for _, conn := range alice {
		for i := range n {
			if got, want := readText(t, conn, 5*time.Second), event("alice", i); got != want {
				t.Fatalf("frame %d = %s, want %s", i, got, want)
			}
		}
	}
	// A frame is counted, and its latency observed, just after it is written.
	delta := func(m metricFamilies, name string, labels ...string) float64 {
		t.Helper()
		return m.value(t, name, labels...) - before.value(t, name, labels...)
	}
	eventually(t, 5*time.Second, "frames counted", func() bool {
		m := scrapeMetrics(t, td)
		return delta(m, "fanout_frames_delivered_total") >= 2*n &&
			m.histogram(t, "fanout_delivery_latency_seconds").GetSampleCount() >= 2*n
	})
	elapsed := time.Since(start)
	after := scrapeMetrics(t, td)

	// Invalid and oversized payloads were read from Redis, so they count
	// as received; probes do not.
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"fanout_messages_received_total", nil, n + 2},
		{"fanout_frames_delivered_total", nil, 2 * n},
		{"fanout_messages_dropped_total", []string{"reason", "invalid_json"}, 1},
		{"fanout_messages_dropped_total", []string{"reason", "too_large"}, 1},
		{"fanout_messages_dropped_total", []string{"reason", "slow_client"}, 0},
		{"fanout_connections_accepted_total", nil, 3},
		{"fanout_disconnects_total", []string{"reason", "slow_client"}, 0},
		{"fanout_disconnects_total", []string{"reason", "flood"}, 0},
		{"fanout_disconnects_total", []string{"reason", "token_expired"}, 0},
	} {
		if got := delta(after, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v grew by %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	for _, reason := range rejectReasonNames {
		want := 0.0
		if reason == "bad_request" {
			want = 1
		}
		if got := delta(after, "fanout_connections_rejected_total", "reason", reason); got != want {
			t.Errorf("fanout_connections_rejected_total{reason=%q} grew by %v, want %v", reason, got, want)
		}
	}
	for _, c := range []struct {
		name string
		want float64
	}{
		{"fanout_connections", 3},
		{"fanout_users", 2},
		{"fanout_send_queue_frames", 0},
		{"fanout_send_queue_bytes", 0},
		{"fanout_redis_subscribed", 1},
		{"fanout_redis_ready", 1},
	} {
		if got := after.value(t, c.name); got != c.want {
			t.Errorf("%s = %v, want %v", c.name, got, c.want)
		}
	}

	// One latency per frame written, each no longer than the whole exchange.
	hBefore, hAfter := before.histogram(t, "fanout_delivery_latency_seconds"), after.histogram(t, "fanout_delivery_latency_seconds")
	if got := hAfter.GetSampleCount() - hBefore.GetSampleCount(); got != 2*n {
		t.Errorf("latency histogram count grew by %d, want %d (one per frame)", got, 2*n)
	}
	sum := hAfter.GetSampleSum() - hBefore.GetSampleSum()
	if sum <= 0 || sum > 2*n*elapsed.Seconds() {
		t.Errorf("latency sum grew by %vs for %d frames delivered within %v", sum, 2*n, elapsed)
	}
	for _, b := range hAfter.GetBucket() {
		if b.GetUpperBound() >= elapsed.Seconds() && b.GetCumulativeCount() != hAfter.GetSampleCount() {
			t.Errorf("bucket le=%v holds %d of %d samples, but none took longer than %v",
				b.GetUpperBound(), b.GetCumulativeCount(), hAfter.GetSampleCount(), elapsed)
		}
	}

	after.wantType(t, dto.MetricType_COUNTER, "fanout_connections_accepted_total", "fanout_connections_rejected_total",
		"fanout_messages_received_total", "fanout_frames_delivered_total", "fanout_messages_dropped_total",
		"fanout_disconnects_total", "fanout_redis_reconnects_total", "fanout_redis_probes_missed_total")
	after.wantType(t, dto.MetricType_GAUGE, "fanout_connections", "fanout_users", "fanout_send_queue_frames",
		"fanout_send_queue_bytes", "fanout_redis_subscribed", "fanout_redis_ready")
	if g := after.value(t, "go_goroutines"); g <= 0 {
		t.Errorf("go_goroutines = %v", g)
	}
	if rss := after.value(t, "process_resident_memory_bytes"); rss <= 0 {
		t.Errorf("process_resident_memory_bytes = %v", rss)
	}

	// Usernames are unbounded: none may appear in a label.
	for name, family := range after {
		for _, metric := range family.GetMetric() {
			for _, label := range metric.GetLabel() {
				for _, user := range []string{"alice", "bob", "fence"} {
					if strings.Contains(label.GetValue(), user) {
						t.Errorf("%s has label %s=%q: a username", name, label.GetName(), label.GetValue())
					}
				}
			}
		}
	}
}

func TestMetricsCountSlowClientDisconnectAndItsDroppedFrame(t *testing.T) {
	td := startDaemon(t, startRedis(t), map[string]string{
		// Any frame queued behind a blocked write overflows the queue.
		"SEND_QUEUE_BYTES": "1024",
		"WRITE_WAIT":       "500ms",
		"LOG_LEVEL":        "info",
	})
	td.waitReady()
	_ = dialStuck(t, td, "stuck")
	before := scrapeMetrics(t, td)

	big := `{"type":"blob","data":"` + strings.Repeat("x", 64<<10) + `"}`
	sent := publishUntil(t, td, "stuck", big, 2000, func() bool { return td.d.stats.SlowDisconnects.Load() > 0 })
	t.Logf("slow disconnect after %d frames of %d KiB", sent, len(big)>>10)
	eventually(t, 5*time.Second, "stuck client dropped", func() bool {
		return scrapeMetrics(t, td).value(t, "fanout_connections") == 0
	})
	after := scrapeMetrics(t, td)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"fanout_disconnects_total", []string{"reason", "slow_client"}, 1},
		{"fanout_disconnects_total", []string{"reason", "flood"}, 0},
		{"fanout_disconnects_total", []string{"reason", "token_expired"}, 0},
		// The message that overflowed the queue; none came after it.
		{"fanout_messages_dropped_total", []string{"reason", "slow_client"}, 1},
		{"fanout_messages_dropped_total", []string{"reason", "invalid_json"}, 0},
		{"fanout_messages_dropped_total", []string{"reason", "too_large"}, 0},
	} {
		if got := after.value(t, c.name, c.labels...) - before.value(t, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v grew by %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if f, b := after.value(t, "fanout_send_queue_frames"), after.value(t, "fanout_send_queue_bytes"); f != 0 || b != 0 {
		t.Errorf("send queues hold %v frames, %v bytes after the only client left; want 0", f, b)
	}
}

func TestMetricsAreOnlyOnTheAdminListenerBehindItsToken(t *testing.T) {
	const token = "0123456789abcdef-metrics"
	td := startDaemon(t, startRedis(t), map[string]string{"ADMIN_TOKEN": token})
	if status, _, err := get(td.baseURL + "/metrics"); err != nil || status != http.StatusNotFound {
		t.Fatalf("public /metrics: %d %v, want 404", status, err)
	}
	for _, auth := range []string{"", "Bearer wrong-token-0123456789", "Basic " + token} {
		resp, body := adminGet(t, td.adminURL+"/metrics", auth)
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("/metrics with Authorization %q: %d, want 401", auth, resp.StatusCode)
		}
		if strings.Contains(body, "fanout_") {
			t.Errorf("/metrics refused with Authorization %q still shows metrics: %.200q", auth, body)
		}
	}
	m := scrapeMetricsAt(t, td.adminURL, "Bearer "+token)
	if got := m.value(t, "fanout_connections"); got != 0 {
		t.Fatalf("fanout_connections = %v on an idle daemon", got)
	}
}

func TestMetricsFollowARedisRestart(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	td := startDaemon(t, r, map[string]string{"LOG_LEVEL": "info"})
	td.waitReady()
	eventually(t, 5*time.Second, "subscribed and ready in /metrics", func() bool {
		m := scrapeMetrics(t, td)
		return m.value(t, "fanout_redis_subscribed") == 1 && m.value(t, "fanout_redis_ready") == 1
	})
	reconnects := scrapeMetrics(t, td).value(t, "fanout_redis_reconnects_total")

	r.kill()
	eventually(t, 10*time.Second, "unsubscribed and not ready in /metrics", func() bool {
		m := scrapeMetrics(t, td)
		return m.value(t, "fanout_redis_subscribed") == 0 && m.value(t, "fanout_redis_ready") == 0
	})
	if got := scrapeMetrics(t, td).value(t, "fanout_redis_reconnects_total"); got <= reconnects {
		t.Errorf("fanout_redis_reconnects_total %v after Redis died, want more than %v", got, reconnects)
	}

	r.start()
	eventually(t, 10*time.Second, "subscribed and ready again in /metrics", func() bool {
		m := scrapeMetrics(t, td)
		return m.value(t, "fanout_redis_subscribed") == 1 && m.value(t, "fanout_redis_ready") == 1
	})
}

// BenchmarkMetricsScrape serves /metrics from a daemon holding 10 000
// connections: what one Prometheus scrape costs. The collector reads
// counters, not connections, so the figure does not grow with them.
//
//	go test -run '^$' -bench MetricsScrape
func BenchmarkMetricsScrape(b *testing.B) {
	d := daemonWithIdleClients(b, 10000, 5000)
	handler := d.metrics.handler()
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	b.ReportAllocs()
	for b.Loop() {
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Fatalf("status %d", rec.Code)
		}
	}
}

// BenchmarkDeliveryLatencyObserve is what the write pump adds per frame for
// the latency histogram: reading the clock and one observation.
func BenchmarkDeliveryLatencyObserve(b *testing.B) {
	m := &metrics{deliveryLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "x", Buckets: deliveryLatencyBuckets})}
	received := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		m.deliveryLatency.Observe(time.Since(received).Seconds())
	}
}
