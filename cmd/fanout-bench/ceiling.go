package main

// The ceiling of one instance: bench.sh's ceiling scenario runs one step
// per publish rate (scenario "ceiling@<rate>", a fresh daemon each) and
// after each step asks this binary (-ceiling FILE) whether the sweep goes
// on. A step passes when every event arrived once and in order, p99 is
// within -p99-limit, and the generator kept up with the rate; the ceiling
// is the passing step with the most deliveries per second.

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// ceilingPrefix starts the scenario name of every step of the sweep.
// Other sweeps name their steps "<scenario>@<rate>" (bench.sh's
// cluster-classic and cluster-sharded ramps) and are judged alike.
const ceilingPrefix = "ceiling@"

// sweepPrefixes returns the "<scenario>@" prefixes of the steps of sweeps
// other than the ceiling's, in order of first appearance.
func sweepPrefixes(reports []report) []string {
	var prefixes []string
	seen := map[string]bool{}
	for _, r := range reports {
		name, _, ok := strings.Cut(r.Scenario, "@")
		prefix := name + "@"
		if !ok || prefix == ceilingPrefix || seen[prefix] {
			continue
		}
		seen[prefix] = true
		prefixes = append(prefixes, prefix)
	}
	return prefixes
}

// generatorShortfall is the least fraction of -rate the generator must
// publish at for a step to count: below it, the step measured the
// generator, not the daemon.
const generatorShortfall = 0.9

// ceilingStep is one step of the sweep and its verdict.
type ceilingStep struct {
	r  report
	ok bool
	// why says what failed (empty when ok).
	why string
}

// publishRate is the events per second the generator achieved.
func (r *report) publishRate() float64 {
	if r.PublishSeconds <= 0 {
		return 0
	}
	return float64(r.EventsPublished) / r.PublishSeconds
}

// judgeStep says whether a step is within the limit, and if not why.
func judgeStep(r *report, limit time.Duration) (bool, string) {
	var why []string
	if !r.Drained || r.Losses != 0 {
		why = append(why, fmt.Sprintf("%d deliveries lost", r.Losses))
	}
	if n := r.Duplicates + r.OutOfOrder + r.Leaks + r.ParseErrors + r.Disconnects + r.Controls; n != 0 {
		why = append(why, fmt.Sprintf("%d duplicates, out-of-order, leaked or unparsable frames, disconnects or controls", n))
	}
	if r.Connections < r.ConnsRequested {
		why = append(why, fmt.Sprintf("%d of %d connections", r.Connections, r.ConnsRequested))
	}
	if r.LatP99us > float64(limit.Microseconds()) {
		why = append(why, fmt.Sprintf("p99 %s over %s", dur(r.LatP99us), limit))
	}
	if r.Rate > 0 && r.publishRate() < generatorShortfall*r.Rate {
		why = append(why, fmt.Sprintf("the generator published %.0f events/s of %.0f", r.publishRate(), r.Rate))
	}
	return len(why) == 0, strings.Join(why, "; ")
}

// ceilingVerdict is the sweep judged.
type ceilingVerdict struct {
	// prefix names the sweep (ceilingPrefix, or "<scenario>@").
	prefix string
	steps  []ceilingStep
	// best is the passing step with the most deliveries per second, nil
	// when none passed; over is the first step that did not pass.
	best, over *ceilingStep
	// stop: the last step did not pass, so the sweep ends.
	stop bool
}

// ceilingOf judges the steps among reports named prefix… (ceilingPrefix
// for the ceiling sweep), in order.
func ceilingOf(reports []report, prefix string, limit time.Duration) ceilingVerdict {
	v := ceilingVerdict{prefix: prefix}
	for _, r := range reports {
		if strings.HasPrefix(r.Scenario, prefix) {
			ok, why := judgeStep(&r, limit)
			v.steps = append(v.steps, ceilingStep{r: r, ok: ok, why: why})
		}
	}
	for i := range v.steps {
		s := &v.steps[i]
		if s.ok && (v.best == nil || s.r.DeliveriesPerSec > v.best.r.DeliveriesPerSec) {
			v.best = s
		}
		if !s.ok && v.over == nil {
			v.over = s
		}
	}
	v.stop = len(v.steps) > 0 && !v.steps[len(v.steps)-1].ok
	return v
}

// print writes the steps and the verdict.
func (v ceilingVerdict) print(out io.Writer, limit time.Duration) error {
	if len(v.steps) == 0 {
		return nil
	}
	what, knob := "one instance", "CEILING_RATES"
	if v.prefix != ceilingPrefix {
		what = strings.TrimSuffix(v.prefix, "@") + fmt.Sprintf(" (%d instances)", max(1, len(v.steps[0].r.Instances)))
		knob = "the rates"
		if strings.HasPrefix(v.prefix, "cluster-") {
			knob = "CLUSTER_RATES"
		}
	}
	fmt.Fprintf(out, "== ceiling of %s: most deliveries/s with p99 under %s ==\n", what, limit)
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "step\tconns\trate\tpublished/s\tdeliv/s\tp50\tp99\tdaemon CPU\tµs/deliv\tgenerator CPU\tverdict")
	for _, s := range v.steps {
		verdict := "ok"
		if !s.ok {
			verdict = "over: " + s.why
		}
		fmt.Fprintf(w, "%s\t%d\t%.0f\t%.0f\t%.0f\t%s\t%s\t%.0f%%\t%.2f\t%.0f%%\t%s\n", s.r.Scenario, s.r.Connections, s.r.Rate,
			s.r.publishRate(), s.r.DeliveriesPerSec, dur(s.r.LatP50us), dur(s.r.LatP99us), s.r.DaemonCPUPercent,
			s.r.DaemonCPUPerDeliv, s.r.BenchCPUPercent, verdict)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	switch {
	case v.best == nil:
		fmt.Fprintf(out, "ceiling: no step passed (lower %s)\n", knob)
	default:
		fmt.Fprintf(out, "ceiling: %.0f deliveries/s (%s: %.0f events/s to %d connections, p99 %s)\n",
			v.best.r.DeliveriesPerSec, v.best.r.Scenario, v.best.r.publishRate(), v.best.r.Connections, dur(v.best.r.LatP99us))
	}
	if v.over != nil {
		fmt.Fprintf(out, "first step over: %s (%s)\n", v.over.r.Scenario, v.over.why)
	} else {
		fmt.Fprintf(out, "no step went over: the ceiling is above the highest rate tried (raise %s)\n", knob)
	}
	return nil
}

// printIdle writes the idle half of the ceiling: connections per GiB from
// the idle scenarios (S1, S1-max: RSS per connection after ping rounds).
func printIdle(out io.Writer, reports []report) {
	for _, r := range reports {
		if (r.Scenario == "S1" || r.Scenario == "S1-max") && r.ConnsPerGiB > 0 {
			fmt.Fprintf(out, "idle: %s holds %.0f connections per GiB (%.0f B of RSS per connection over %d connections, after ping rounds)\n",
				r.Scenario, r.ConnsPerGiB, r.RSSPerConnBytes, r.Connections)
		}
	}
}
