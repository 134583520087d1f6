package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// step is a passing ceiling step at rate events/s (2 connections per
// user), with the given p99.
func step(rate float64, p99 time.Duration) report {
	return report{Scenario: fmt.Sprintf("ceiling@%.0f", rate),
		Rate: rate, EventsPublished: int64(rate * 10), PublishSeconds: 10, Connections: 400, ConnsRequested: 400,
		Expected: int64(rate * 20), Deliveries: int64(rate * 20), Drained: true,
		DeliveriesPerSec: 2 * rate, LatP50us: 1000, LatP99us: float64(p99.Microseconds())}
}

func TestCeilingIsTheFastestStepUnderTheLimit(t *testing.T) {
	limit := 50 * time.Millisecond
	reports := []report{
		{Scenario: "S1-max"}, // not a step
		step(1000, 5*time.Millisecond),
		step(2000, 20*time.Millisecond),
		step(4000, 60*time.Millisecond),
	}
	v := ceilingOf(reports, ceilingPrefix, limit)
	if len(v.steps) != 3 || v.best == nil || v.best.r.Rate != 2000 || v.over == nil || v.over.r.Rate != 4000 || !v.stop {
		t.Fatalf("verdict: %d steps, best %+v, over %+v, stop %v", len(v.steps), v.best, v.over, v.stop)
	}
	if !strings.Contains(v.over.why, "p99 60.00ms over 50ms") {
		t.Errorf("why: %q", v.over.why)
	}
	var out bytes.Buffer
	if err := v.print(&out, limit); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "ceiling: 4000 deliveries/s") {
		t.Errorf("printed:\n%s", out.String())
	}
	out.Reset()
	printIdle(&out, []report{{Scenario: "S1-max", RSSPerConnBytes: 8192, ConnsPerGiB: connsPerGiB(8192), Connections: 19500}, step(1, 0)})
	if got := out.String(); got != "idle: S1-max holds 131072 connections per GiB (8192 B of RSS per connection over 19500 connections, after ping rounds)\n" {
		t.Errorf("idle: %q", got)
	}

	// While every step passes the sweep goes on.
	v = ceilingOf(reports[:3], ceilingPrefix, limit)
	if v.stop || v.over != nil || v.best.r.Rate != 2000 {
		t.Errorf("two passing steps: stop %v, over %v", v.stop, v.over)
	}
	// No step at all: nothing to stop.
	if v := ceilingOf(nil, ceilingPrefix, limit); v.stop || v.best != nil {
		t.Error("no steps")
	}
}

func TestCeilingStepFailsOnLossFaultsOrASlowGenerator(t *testing.T) {
	limit := 50 * time.Millisecond
	for name, tc := range map[string]struct {
		change func(*report)
		why    string
	}{
		"loss":          {func(r *report) { r.Deliveries--; r.Losses = 1 }, "1 deliveries lost"},
		"not drained":   {func(r *report) { r.Drained = false }, "0 deliveries lost"},
		"duplicate":     {func(r *report) { r.Duplicates = 2 }, "2 duplicates"},
		"slow clients":  {func(r *report) { r.Disconnects = 3 }, "3 duplicates, out-of-order"},
		"connections":   {func(r *report) { r.Connections = 399 }, "399 of 400 connections"},
		"generator":     {func(r *report) { r.PublishSeconds = 12 }, "the generator published 833 events/s of 1000"},
		"p99 at limit+": {func(r *report) { r.LatP99us = 50001 }, "p99 50.00ms over 50ms"},
	} {
		r := step(1000, 10*time.Millisecond)
		tc.change(&r)
		ok, why := judgeStep(&r, limit)
		if ok || !strings.Contains(why, tc.why) {
			t.Errorf("%s: ok %v, why %q, want %q", name, ok, why, tc.why)
		}
	}
	r := step(1000, limit)
	if ok, why := judgeStep(&r, limit); !ok {
		t.Errorf("p99 exactly at the limit: %s", why)
	}
}

func TestReadReportsReadsOnlyBenchJSONLines(t *testing.T) {
	a, b := step(1000, time.Millisecond), step(2000, time.Millisecond)
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	path := filepath.Join(t.TempDir(), "results")
	text := "== fanout-bench ceiling@1000 ==\n  latency ...\nBENCH_JSON " + string(ja) + "\nnoise\nBENCH_JSON " + string(jb) + "\n"
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	reports, err := readReports(path)
	if err != nil || len(reports) != 2 || reports[1].Rate != 2000 || reports[0].LatP99us != 1000 {
		t.Fatalf("reports %+v, err %v", reports, err)
	}
	if err := os.WriteFile(path, []byte("BENCH_JSON {bad\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readReports(path); err == nil {
		t.Error("a bad line was accepted")
	}
}
