package main

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	dto "github.com/prometheus/client_model/go"
)

// seriesKey names one series of a counter metric: name{label value}.
func seriesKey(metric, label string) string {
	return metric + "{" + label + "}"
}

func TestCounterTableNamesEachCounterOnce(t *testing.T) {
	var s Stats
	names := map[string]bool{}
	series := map[string]string{}
	fields := map[*atomic.Uint64]string{}
	for _, c := range counterTable {
		if c.name == "" || names[c.name] {
			t.Errorf("counter name %q is empty or used twice", c.name)
		}
		names[c.name] = true
		if c.field == nil {
			t.Errorf("%s reaches no field of Stats", c.name)
			continue
		}
		if other, ok := fields[c.field(&s)]; ok {
			t.Errorf("%s and %s reach the same field of Stats", c.name, other)
		}
		fields[c.field(&s)] = c.name
		if c.metric == nil {
			continue
		}
		if (c.metric.labelName == "") != (c.label == "") {
			t.Errorf("%s: label %q for %s, whose label is %q", c.name, c.label, c.metric.name, c.metric.labelName)
		}
		key := seriesKey(c.metric.name, c.label)
		if other, ok := series[key]; ok {
			t.Errorf("%s and %s are both %s", c.name, other, key)
		}
		series[key] = c.name
	}
	metrics := map[string]bool{}
	for _, m := range counterMetrics() {
		if metrics[m.name] {
			t.Errorf("two counter metrics are named %s", m.name)
		}
		metrics[m.name] = true
		if !strings.HasPrefix(m.name, "fanout_") || !strings.HasSuffix(m.name, "_total") || m.help == "" {
			t.Errorf("counter metric %s (help %q): want fanout_…_total with a help text", m.name, m.help)
		}
	}
}

func TestEachCountedDisconnectIsOneSeriesOfTheDisconnectsMetric(t *testing.T) {
	var counted []string
	for _, d := range disconnects {
		if d.counter == nil {
			continue
		}
		c := d.counter
		counted = append(counted, c.name)
		if c.metric != disconnectsTotal || c.label == "" {
			t.Errorf("disconnect %q is counted as %s{%s}, want a reason of %s", d.reason, c.metric.name, c.label, disconnectsTotal.name)
		}
		// The help text gives each reason's close code.
		if want := fmt.Sprintf("%s (%d)", c.label, d.code); !strings.Contains(disconnectsTotal.help, want) {
			t.Errorf("help of %s does not say %q: %q", disconnectsTotal.name, want, disconnectsTotal.help)
		}
	}
	// And nothing else counts into it.
	var inTable []string
	for _, c := range counterTable {
		if c.metric == disconnectsTotal {
			inTable = append(inTable, c.name)
		}
	}
	if !slices.Equal(inTable, counted) {
		t.Errorf("counters of %s: %v, want the disconnect table's %v", disconnectsTotal.name, inTable, counted)
	}
}

