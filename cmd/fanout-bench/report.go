package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"
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
		row("connections", "%d of %d (%d users x %d; %d procs, %d source addrs)%s", r.Connections, r.ConnsRequested, r.Users, r.ConnsPerUser, r.Procs, r.Sources, transportNote(r.Transport))
		row("connect failures", "%d %s", r.ConnectFailures, strings.Join(r.ConnectErrors, "; "))
		row("connect rate", "%.0f upgrades/s (%.2f s)", r.UpgradesPerSec, r.ConnectSeconds)
		row("daemon RSS", "%.1f MiB idle -> %.1f MiB connected -> %.1f MiB at end", mib(r.RSSBaseBytes), mib(r.RSSConnectedBytes), mib(r.RSSEndBytes))
		row("RSS per connection", "%.0f bytes (%.1f KiB): %.0f connections per GiB", r.RSSPerConnBytes, r.RSSPerConnBytes/1024, r.ConnsPerGiB)
		row("daemon CPU while idle", "%.1f%% of one core (during -settle)", r.DaemonIdleCPUPercent)
		if r.Acks > 0 {
			row("acks sent", "%d (read receipts: each connection's last event id, at most once a second)", r.Acks)
		}
		if r.RedisConnectCommands > 0 {
			row("Redis while connecting", "%.0f ms of CPU, %d commands (first dial to end of -settle; scripts' commands included)", r.RedisConnectCPUus/1e3, r.RedisConnectCommands)
			row("Redis while idle", "%.2f%% of one core, %.1f commands/s (second half of -settle)", r.RedisIdleCPUPercent, r.RedisIdleCommandsPerSec)
		}
		if r.Transport == transportSSE {
			row("SSE heartbeats", "%d of %d streams had had one when RSS was read (%d heartbeats by then, %d by the end; the daemon sends one every %s)",
				r.SSEStreamsBeatAtRSS, r.Connections, r.SSEHeartbeatsAtRSS, r.SSEHeartbeats, sseHeartbeatEvery)
		}
		if r.EventsPublished > 0 || r.PublishErrors > 0 {
			mode := fmt.Sprintf("%.0f events/s", r.Rate)
			if r.Rate == 0 {
				mode = fmt.Sprintf("as fast as possible, <= %d in flight", r.Inflight)
			}
			if r.Storm != nil {
				row("events published", "%d (%d B; live, warm-up and missed; %d errors)", r.EventsPublished, r.Payload, r.PublishErrors)
			} else {
				row("events published", "%d (%d B, %s; %.2f s, %d errors)", r.EventsPublished, r.Payload, mode, r.PublishSeconds, r.PublishErrors)
			}
			row("expected deliveries", "%d", r.Expected)
			row("deliveries", "%d (drained: %v)", r.Deliveries, r.Drained)
			row("losses", "%d", r.Losses)
			row("duplicates / out of order", "%d / %d", r.Duplicates, r.OutOfOrder)
			row("cross-user leaks", "%d", r.Leaks)
			first := ""
			if r.Phase2 != nil {
				first = " (burst phase)"
			}
			if r.Storm == nil {
				row("latency p50/p99/p99.9/max"+first, "%s / %s / %s / %s", dur(r.LatP50us), dur(r.LatP99us), dur(r.LatP999us), dur(r.LatMaxus))
				row("throughput"+first, "%.0f deliveries/s over %.2f s", r.DeliveriesPerSec, r.WindowSeconds)
				row("daemon CPU"+first, "%.2f µs per delivery (%.0f%% of one core; generator %.0f%%)", r.DaemonCPUPerDeliv, r.DaemonCPUPercent, r.BenchCPUPercent)
			}
			if p := r.Phase2; p != nil {
				row("paced tail (phase 2)", "%d events, %d of %d deliveries over %.1f s, daemon CPU %.2f µs per delivery", p.Events, p.Deliv, p.Expected, p.WindowSeconds, p.CPUPerDeliv)
				row("  tail latency p50/p99/p99.9/max", "%s / %s / %s / %s", dur(p.P50us), dur(p.P99us), dur(p.P999us), dur(p.Maxus))
			}
			if r.Storm == nil {
				row("Redis CPU", "%.2f µs per event (%.0f µs over the burst)", r.RedisCPUPerEvent, r.RedisCPUus)
			}
			row("history", "%d entries added in %d keys; Redis used_memory %.1f -> %.1f MiB: %s per entry",
				r.HistoryEntries, r.HistoryKeys, mib(r.RedisMemBeforeBytes), mib(r.RedisMemAfterBytes), perEntry(r))
			if r.Transport == transportSSE {
				row("events with an id / id regressions", "%d / %d (SSE id: lines)", r.EventsWithID, r.IDRegressions)
			} else {
				row("events with an id / id regressions", "%d / %d (subprotocol %q)", r.EventsWithID, r.IDRegressions, r.Subprotocol)
			}
			row("Redis egress", "%s/s (%.0f B per event published; %d B over the window)", bytesHuman(r.RedisEgressBytesPerSec), r.RedisEgressPerEvent, r.RedisEgressBytes)
		}
		if len(r.Instances) > 0 {
			row("instances", "%d; %d received every event (pattern mode: all; user mode: the lease holder)", len(r.Instances), fullReceivers(r.Instances))
			for _, line := range instanceRows(r) {
				row("", "%s", line)
			}
		}
		if pc := r.RedisPubSub; pc != nil {
			row("Redis pub/sub clients", "%d with a pattern, %d with channels (%d channel subscriptions), %d with shard channels (%d SSUBSCRIBE subscriptions)",
				pc.PatternClients, pc.ChannelClients, pc.Channels, pc.ShardClients, pc.ShardChannels)
		}
		if c := r.Cluster; c != nil {
			for i, line := range clusterRows(c) {
				k := ""
				if i == 0 {
					k = "Redis Cluster"
				}
				row(k, "%s", line)
			}
		}
		if st := r.Storm; st != nil {
			row("storm clients", "%d connected (%d users), %d missed events each; %d live connections at %.0f events/s",
				st.Connected, st.Users, st.Missed, st.LiveConnections, st.LiveRate)
			row("away", "%d events published and in the history after %.2f s (%d users short)", st.AwayEvents, st.AwaySeconds, st.HistoryShort)
			row("reconnected", "%d (%d failed, %d without id; last dial done after %.2f s) %s",
				st.Reconnected, st.ReconnectFail, st.NoID, st.ReconnectSeconds, strings.Join(st.ReconnectErrors, "; "))
			live := fmt.Sprintf("%.2f s", st.AllLiveSeconds)
			if !st.AllLive {
				live = fmt.Sprintf("not reached: %d of %d caught up", st.CaughtUp, st.Connected)
			}
			row("all live after", "%s; per client p50/p99/max %s / %s / %s", live, dur(st.CatchUpP50us), dur(st.CatchUpP99us), dur(st.CatchUpMaxus))
			row("live latency before the storm", "p50/p99/max %s / %s / %s (%d deliveries over %.1f s)",
				dur(st.Baseline.P50us), dur(st.Baseline.P99us), dur(st.Baseline.Maxus), st.Baseline.Deliv, st.Baseline.WindowSeconds)
			row("live latency during the storm", "p50/p99/max %s / %s / %s (%d deliveries over %.2f s)",
				dur(st.During.P50us), dur(st.During.P99us), dur(st.During.Maxus), st.During.Deliv, st.During.WindowSeconds)
			row("CPU during the storm", "daemon %.0f%%, Redis %.0f%%, generator %.0f%% (of one core; 2 cores in all)", st.DaemonCPUPercent, st.RedisCPUPercent, st.BenchCPUPercent)
		}
		if r.Controls > 0 {
			row("control messages", "%d: %s", r.Controls, strings.Join(r.ControlSamples, " "))
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

// transportNote is what the connections row says of the transport:
// nothing for WebSocket.
func transportNote(t string) string {
	if t == transportSSE {
		return ", SSE streams (GET /events)"
	}
	return ""
}

// bytesHuman formats a byte count (or rate) in B, KiB or MiB.
func bytesHuman(b float64) string {
	switch {
	case b >= 1<<20:
		return fmt.Sprintf("%.2f MiB", b/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1f KiB", b/(1<<10))
	default:
		return fmt.Sprintf("%.0f B", b)
	}
}

// printInstances prints, for each run with several instances, one row per
// instance and one for the run: what Redis sent, the daemons' CPU per
// delivery, latency and faults.
func printInstances(out io.Writer, reports []report) error {
	var runs []report
	for _, r := range reports {
		if len(r.Instances) > 0 {
			runs = append(runs, r)
		}
	}
	if len(runs) == 0 {
		return nil
	}
	fmt.Fprintln(out)
	fmt.Fprintln(out, "== several instances: received from Redis per instance ==")
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "scenario\tinstance\tusers\tconns\treceived\tof published\tdelivered\trecorded\tCPU ms\t")
	for _, r := range runs {
		for i, in := range r.Instances {
			fmt.Fprintf(w, "%s\t#%d\t%d\t%d\t%d\t%.0f%%\t%d\t%d\t%.0f\t\n", r.Scenario, i, in.Users, in.ConnsPlanned,
				in.Received, 100*in.ReceivedShare, in.Delivered, in.Recorded, in.CPUus/1e3)
		}
	}
	if err := w.Flush(); err != nil {
		return err
	}
	w = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "scenario\tinstances\treceiving all\tevents/s\tdeliv/s\tRedis egress/s\tB/event\tCPU µs/deliv\tp50\tp99\tlost\tdup\t")
	for _, r := range runs {
		fmt.Fprintf(w, "%s\t%d\t%d\t%.0f\t%.0f\t%s\t%.0f\t%.2f\t%s\t%s\t%d\t%d\t\n", r.Scenario, len(r.Instances), fullReceivers(r.Instances),
			r.publishRate(), r.DeliveriesPerSec, bytesHuman(r.RedisEgressBytesPerSec), r.RedisEgressPerEvent, r.DaemonCPUPerDeliv,
			dur(r.LatP50us), dur(r.LatP99us), r.Losses, r.Duplicates)
	}
	return w.Flush()
}

