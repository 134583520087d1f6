package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
)

// print writes the human-readable table (unless jsonOnly) and one line
// "BENCH_JSON {...}" to stdout.
func (r *report) print(jsonOnly bool) {
	if !jsonOnly {
		w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
		row := func(k, f string, a ...any) { fmt.Fprintf(w, "  %s\t"+f+"\n", append([]any{k}, a...)...) }
		name := r.Scenario
		if name == "" {
			name = "(unnamed)"
		}
		fmt.Fprintf(w, "== fanout-bench %s ==\n", name)
		row("connections", "%d of %d (%d users x %d; %d procs, %d source addrs)", r.Connections, r.ConnsRequested, r.Users, r.ConnsPerUser, r.Procs, r.Sources)
		row("connect failures", "%d %s", r.ConnectFailures, strings.Join(r.ConnectErrors, "; "))
		row("connect rate", "%.0f upgrades/s (%.2f s)", r.UpgradesPerSec, r.ConnectSeconds)
		row("daemon RSS", "%.1f MiB idle -> %.1f MiB connected -> %.1f MiB at end", mib(r.RSSBaseBytes), mib(r.RSSConnectedBytes), mib(r.RSSEndBytes))
		row("RSS per connection", "%.0f bytes (%.1f KiB)", r.RSSPerConnBytes, r.RSSPerConnBytes/1024)
		row("daemon CPU while idle", "%.1f%% of one core (during -settle)", r.DaemonIdleCPUPercent)
		if r.EventsPublished > 0 || r.PublishErrors > 0 {
			mode := fmt.Sprintf("%.0f events/s", r.Rate)
			if r.Rate == 0 {
				mode = fmt.Sprintf("as fast as possible, <= %d in flight", r.Inflight)
			}
			row("events published", "%d (%d B, %s; %.2f s, %d errors)", r.EventsPublished, r.Payload, mode, r.PublishSeconds, r.PublishErrors)
			row("expected deliveries", "%d", r.Expected)
			row("deliveries", "%d (drained: %v)", r.Deliveries, r.Drained)
			row("losses", "%d", r.Losses)
			row("duplicates / out of order", "%d / %d", r.Duplicates, r.OutOfOrder)
			row("cross-user leaks", "%d", r.Leaks)
			first := ""
			if r.Phase2 != nil {
				first = " (burst phase)"
			}
			row("latency p50/p99/p99.9/max"+first, "%s / %s / %s / %s", dur(r.LatP50us), dur(r.LatP99us), dur(r.LatP999us), dur(r.LatMaxus))
			row("throughput"+first, "%.0f deliveries/s over %.2f s", r.DeliveriesPerSec, r.WindowSeconds)
			row("daemon CPU"+first, "%.2f µs per delivery (%.0f%% of one core; generator %.0f%%)", r.DaemonCPUPerDeliv, r.DaemonCPUPercent, r.BenchCPUPercent)
			if p := r.Phase2; p != nil {
				row("paced tail (phase 2)", "%d events, %d of %d deliveries over %.1f s, daemon CPU %.2f µs per delivery", p.Events, p.Deliv, p.Expected, p.WindowSeconds, p.CPUPerDeliv)
				row("  tail latency p50/p99/p99.9/max", "%s / %s / %s / %s", dur(p.P50us), dur(p.P99us), dur(p.P999us), dur(p.Maxus))
			}
		}
		row("disconnects / parse errors", "%d / %d", r.Disconnects, r.ParseErrors)
		for _, n := range r.Notes {
			row("note", "%s", n)
		}
		w.Flush()
	}
	b, _ := json.Marshal(r)
	fmt.Printf("BENCH_JSON %s\n", b)
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

func dur(us float64) string {
	switch {
	case us == 0:
		return "-"
	case us >= 1e6:
		return fmt.Sprintf("%.2fs", us/1e6)
	case us >= 1e3:
		return fmt.Sprintf("%.2fms", us/1e3)
	default:
		return fmt.Sprintf("%.0fµs", us)
	}
}

// printSummary reads BENCH_JSON lines from path and prints one row per
// scenario: the table bench.sh shows at the end.
func printSummary(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "scenario\tconns\tfail\tupgr/s\tRSS/conn\tevents\texpected\tdelivered\tlost\tdup\tleak\tp50\tp99\tp99.9\tmax\tdeliv/s\tCPU µs/deliv\tidle CPU\t")
	for _, line := range strings.Split(string(data), "\n") {
		raw, ok := strings.CutPrefix(line, "BENCH_JSON ")
		if !ok {
			continue
		}
		var r report
		if err := json.Unmarshal([]byte(raw), &r); err != nil {
			return err
		}
		fmt.Fprintf(w, "%s\t%d\t%d\t%.0f\t%.1f KiB\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t%.0f\t%.2f\t%.1f%%\t\n",
			r.Scenario, r.Connections, r.ConnectFailures, r.UpgradesPerSec, r.RSSPerConnBytes/1024,
			r.EventsPublished, r.Expected, r.Deliveries, r.Losses, r.Duplicates, r.Leaks,
			dur(r.LatP50us), dur(r.LatP99us), dur(r.LatP999us), dur(r.LatMaxus), r.DeliveriesPerSec, r.DaemonCPUPerDeliv, r.DaemonIdleCPUPercent)
		if p := r.Phase2; p != nil {
			fmt.Fprintf(w, "%s\t\t\t\t\t%d\t%d\t%d\t\t\t\t%s\t%s\t%s\t%s\t\t%.2f\t\t\n", r.Scenario+" tail",
				p.Events, p.Expected, p.Deliv, dur(p.P50us), dur(p.P99us), dur(p.P999us), dur(p.Maxus), p.CPUPerDeliv)
		}
	}
	return w.Flush()
}