func TestEveryCounterIsLoggedExportedAndInAdminStats(t *testing.T) {
	td := startDaemon(t, startRedis(t), map[string]string{"LOG_LEVEL": "info"})
	td.waitReady()
	// A different value in each counter, so that each name is seen to
	// read its own field. The daemon is idle: nothing else moves them.
	want := map[string]uint64{}
	for i, c := range counterTable {
		want[c.name] = uint64(1000 + i)
		c.field(td.d.stats).Store(want[c.name])
	}
	for reason := range rejectReasonCount {
		td.d.stats.Rejected[reason].Store(uint64(2000 + reason))
	}

	// /metrics: every counter under its metric and label, the refusals by
	// reason, and no other counter series.
	m := scrapeMetrics(t, td)
	series := map[string]float64{}
	for _, c := range counterTable {
		if c.metric == nil {
			// Only connections_rejected is exported as the sum of its
			// series by reason, checked below.
			if c.name != "connections_rejected" {
				t.Errorf("%s has no metric: it is not in /metrics", c.name)
			}
			continue
		}
		series[seriesKey(c.metric.name, c.label)] = float64(want[c.name])
	}
	for reason := range rejectReasonCount {
		series[seriesKey(connectionsRejectedTotal.name, reason.String())] = float64(2000 + reason)
	}
	found := 0
	for name, family := range m {
		if !strings.HasPrefix(name, "fanout_") || family.GetType() != dto.MetricType_COUNTER {
			continue
		}
		for _, metric := range family.GetMetric() {
			label := ""
			for _, pair := range metric.GetLabel() {
				label = pair.GetValue()
			}
			key := seriesKey(name, label)
			value, ok := series[key]
			if !ok {
				t.Errorf("/metrics has %s, which is in no table", key)
				continue
			}
			found++
			if got := metric.GetCounter().GetValue(); got != value {
				t.Errorf("/metrics %s = %v, want %v", key, got, value)
			}
		}
	}
	if found != len(series) {
		t.Errorf("/metrics has %d of the %d counter series %v", found, len(series), series)
	}
	for _, d := range disconnects {
		if d.counter != nil {
			if got := m.value(t, disconnectsTotal.name, disconnectsTotal.labelName, d.counter.label); got != float64(want[d.counter.name]) {
				t.Errorf("disconnect %q: %s{reason=%q} = %v, want %d", d.reason, disconnectsTotal.name, d.counter.label, got, want[d.counter.name])
			}
		}
	}

	// /admin/stats: every counter by name, with its growth and rate; the
	// refusals by reason.
	snap := adminStats(t, td)
	for _, c := range counterTable {
		if got, ok := snap.Counters[c.name]; !ok || got != want[c.name] {
			t.Errorf("/admin/stats counters[%s] = %d (listed %v), want %d", c.name, got, ok, want[c.name])
		}
		if _, ok := snap.LastMinute[c.name]; !ok {
			t.Errorf("/admin/stats last_minute lacks %s", c.name)
		}
		if _, ok := snap.RatesPerSecond[c.name]; !ok {
			t.Errorf("/admin/stats rates_per_second lacks %s", c.name)
		}
	}
	if len(snap.Counters) != len(counterTable) {
		t.Errorf("/admin/stats has %d counters, the table %d: %v", len(snap.Counters), len(counterTable), snap.Counters)
	}
	for reason := range rejectReasonCount {
		if got := snap.Rejected[reason.String()]; got != uint64(2000+reason) {
			t.Errorf("/admin/stats rejected[%s] = %d, want %d", reason, got, 2000+reason)
		}
	}
	if len(snap.Rejected) != int(rejectReasonCount) {
		t.Errorf("/admin/stats rejected %v, want the %d reasons", snap.Rejected, rejectReasonCount)
	}

	// The last log line: every counter, in the table's order.
	if err := td.stop(); err != nil {
		t.Fatalf("run returned %v", err)
	}
	var stopped string
	for line := range strings.Lines(td.logs.String()) {
		if strings.Contains(line, " msg=Stopped ") {
			stopped = line
		}
	}
	_, values, ok := strings.Cut(stopped, " msg=Stopped ")
	if !ok {
		t.Fatalf("no Stopped line in the logs:\n%s", td.logs.String())
	}
	var logged []string
	for _, pair := range strings.Fields(values) {
		name, value, _ := strings.Cut(pair, "=")
		logged = append(logged, name)
		if value != fmt.Sprint(want[name]) {
			t.Errorf("Stopped line has %s, want %s=%d", pair, name, want[name])
		}
	}
	if names := counterNames(); !slices.Equal(logged, names) {
		t.Errorf("Stopped line logs %v, want %v", logged, names)
	}
}

// counterNames returns the counters' names in the table's order.
func counterNames() []string {
	var names []string
	for _, c := range counterTable {
		names = append(names, c.name)
	}
	return names
}

// docsSection returns the section of the Markdown file path under the
// heading title, up to the next heading of level 2 or more (a "# " line may
// be a comment in an example).
func docsSection(t *testing.T, path, title string) string {
	t.Helper()
	page, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(page), "\n"+title+"\n")
	if !ok {
		t.Fatalf("%s has no %q", path, title)
	}
	if end := regexp.MustCompile(`\n##+ `).FindStringIndex(section); end != nil {
		section = section[:end[0]]
	}
	return section
}