// printClusters prints, for the runs on a Redis Cluster, one row per run
// (what the nodes spent per event) and then one row per node of the first
// run of each scenario (the first step of a sweep: the offered rate).
func printClusters(out io.Writer, reports []report) error {
	var runs []report
	for _, r := range reports {
		if r.Cluster != nil {
			runs = append(runs, r)
		}
	}
	if len(runs) == 0 {
		return nil
	}
	fmt.Fprintln(out)
	fmt.Fprintln(out, "== Redis Cluster: what the nodes spent per event published ==")
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "scenario\tpublish\tevents/s\tdeliv/s\tp50\tp99\tlost\tRedis CPU µs/event\tmasters\treplicas\tbus B/event\tbus publishes/event\tto clients B/event\tdaemons µs/deliv\t")
	for _, r := range runs {
		c := r.Cluster
		fmt.Fprintf(w, "%s\t%s\t%.0f\t%.0f\t%s\t%s\t%d\t%.2f\t%.2f\t%.2f\t%s\t%.2f\t%.0f\t%.2f\t\n", r.Scenario, c.Publish, r.publishRate(), r.DeliveriesPerSec,
			dur(r.LatP50us), dur(r.LatP99us), r.Losses, c.CPUPerEvent, c.MasterCPUPerEvent, c.ReplicaCPUPerEvent,
			strings.TrimSuffix(busBytes(c.BusBytesPerEvent), " B"), c.BusPublishesPerEvent, c.ClientOutPerEvent, r.DaemonCPUPerDeliv)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(out)
	w = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "scenario\tnode\trole\tCPU ms\tCPU µs/event\tto clients\tto replicas\tbus (est.)\tbus msgs\tpublish fwd\tpublishshard fwd\t")
	seen := map[string]bool{}
	for _, r := range runs {
		name, _, _ := strings.Cut(r.Scenario, "@")
		if seen[name] {
			continue
		}
		seen[name] = true
		for _, n := range r.Cluster.Nodes {
			fmt.Fprintf(w, "%s\t%s\t%s\t%.0f\t%.2f\t%s\t%s\t%s\t%d\t%d\t%d\t\n", r.Scenario, n.Addr, n.Role, n.CPUus/1e3, n.CPUPerEvent,
				bytesOrDash(n.ClientOutBytes), bytesOrDash(n.ReplOutBytes), bytesOrDash(n.BusBytes), n.BusMessages, n.PublishMessages, n.ShardMessages)
		}
	}
	return w.Flush()
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