func TestDocsMetricsTableHasEveryCounterMetric(t *testing.T) {
	// Rows of the metrics table: | `name{label}`, `name` | type | meaning |
	rows := map[string][]string{}
	for line := range strings.Lines(docsSection(t, "docs/operations.md", "### Prometheus metrics")) {
		cells := strings.Split(strings.Trim(strings.TrimSpace(line), "|"), "|")
		if len(cells) != 3 || !strings.HasPrefix(strings.TrimSpace(cells[0]), "`") {
			continue
		}
		for _, name := range regexp.MustCompile("`([a-z_*]+)").FindAllStringSubmatch(cells[0], -1) {
			rows[name[1]] = []string{strings.TrimSpace(cells[0]), strings.TrimSpace(cells[1]), cells[2]}
		}
	}
	metrics := map[string]bool{}
	for _, m := range counterMetrics() {
		metrics[m.name] = true
		row, ok := rows[m.name]
		if !ok {
			t.Errorf("docs/operations.md's metrics table lacks %s", m.name)
			continue
		}
		name := "`" + m.name + "`"
		if m.labelName != "" {
			name = "`" + m.name + "{" + m.labelName + "}`"
		}
		if !strings.Contains(row[0], name) || row[1] != "counter" {
			t.Errorf("docs/operations.md's metrics table has %s as %q of type %q, want %s, counter", m.name, row[0], row[1], name)
		}
	}
	for name, row := range rows {
		if row[1] == "counter" && !metrics[name] {
			t.Errorf("docs/operations.md's metrics table has the counter %s, which is in no table", name)
		}
	}

	// A metric split by label names every value in its meaning.
	labels := map[string][]string{}
	for _, c := range counterTable {
		if c.label != "" {
			labels[c.metric.name] = append(labels[c.metric.name], c.label)
		}
	}
	for reason := range rejectReasonCount {
		labels[connectionsRejectedTotal.name] = append(labels[connectionsRejectedTotal.name], reason.String())
	}
	for metric, values := range labels {
		for _, value := range values {
			if row, ok := rows[metric]; ok && !strings.Contains(row[2], "`"+value+"`") {
				t.Errorf("docs/operations.md's row for %s does not name its label value `%s`", metric, value)
			}
		}
	}
	// And the disconnects' close codes.
	for _, d := range disconnects {
		if row, ok := rows[disconnectsTotal.name]; ok && d.counter != nil {
			if want := fmt.Sprintf("`%s` (%d)", d.counter.label, d.code); !strings.Contains(row[2], want) {
				t.Errorf("docs/operations.md's row for %s does not say %s", disconnectsTotal.name, want)
			}
		}
	}
}

func TestDocsConnectionStatsShowTheCounterTable(t *testing.T) {
	section := docsSection(t, "docs/operations.md", "### Connection stats")
	// The example Stopped line logs every counter, in order.
	match := regexp.MustCompile(`(?m)^level=INFO msg=Stopped (.*)$`).FindStringSubmatch(section)
	if match == nil {
		t.Fatal("docs/operations.md's Connection stats have no Stopped line")
	}
	var logged []string
	for _, pair := range strings.Fields(match[1]) {
		name, _, _ := strings.Cut(pair, "=")
		logged = append(logged, name)
	}
	if names := counterNames(); !slices.Equal(logged, names) {
		t.Errorf("docs/operations.md's Stopped line logs %v, want %v", logged, names)
	}

	// The table of counters names each one's metric, in the table's order.
	var listed []string
	for _, row := range regexp.MustCompile("(?m)^\\| `([a-z_]+)` \\| (.*) \\|$").FindAllStringSubmatch(section, -1) {
		listed = append(listed, row[1])
		i := slices.Index(counterNames(), row[1])
		if i < 0 {
			continue
		}
		c := counterTable[i]
		want := "`" + connectionsRejectedTotal.name + "`"
		switch {
		case c.metric != nil && c.label != "":
			want = fmt.Sprintf("`%s{%s=%q}`", c.metric.name, c.metric.labelName, c.label)
		case c.metric != nil:
			want = "`" + c.metric.name + "`"
		}
		if !strings.Contains(row[2], want) {
			t.Errorf("docs/operations.md's row for the counter %s says %q, want %s", c.name, row[2], want)
		}
	}
	if names := counterNames(); !slices.Equal(listed, names) {
		t.Errorf("docs/operations.md's table of counters lists %v, want %v", listed, names)
	}

	// The example's counters and refusals are real ones.
	keys := regexp.MustCompile(`"([a-z_.]+)": \d`)
	for field, names := range map[string][]string{"counters": counterNames(), "rejected": rejectReasonNames[:]} {
		line := regexp.MustCompile(`(?m)^\s*"` + field + `": \{.*$`).FindString(section)
		if line == "" {
			t.Errorf("docs/operations.md's /admin/stats example has no %s", field)
			continue
		}
		for _, key := range keys.FindAllStringSubmatch(line, -1) {
			if key[1] != "..." && !slices.Contains(names, key[1]) {
				t.Errorf("docs/operations.md's /admin/stats example has %s.%s, which is not one of %v", field, key[1], names)
			}
		}
	}
}