func perEntry(r *report) string {
	if r.HistoryEntries <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f B", r.RedisMemPerEntry)
}

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

// readReports returns the reports of the BENCH_JSON lines in path.
func readReports(path string) ([]report, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var reports []report
	for _, line := range strings.Split(string(data), "\n") {
		raw, ok := strings.CutPrefix(line, "BENCH_JSON ")
		if !ok {
			continue
		}
		var r report
		if err := json.Unmarshal([]byte(raw), &r); err != nil {
			return nil, err
		}
		reports = append(reports, r)
	}
	return reports, nil
}

// printSummary reads BENCH_JSON lines from path and prints one row per
// scenario: the table bench.sh shows at the end; then, when there are
// any, the instances of the runs with several, the ceiling sweep judged
// against p99Limit, and the storm runs.
func printSummary(path string, p99Limit time.Duration) error {
	reports, err := readReports(path)
	if err != nil {
		return err
	}
	var plain, storms []report
	for _, r := range reports {
		if r.Storm != nil {
			storms = append(storms, r)
		} else {
			plain = append(plain, r)
		}
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	if len(plain) > 0 {
		fmt.Fprintln(w, "scenario\tconns\tfail\tupgr/s\tRSS/conn\tconns/GiB\tevents\texpected\tdelivered\tlost\tdup\tleak\tp50\tp99\tp99.9\tmax\tdeliv/s\tCPU µs/deliv\tidle CPU\tRedis µs/event\tRedis B/entry\t")
	}
	for _, r := range plain {
		redisCPU := "-"
		if r.EventsPublished > 0 {
			redisCPU = fmt.Sprintf("%.2f", r.RedisCPUPerEvent)
		}
		fmt.Fprintf(w, "%s\t%d\t%d\t%.0f\t%.1f KiB\t%.0f\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t%.0f\t%.2f\t%.1f%%\t%s\t%s\t\n",
			r.Scenario, r.Connections, r.ConnectFailures, r.UpgradesPerSec, r.RSSPerConnBytes/1024, r.ConnsPerGiB,
			r.EventsPublished, r.Expected, r.Deliveries, r.Losses, r.Duplicates, r.Leaks,
			dur(r.LatP50us), dur(r.LatP99us), dur(r.LatP999us), dur(r.LatMaxus), r.DeliveriesPerSec, r.DaemonCPUPerDeliv, r.DaemonIdleCPUPercent,
			redisCPU, perEntry(&r))
		if p := r.Phase2; p != nil {
			fmt.Fprintf(w, "%s\t\t\t\t\t\t%d\t%d\t%d\t\t\t\t%s\t%s\t%s\t%s\t\t%.2f\t\t\t\t\n", r.Scenario+" tail",
				p.Events, p.Expected, p.Deliv, dur(p.P50us), dur(p.P99us), dur(p.P999us), dur(p.Maxus), p.CPUPerDeliv)
		}
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if err := printInstances(os.Stdout, plain); err != nil {
		return err
	}
	if err := printClusters(os.Stdout, plain); err != nil {
		return err
	}
	if v := ceilingOf(plain, ceilingPrefix, p99Limit); len(v.steps) > 0 {
		fmt.Println()
		if err := v.print(os.Stdout, p99Limit); err != nil {
			return err
		}
		printIdle(os.Stdout, plain)
	}
	for _, prefix := range sweepPrefixes(plain) {
		fmt.Println()
		if err := ceilingOf(plain, prefix, p99Limit).print(os.Stdout, p99Limit); err != nil {
			return err
		}
	}
	if len(storms) == 0 {
		return nil
	}
	if len(plain) > 0 {
		fmt.Println()
	}
	w = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "scenario\tresuming\tmissed\treconnected\tall live\tcatch-up p50\tp99\tlive p99 before\tduring\tlive max during\tdaemon CPU\tRedis CPU\tbench CPU\tlost\tdup\tresync\tRedis B/entry\t")
	for _, r := range storms {
		st := r.Storm
		live := fmt.Sprintf("%.2f s", st.AllLiveSeconds)
		if !st.AllLive {
			live = fmt.Sprintf("%d/%d", st.CaughtUp, st.Connected)
		}
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%.0f%%\t%.0f%%\t%.0f%%\t%d\t%d\t%d\t%s\t\n",
			r.Scenario, st.Connected, st.Missed, st.Reconnected, live, dur(st.CatchUpP50us), dur(st.CatchUpP99us),
			dur(st.Baseline.P99us), dur(st.During.P99us), dur(st.During.Maxus), st.DaemonCPUPercent, st.RedisCPUPercent, st.BenchCPUPercent,
			r.Losses, r.Duplicates, r.Controls, perEntry(&r))
	}
	return w.Flush()
}
