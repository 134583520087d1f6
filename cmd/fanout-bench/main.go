// Command fanout-bench is the fanout daemon's load generator: it opens many
// WebSocket connections, or SSE streams with -transport sse (sse.go),
// spread over child processes and loopback source addresses, publishes
// bench events through Redis, and reports connect rate, daemon RSS per
// connection, deliveries, losses, duplicates, cross-user leaks, end-to-end
// latency and daemon CPU per delivery: a table and one "BENCH_JSON {...}"
// line. See README.md in this directory; ./bench.sh at the
// repository root runs the standard scenarios against a fresh daemon each.
//
// Run the daemon with CONNECT_RATE_PER_IP=0 MAX_CONNECTIONS_PER_USER=0 (one
// address opens thousands of connections, many per user) and LOG_LEVEL=warn
// (info logs a line per connection).
//
// Phases, each bounded by -timeout: read the daemon's VmRSS baseline; start
// -procs children (this binary again, configured through the
// FANOUT_BENCH_CHILD environment variable), which dial their share of the
// connections and report "connected"; sleep -settle and read VmRSS again;
// publish -events (paced by -rate, or as fast as -inflight allows) and drain
// until every connection has every event of its user; optionally publish
// -then-events at -then-rate and drain again; tell the children "stop" and
// merge their summaries. With -storm-clients the run is the reconnect storm
// instead (storm.go).
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"fanout/history"
)

type options struct {
	url, redis, pids, scenario string
	admin                      string
	// redisCluster, when set, is the seeds of a Redis Cluster to publish
	// to instead of -redis (cluster.go); spublish publishes with SPUBLISH.
	redisCluster string
	spublish     bool
	// script publishes with the publish script (history.PublishSource,
	// PublishShardedSource with -spublish), as fanout publish does: the
	// event is appended and published in an envelope.
	script bool
	// ack: connections acknowledge events (read receipts).
	ack                         bool
	subprotocol, note           string
	users, connsPerUser, events int
	inflight, payload, sources  int
	procs, dialWorkers          int
	publishers, thenEvents      int
	rate, thenRate              float64
	settle, timeout             time.Duration
	jsonOnly                    bool
	// transport is "ws" (WebSocket to -url) or "sse" (GET /events, the
	// URL derived from -url: sse.go).
	transport string
	// The storm scenario (stormClients > 0); -users, -conns-per-user and
	// -rate then describe the live users.
	stormClients, stormUsers, stormMissed int
	stormDialWorkers                      int
	stormBaseline, stormAfter             time.Duration
}

func main() {
	if raw := os.Getenv(childEnv); raw != "" {
		runChild(raw)
		return
	}
	var o options
	flag.StringVar(&o.url, "url", "ws://127.0.0.1:8084/ws", "daemon WebSocket URL (without query); several instances: comma-separated, user uN connects to the (N % count)th")
	flag.StringVar(&o.admin, "admin", "", "admin base URL(s) of the instances (http://127.0.0.1:9084), comma-separated in -url's order: their /admin/stats counters are read before and after publishing")
	flag.StringVar(&o.redis, "redis", "127.0.0.1:6379", "Redis address to publish to")
	flag.StringVar(&o.redisCluster, "redis-cluster", "", "seed addresses of a Redis Cluster (comma-separated) to publish to instead of -redis; every node's CPU, egress and cluster bus messages are reported")
	flag.BoolVar(&o.spublish, "spublish", false, "publish with SPUBLISH (sharded pub/sub, PUBSUB_SHARDED=true) instead of PUBLISH")
	flag.BoolVar(&o.script, "script", false, "publish with the publish script (EVALSHA, as fanout publish does: appended to the history and published with its id) instead of PUBLISH")
	flag.IntVar(&o.users, "users", 100, "number of users (u0..uN-1)")
	flag.IntVar(&o.connsPerUser, "conns-per-user", 1, "connections per user")
	flag.IntVar(&o.events, "events", 0, "events to publish in total (round-robin over users)")
	flag.Float64Var(&o.rate, "rate", 0, "events per second; 0 = as fast as possible with at most -inflight events outstanding")
	flag.IntVar(&o.inflight, "inflight", 1000, "with -rate 0: most events published but not yet delivered everywhere")
	flag.IntVar(&o.thenEvents, "then-events", 0, "after -events are published, publish this many more at -then-rate (second latency phase)")
	flag.Float64Var(&o.thenRate, "then-rate", 10, "events per second of the -then-events phase")
	flag.IntVar(&o.payload, "payload", 256, "size of each event's JSON in bytes (padded)")
	flag.StringVar(&o.pids, "pid", "", "daemon PID(s), comma-separated, for /proc RSS and CPU readings")
	flag.IntVar(&o.sources, "sources", 1, "bind client sockets to 127.0.0.1..127.0.0.N round-robin (each gives ~28 000 ports)")
	flag.IntVar(&o.procs, "procs", 0, "child processes holding connections (0: ceil(connections / 15000))")
	flag.IntVar(&o.dialWorkers, "dial-concurrency", 128, "concurrent dials in total (split over children)")
	flag.IntVar(&o.publishers, "publishers", 8, "concurrent publishers (a user's events always go through the same one, in order)")
	flag.DurationVar(&o.settle, "settle", 2*time.Second, "wait after connecting before reading RSS")
	flag.DurationVar(&o.timeout, "timeout", 60*time.Second, "bound of each phase (connect, publish, drain)")
	flag.BoolVar(&o.jsonOnly, "json", false, "print only the BENCH_JSON line")
	flag.StringVar(&o.scenario, "scenario", "", "scenario name for the report")
	flag.StringVar(&o.note, "note", "", "a line added to the report's notes (bench.sh: the daemon's settings)")
	flag.BoolVar(&o.ack, "ack", false, "with -subprotocol fanout.v1: each connection acknowledges the last event id it received, at most once a second (read receipts, as fanout-client.js does)")
	flag.StringVar(&o.subprotocol, "subprotocol", "", `WebSocket subprotocol to offer ("fanout.v1": events arrive as {"id":…,"data":…})`)
	flag.StringVar(&o.transport, "transport", transportWS, `"ws": WebSocket connections to -url; "sse": Server-Sent Events streams, GET /events (ws://host:port/ws becomes http://host:port/events), ids from "id:" lines, "event: resync" counted as a control, heartbeats counted`)
	flag.IntVar(&o.stormClients, "storm-clients", 0, "reconnect storm: this many clients (users s0..) leave, miss -storm-missed events each and resume at once (see README)")
	flag.IntVar(&o.stormUsers, "storm-users", 0, "storm: users the storm clients watch (0: one per client)")
	flag.IntVar(&o.stormMissed, "storm-missed", 50, "storm: events published to each storm user while its clients are away")
	flag.IntVar(&o.stormDialWorkers, "storm-dial-concurrency", 1000, "storm: concurrent dials when the clients come back (split over children)")
	flag.DurationVar(&o.stormBaseline, "storm-baseline", 3*time.Second, "storm: how long live latency is measured before the storm, for comparison")
	flag.DurationVar(&o.stormAfter, "storm-after", time.Second, "storm: live events keep coming this long after every storm client is live")
	summary := flag.String("summary", "", "print a one-row-per-scenario table of the BENCH_JSON lines in this file, and exit")
	ceiling := flag.String("ceiling", "", "judge the ceiling sweep's steps (scenarios ceiling@…, or -sweep) in the BENCH_JSON lines of this file, print them, and exit: 0 when the last step passed, 3 when it did not (the sweep stops)")
	p99Limit := flag.Duration("p99-limit", 50*time.Millisecond, "with -ceiling and -summary: the p99 a step of the ceiling sweep must stay under")
	sweep := flag.String("sweep", ceilingPrefix, "with -ceiling: the steps to judge are the scenarios named with this prefix (bench.sh's cluster ramps: cluster-classic@)")
	flag.Parse()
	if *summary != "" {
		if err := printSummary(*summary, *p99Limit); err != nil {
			fmt.Fprintln(os.Stderr, "fanout-bench:", err)
			os.Exit(1)
		}
		return
	}
	if *ceiling != "" {
		reports, err := readReports(*ceiling)
		if err != nil {
			fmt.Fprintln(os.Stderr, "fanout-bench:", err)
			os.Exit(1)
		}
		v := ceilingOf(reports, *sweep, *p99Limit)
		v.print(os.Stdout, *p99Limit)
		if v.stop {
			os.Exit(3)
		}
		return
	}
	if err := o.check(); err != nil {
		fmt.Fprintln(os.Stderr, "fanout-bench:", err)
		os.Exit(2)
	}
	runner := run
	if o.stormClients > 0 {
		runner = runStorm
	}
	rep, err := runner(o)
	if rep != nil && o.note != "" {
		rep.Notes = append(rep.Notes, o.note)
	}
	if rep != nil {
		rep.print(o.jsonOnly)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "fanout-bench:", err)
		os.Exit(1)
	}
	if why := rep.failed(); why != "" {
		fmt.Fprintln(os.Stderr, "fanout-bench: FAILED:", why)
		os.Exit(1)
	}
}

// failed says why a completed run counts as a failure (exit status 1): no
// connection at all, or any delivery fault. Some connect failures alone do
// not fail the run (S1-max reports how many connections were possible).
func (r *report) failed() string {
	var why []string
	if r.Connections == 0 {
		why = append(why, "no connection succeeded")
	}
	if !r.Drained || r.Losses != 0 {
		why = append(why, fmt.Sprintf("%d deliveries lost", r.Losses))
	}
	if r.Duplicates+r.OutOfOrder+r.Leaks+r.ParseErrors != 0 {
		why = append(why, fmt.Sprintf("%d duplicates, %d out of order, %d cross-user leaks, %d unparsable frames",
			r.Duplicates, r.OutOfOrder, r.Leaks, r.ParseErrors))
	}
	if r.IDRegressions != 0 {
		why = append(why, fmt.Sprintf("%d event ids not above the previous one of their connection", r.IDRegressions))
	}
	if r.Controls != 0 {
		why = append(why, fmt.Sprintf("%d control messages (%s)", r.Controls, strings.Join(r.ControlSamples, " ")))
	}
	if r.Disconnects != 0 {
		why = append(why, fmt.Sprintf("%d connections closed by the daemon during the run", r.Disconnects))
	}
	if st := r.Storm; st != nil {
		why = append(why, st.failed()...)
	}
	return strings.Join(why, "; ")
}

func (o *options) check() error {
	if o.transport == "" {
		o.transport = transportWS
	}
	switch {
	case o.users < 1 || o.connsPerUser < 1:
		return errors.New("-users and -conns-per-user must be at least 1")
	case o.events < 0 || o.thenEvents < 0 || o.rate < 0 || o.thenRate <= 0:
		return errors.New("-events, -then-events, -rate must be >= 0 and -then-rate > 0")
	case o.inflight < 1 || o.payload < 0:
		return errors.New("-inflight must be >= 1, -payload >= 0")
	case o.sources < 1 || o.sources > 254:
		return errors.New("-sources must be 1..254")
	case o.procs < 0 || o.dialWorkers < 1 || o.publishers < 1:
		return errors.New("-procs >= 0, -dial-concurrency and -publishers >= 1")
	case o.timeout <= 0:
		return errors.New("-timeout must be positive")
	case len(o.urls()) == 0:
		return errors.New("-url: no URL")
	case o.admin != "" && len(o.admins()) != len(o.urls()):
		return fmt.Errorf("-admin: %d admin URLs for %d -url instances (one each, same order)", len(o.admins()), len(o.urls()))
	case o.stormClients > 0 && len(o.urls()) > 1:
		return errors.New("the storm scenario runs against one instance (one -url)")
	case o.stormClients > 0 && (o.redisCluster != "" || o.spublish || o.script):
		return errors.New("the storm scenario runs on one Redis (-redis) with PUBLISH: no -redis-cluster, no -spublish, no -script")
	case o.stormClients < 0 || o.stormUsers < 0 || o.stormMissed < 1 || o.stormDialWorkers < 1:
		return errors.New("-storm-clients and -storm-users must be >= 0, -storm-missed and -storm-dial-concurrency >= 1")
	case o.transport != transportWS && o.transport != transportSSE:
		return fmt.Errorf("-transport %q: want ws or sse", o.transport)
	case o.transport == transportSSE && o.stormClients > 0:
		return errors.New("-transport sse does not run the reconnect storm (-storm-clients): the storm's clients are WebSockets (fanout.v1)")
	case o.transport == transportSSE && o.subprotocol != "":
		return errors.New("-subprotocol is a WebSocket option: SSE streams carry their ids in id: lines, with no subprotocol")
	}
	if _, err := o.connURLs(); err != nil {
		return err
	}
	if o.stormClients > 0 {
		if o.stormUsers == 0 || o.stormUsers > o.stormClients {
			o.stormUsers = o.stormClients
		}
		if o.rate <= 0 {
			return errors.New("the storm scenario needs -rate > 0 (live events per second)")
		}
		if o.subprotocol == "" {
			o.subprotocol = "fanout.v1" // resuming needs the ids
		}
	}
	total := o.users * o.connsPerUser
	if o.procs == 0 {
		o.procs = (total + 14999) / 15000
	}
	if o.procs > total {
		o.procs = total
	}
	return nil
}

// connURLs is what the children dial, one per instance: -url's, or with
// -transport sse the /events URLs derived from them.
func (o options) connURLs() ([]string, error) {
	urls := o.urls()
	if o.transport != transportSSE {
		return urls, nil
	}
	out := make([]string, len(urls))
	for i, u := range urls {
		var err error
		if out[i], err = sseURL(u); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// report is everything measured; JSON field names are the BENCH_JSON keys.
type report struct {
	Scenario          string   `json:"scenario"`
	Transport         string   `json:"transport,omitempty"` // "ws" or "sse" (-transport)
	Users             int      `json:"users"`
	ConnsPerUser      int      `json:"conns_per_user"`
	Procs             int      `json:"procs"`
	Sources           int      `json:"sources"`
	ConnsRequested    int      `json:"conns_requested"`
	Connections       int      `json:"connections"`
	ConnectFailures   int      `json:"connect_failures"`
	ConnectErrors     []string `json:"connect_errors,omitempty"`
	ConnectSeconds    float64  `json:"connect_seconds"`
	UpgradesPerSec    float64  `json:"upgrades_per_sec"`
	RSSBaseBytes      int64    `json:"rss_base_bytes"`
	RSSConnectedBytes int64    `json:"rss_connected_bytes"`
	RSSPerConnBytes   float64  `json:"rss_per_conn_bytes"`
	RSSEndBytes       int64    `json:"rss_end_bytes"`
	Payload           int      `json:"payload_bytes"`
	Rate              float64  `json:"rate"`
	Inflight          int      `json:"inflight"`
	EventsPublished   int64    `json:"events_published"`
	PublishErrors     int64    `json:"publish_errors"`
	PublishSeconds    float64  `json:"publish_seconds"`
	Expected          int64    `json:"expected_deliveries"`
	Deliveries        int64    `json:"deliveries"`
	Losses            int64    `json:"losses"`
	Duplicates        int64    `json:"duplicates"`
	OutOfOrder        int64    `json:"out_of_order"`
	Leaks             int64    `json:"leaks"`
	ParseErrors       int64    `json:"parse_errors"`
	Disconnects       int64    `json:"disconnects"`
	Drained           bool     `json:"drained"`
	LatP50us          float64  `json:"lat_p50_us"`
	LatP99us          float64  `json:"lat_p99_us"`
	LatP999us         float64  `json:"lat_p999_us"`
	LatMaxus          float64  `json:"lat_max_us"`
	Phase2            *latency `json:"phase2,omitempty"`
	WindowSeconds     float64  `json:"window_seconds"`
	DeliveriesPerSec  float64  `json:"deliveries_per_sec"`
	DaemonCPUus       float64  `json:"daemon_cpu_us"`
	DaemonCPUPerDeliv float64  `json:"daemon_cpu_us_per_delivery"`
	DaemonCPUPercent  float64  `json:"daemon_cpu_percent"`
	BenchCPUPercent   float64  `json:"bench_cpu_percent"`
	// DaemonIdleCPUPercent is the daemon's CPU during -settle (connections
	// open, no events): the background cost included in the per-delivery
	// figure. 10 ms tick resolution.
	DaemonIdleCPUPercent float64 `json:"daemon_idle_cpu_percent"`

	// Subprotocol is the one the clients offered ("" or "fanout.v1").
	Subprotocol string `json:"subprotocol,omitempty"`
	// EventsWithID counts deliveries that carried an event id (fanout.v1
	// with history on); IDRegressions those whose id was not above the
	// connection's previous one. Controls counts control messages
	// (resync), with a few of them verbatim.
	EventsWithID   int64    `json:"events_with_id"`
	IDRegressions  int64    `json:"id_regressions"`
	Controls       int64    `json:"controls"`
	ControlSamples []string `json:"control_samples,omitempty"`

	// SSE (-transport sse): the streams that had received at least one
	// heartbeat (a comment line, every 15 s from the daemon) when RSS was
	// read after -settle, and the heartbeats received by then; and the
	// heartbeats received in all, by the end of the run.
	SSEStreamsBeatAtRSS int64 `json:"sse_streams_heartbeat_at_rss,omitempty"`
	SSEHeartbeatsAtRSS  int64 `json:"sse_heartbeats_at_rss,omitempty"`
	SSEHeartbeats       int64 `json:"sse_heartbeats,omitempty"`

	// Redis's CPU (INFO cpu: used_cpu_sys + used_cpu_user, µs resolution)
	// over the same window as the daemon's, per event published in it.
	// It includes the PUBLISH commands themselves and, with history on,
	// the daemon's recording.
	RedisCPUus       float64 `json:"redis_cpu_us"`
	RedisCPUPerEvent float64 `json:"redis_cpu_us_per_event"`
	// Redis's CPU and commands (INFO cpu, INFO commandstats: scripts'
	// commands included) from before the first dial to the end of the
	// settle (the connections arriving, and what the daemon writes for
	// them: presence), and the same per second over the second half of the
	// settle (connections open, no events). Single Redis only; the bench's own
	// INFO reads are a few commands.
	// Acks counts the acknowledgements the connections sent (-ack).
	Acks                    int64   `json:"acks,omitempty"`
	RedisConnectCPUus       float64 `json:"redis_connect_cpu_us"`
	RedisConnectCommands    int64   `json:"redis_connect_commands"`
	RedisIdleCPUPercent     float64 `json:"redis_idle_cpu_percent"`
	RedisIdleCommandsPerSec float64 `json:"redis_idle_commands_per_sec"`
	// Redis memory (INFO memory used_memory) before the first publish and
	// after the last delivery, and the history entries added in between
	// (XLEN over the users' fanout:history:{u} keys): memory per retained
	// event, key overhead included.
	RedisMemBeforeBytes int64        `json:"redis_mem_before_bytes"`
	RedisMemAfterBytes  int64        `json:"redis_mem_after_bytes"`
	HistoryEntries      int64        `json:"history_entries"`
	HistoryKeys         int64        `json:"history_keys"`
	RedisMemPerEntry    float64      `json:"redis_mem_per_entry_bytes"`
	Storm               *stormResult `json:"storm,omitempty"`

	// With several instances (-url a,b,c): what each one received and
	// delivered over the publish window (instances.go); RedisPubSub is
	// Redis's pub/sub clients after the connect phase.
	Instances   []instanceResult `json:"instances,omitempty"`
	RedisPubSub *pubsubClients   `json:"redis_pubsub,omitempty"`
	// Redis's egress (INFO stats total_net_output_bytes) from before the
	// first publish to after the drain: what it sent to every client,
	// the instances' pub/sub messages, history reads and replies
	// (PUBLISH's, to the generator) included.
	RedisEgressBytes       int64   `json:"redis_egress_bytes,omitempty"`
	RedisEgressBytesPerSec float64 `json:"redis_egress_bytes_per_sec,omitempty"`
	RedisEgressPerEvent    float64 `json:"redis_egress_bytes_per_event,omitempty"`
	// Cluster is every cluster node's share of the window
	// (-redis-cluster): then RedisCPUus and RedisEgressBytes are summed
	// over the nodes (egress: to clients, not to replicas nor the bus).
	Cluster *clusterResult `json:"cluster,omitempty"`
	// ConnsPerGiB is 1 GiB over RSSPerConnBytes: idle connections one GiB
	// of daemon memory holds, at the measured cost per connection.
	ConnsPerGiB float64 `json:"conns_per_gib,omitempty"`

	Notes []string `json:"notes,omitempty"`
}

// latency of a group of events reported apart: the -then-events phase, or
// the storm's live events before and during the storm.
type latency struct {
	Events        int64   `json:"events"`
	Expected      int64   `json:"expected_deliveries"`
	Deliv         uint64  `json:"deliveries"`
	WindowSeconds float64 `json:"window_seconds"`
	DaemonCPUus   float64 `json:"daemon_cpu_us"`
	CPUPerDeliv   float64 `json:"daemon_cpu_us_per_delivery"`
	P50us         float64 `json:"lat_p50_us"`
	P99us         float64 `json:"lat_p99_us"`
	P999us        float64 `json:"lat_p999_us"`
	Maxus         float64 `json:"lat_max_us"`
}

// connsPerGiB is how many connections of rssPerConn bytes fit in 1 GiB
// (0 when unmeasured).
func connsPerGiB(rssPerConn float64) float64 {
	if rssPerConn <= 0 {
		return 0
	}
	return float64(1<<30) / rssPerConn
}

func us(ns int64) float64 { return float64(ns) / 1e3 }

// child is the parent's handle on one child process.
type child struct {
	cmd          *exec.Cmd
	stdin        io.WriteCloser
	connected    chan childMsg
	disconnected chan childMsg
	reconnected  chan childMsg
	summary      chan childMsg
	progress     atomic.Int64
	caughtUp     atomic.Int64
	// SSE heartbeats received and streams with one, as last reported.
	heartbeats, beatStreams atomic.Int64
}

// tracker sums the progress of a group of children and wakes whoever
// waits on it (publishers, drains).
type tracker struct {
	mu        sync.Mutex
	cond      *sync.Cond
	delivered atomic.Int64
	caughtUp  atomic.Int64
	children  []*child
}

func newTracker() *tracker {
	t := &tracker{}
	t.cond = sync.NewCond(&t.mu)
	return t
}

func (t *tracker) update() {
	var sum, cu int64
	for _, c := range t.children {
		sum += c.progress.Load()
		cu += c.caughtUp.Load()
	}
	t.delivered.Store(sum)
	t.caughtUp.Store(cu)
	t.mu.Lock()
	t.cond.Broadcast()
	t.mu.Unlock()
}

// waitFor waits until done() holds (re-checked on every progress report
// and every 20 ms) or until deadline; it returns done().
func (t *tracker) waitFor(done func() bool, deadline time.Time) bool {
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				t.mu.Lock()
				t.cond.Broadcast()
				t.mu.Unlock()
			case <-stop:
				return
			}
		}
	}()
	t.mu.Lock()
	for !done() && time.Now().Before(deadline) {
		t.cond.Wait()
	}
	t.mu.Unlock()
	return done()
}

// spawn starts a child process with cfg, reporting to tr.
func spawn(self string, cfg childConfig, tr *tracker) (*child, error) {
	raw, _ := json.Marshal(cfg)
	c := &child{cmd: exec.Command(self), connected: make(chan childMsg, 1), summary: make(chan childMsg, 1),
		disconnected: make(chan childMsg, 1), reconnected: make(chan childMsg, 1)}
	c.cmd.Env = append(os.Environ(), childEnv+"="+string(raw))
	c.cmd.Stderr = os.Stderr
	c.stdin, _ = c.cmd.StdinPipe()
	out, _ := c.cmd.StdoutPipe()
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start child: %w", err)
	}
	tr.children = append(tr.children, c)
	go readChild(c, out, tr)
	return c, nil
}

// reap closes the children's stdin (which makes them exit) and waits for
// them, killing any that takes more than 10 s.
func reap(children []*child) {
	for _, c := range children {
		c.stdin.Close()
		done := make(chan struct{})
		go func() { c.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			c.cmd.Process.Kill()
			<-done
		}
	}
}

// command writes one command line to each child.
func command(children []*child, cmd string) {
	for _, c := range children {
		fmt.Fprintln(c.stdin, cmd)
	}
}

// maxLife bounds a child's life: the phases of the run and a minute more.
func (o options) maxLife() time.Duration {
	d := 4*o.timeout + o.settle + time.Minute
	if o.rate > 0 {
		d += time.Duration(float64(o.events)/o.rate) * time.Second
	}
	d += time.Duration(float64(o.thenEvents)/o.thenRate) * time.Second
	if o.stormClients > 0 {
		d += 3*o.timeout + o.stormBaseline + o.stormAfter
	}
	return d
}

func run(o options) (*report, error) {
	total := o.users * o.connsPerUser
	rep := &report{Scenario: o.scenario, Transport: o.transport, Users: o.users, ConnsPerUser: o.connsPerUser, Procs: o.procs,
		Sources: o.sources, ConnsRequested: total, Payload: o.payload, Rate: o.rate, Inflight: o.inflight,
		Subprotocol: o.subprotocol}
	pids, err := parsePIDs(o.pids)
	if err != nil {
		return nil, err
	}
	if len(pids) == 0 {
		rep.Notes = append(rep.Notes, "no -pid: daemon RSS and CPU not measured")
	}
	// The baseline is read before anything connects.
	rep.RSSBaseBytes = rss(pids)

	// pub publishes and reads the history; single is the one Redis
	// (nil on a cluster, whose nodes are read one by one).
	var pub redis.UniversalClient
	var single *redis.Client
	var cluster *redisCluster
	memory := func() int64 { return redisMemory(single) }
	if o.redisCluster != "" {
		cluster, err = dialCluster(splitList(o.redisCluster), o.publishers+2)
		if err != nil {
			return nil, err
		}
		defer cluster.Close()
		pub, memory = cluster.client, cluster.memory
	} else {
		single = redis.NewClient(&redis.Options{Addr: o.redis, PoolSize: o.publishers + 2})
		defer single.Close()
		pub = single
		if o.events+o.thenEvents > 0 {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := single.Ping(ctx).Err()
			cancel()
			if err != nil {
				return nil, fmt.Errorf("redis %s: %w", o.redis, err)
			}
		}
	}

	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	urls, err := o.connURLs()
	if err != nil {
		return nil, err
	}
	tr := newTracker()
	defer func() { reap(tr.children) }()
	workers := max(1, o.dialWorkers/o.procs)
	rcpuStart, rcmdStart := redisCPU(single), redisCommands(single)
	start := time.Now()
	for i := 0; i < o.procs; i++ {
		cfg := childConfig{URLs: urls, Transport: o.transport, Subprotocol: o.subprotocol, Ack: o.ack, UserPrefix: "u", Users: o.users, Sources: o.sources,
			Lo: total * i / o.procs, Hi: total * (i + 1) / o.procs,
			DialWorkers: workers, Timeout: o.timeout, MaxLife: o.maxLife()}
		if _, err := spawn(self, cfg, tr); err != nil {
			return nil, err
		}
	}

	// Connect phase. Children bound their dials by -timeout; the parent
	// allows a little more for them to report.
	connectsPerUser := make([]int64, o.users)
	for i := 0; i < total; i++ {
		connectsPerUser[i%o.users]++
	}
	deadline := time.After(o.timeout + 15*time.Second)
	for _, c := range tr.children {
		select {
		case m := <-c.connected:
			rep.Connections += m.OK
			rep.ConnectFailures += m.Fail
			for _, gi := range m.Failed {
				connectsPerUser[gi%o.users]--
			}
			for _, e := range m.Errs {
				if len(rep.ConnectErrors) < 5 {
					rep.ConnectErrors = append(rep.ConnectErrors, e)
				}
			}
		case <-deadline:
			return rep, errors.New("connect phase: a child did not report in time")
		}
	}
	rep.ConnectSeconds = time.Since(start).Seconds()
	rep.UpgradesPerSec = float64(rep.Connections) / rep.ConnectSeconds

	idle0, idleT0 := cpuTicksAll(pids), time.Now()
	// Redis idles over the second half of the settle, once what the
	// connections caused (presence's writes, a second behind) is done.
	time.Sleep(o.settle / 2)
	rcpuIdle, rcmdIdle, redisIdleT0 := redisCPU(single), redisCommands(single), time.Now()
	time.Sleep(o.settle - o.settle/2)
	if rcpuEnd, rcmdEnd := redisCPU(single), redisCommands(single); rcpuStart >= 0 && rcpuIdle >= 0 && rcpuEnd >= 0 && rcmdStart >= 0 && rcmdIdle >= 0 && rcmdEnd >= 0 {
		secs := time.Since(redisIdleT0).Seconds()
		rep.RedisConnectCPUus, rep.RedisConnectCommands = rcpuEnd-rcpuStart, rcmdEnd-rcmdStart
		rep.RedisIdleCPUPercent = (rcpuEnd - rcpuIdle) / 1e4 / secs
		rep.RedisIdleCommandsPerSec = float64(rcmdEnd-rcmdIdle) / secs
	}
	rep.RSSConnectedBytes = rss(pids)
	if o.transport == transportSSE {
		rep.sseHeartbeatsAtRSS(tr.children, o.settle)
	}
	if len(pids) > 0 && o.settle > 0 {
		rep.DaemonIdleCPUPercent = float64(cpuTicksAll(pids)-idle0) * 1e6 / clkTck / 1e4 / time.Since(idleT0).Seconds()
	}
	if len(pids) > 0 && rep.Connections > 0 {
		rep.RSSPerConnBytes = float64(rep.RSSConnectedBytes-rep.RSSBaseBytes) / float64(rep.Connections)
		rep.ConnsPerGiB = connsPerGiB(rep.RSSPerConnBytes)
	}
	several := len(o.urls()) > 1 || o.admin != ""
	switch {
	case cluster != nil:
		rep.RedisPubSub = cluster.pubsub()
	case several:
		rep.RedisPubSub = redisPubSub(single)
	}

	benchCPU0 := benchTicks(tr.children)
	if o.events+o.thenEvents > 0 {
		users := userNames("u", o.users)
		keys := historyKeys(o.spublish)
		mem0 := memory()
		entries0, _ := historyEntries(pub, users, keys)
		p := &publisher{o: o, rdb: pub, single: single, tr: tr, connsOf: connectsPerUser}
		var probe *instanceProbe
		if several {
			probe = newInstanceProbe(o, pids)
			probe.start()
		}
		var nodes0 []nodeSample
		net0, netT0 := int64(-1), time.Now()
		if cluster != nil {
			nodes0 = cluster.sample()
		} else {
			net0 = redisNetOut(single)
		}
		p.run(rep, pids)
		net1 := int64(-1)
		if cluster != nil {
			rep.Cluster = cluster.delta(nodes0, cluster.sample(), rep.EventsPublished, p.command())
			var cpu float64
			cpu, net1 = rep.Cluster.totals()
			net0 = 0
			rep.RedisCPUus = cpu
			if rep.EventsPublished > 0 {
				rep.RedisCPUPerEvent = cpu / float64(rep.EventsPublished)
			}
		} else {
			net1 = redisNetOut(single)
		}
		if net0 >= 0 && net1 >= net0 {
			rep.RedisEgressBytes = net1 - net0
			rep.RedisEgressBytesPerSec = float64(rep.RedisEgressBytes) / time.Since(netT0).Seconds()
			if rep.EventsPublished > 0 {
				rep.RedisEgressPerEvent = float64(rep.RedisEgressBytes) / float64(rep.EventsPublished)
			}
		}
		if probe != nil {
			rep.Instances = probe.finish(o.users, connectsPerUser, rep.EventsPublished)
		}
		rep.measureHistory(pub, memory, users, keys, mem0, entries0)
	}

	// Collect the summaries.
	command(tr.children, "stop")
	hist, lastRecv, childTicks, err := collect(tr.children, rep)
	if err != nil {
		return rep, err
	}
	benchTicksEnd := cpuTicks(os.Getpid()) + childTicks
	rep.Losses = rep.Expected - rep.Deliveries
	rep.RSSEndBytes = rss(pids)
	// The headline latency is the first phase's (all of it without
	// -then-events); the paced tail has its own in Phase2.
	all := &hist[0]
	rep.LatP50us, rep.LatP99us = us(all.percentile(0.50)), us(all.percentile(0.99))
	rep.LatP999us, rep.LatMaxus = us(all.percentile(0.999)), us(all.max)
	if p := rep.Phase2; p != nil {
		h := &hist[1]
		p.Deliv, p.P50us, p.P99us = h.total, us(h.percentile(0.5)), us(h.percentile(0.99))
		p.P999us, p.Maxus = us(h.percentile(0.999)), us(h.max)
		if h.total > 0 && len(pids) > 0 {
			p.CPUPerDeliv = p.DaemonCPUus / float64(h.total)
		}
	}
	// The (first phase's) window runs from the first publish to its last
	// delivery seen, when that is earlier than the drain was noticed.
	if rep.WindowSeconds > 0 && lastRecv[0] > 0 {
		if end := float64(lastRecv[0]-windowStartNs.Load()) / 1e9; end > 0 && end < rep.WindowSeconds {
			rep.WindowSeconds = end
		}
	}
	if rep.WindowSeconds > 0 {
		rep.DeliveriesPerSec = float64(hist[0].total) / rep.WindowSeconds
		rep.DaemonCPUPercent = rep.DaemonCPUus / 1e4 / rep.WindowSeconds
	}
	if start := windowStartNs.Load(); start > 0 {
		// The generator's CPU over everything from the first publish on.
		secs := float64(time.Now().UnixNano()-start) / 1e9
		rep.BenchCPUPercent = float64(benchTicksEnd-benchCPU0) * 1e6 / clkTck / 1e4 / secs
	}
	if hist[0].total > 0 && len(pids) > 0 {
		rep.DaemonCPUPerDeliv = rep.DaemonCPUus / float64(hist[0].total)
	}
	if o.events+o.thenEvents == 0 {
		rep.Drained = true // nothing to deliver
	}
	return rep, nil
}

// sseHeartbeatsAtRSS records the SSE heartbeats the children had
// reported (10 ms progress) when RSS was read. After a settle meant to
// cover the daemon's heartbeat (15 s), a note says whether every stream
// had received one by then.
func (r *report) sseHeartbeatsAtRSS(children []*child, settle time.Duration) {
	for _, c := range children {
		r.SSEHeartbeatsAtRSS += c.heartbeats.Load()
		r.SSEStreamsBeatAtRSS += c.beatStreams.Load()
	}
	if r.Connections == 0 || settle < sseHeartbeatEvery {
		return
	}
	if r.SSEStreamsBeatAtRSS >= int64(r.Connections) {
		r.Notes = append(r.Notes, fmt.Sprintf("SSE: RSS read after every stream had received a heartbeat (%d of %d streams, %d heartbeats, after a %s settle)",
			r.SSEStreamsBeatAtRSS, r.Connections, r.SSEHeartbeatsAtRSS, settle))
	} else {
		r.Notes = append(r.Notes, fmt.Sprintf("SSE: RSS read when only %d of %d streams had received a heartbeat (%d heartbeats, after a %s settle; the daemon sends one every %s)",
			r.SSEStreamsBeatAtRSS, r.Connections, r.SSEHeartbeatsAtRSS, settle, sseHeartbeatEvery))
	}
}

// windowStartNs is the wall clock of the first publish.
var windowStartNs atomic.Int64

// collect waits for the children's summaries (after "stop"), adds their
// counters to rep and returns their merged histograms, the last receipt
// per phase and the children's CPU ticks.
func collect(children []*child, rep *report) (hist [numHists]histogram, lastRecv [2]int64, ticks int64, err error) {
	deadline := time.After(15 * time.Second)
	for _, c := range children {
		select {
		case m := <-c.summary:
			rep.Deliveries += m.D
			rep.Duplicates += m.Dups
			rep.OutOfOrder += m.OOO
			rep.Leaks += m.Leaks
			rep.ParseErrors += m.ParseErrs
			rep.Disconnects += m.Disconnects
			rep.EventsWithID += m.WithID
			rep.IDRegressions += m.IDRegress
			rep.Controls += m.Controls
			rep.SSEHeartbeats += m.HB
			rep.Acks += m.Acks
			for _, t := range m.ControlText {
				if len(rep.ControlSamples) < 3 {
					rep.ControlSamples = append(rep.ControlSamples, t)
				}
			}
			lastRecv[0] = max(lastRecv[0], m.LastRecvNs[0])
			lastRecv[1] = max(lastRecv[1], m.LastRecvNs[1])
			ticks += m.CPUTicks
			for h := range hist {
				hist[h].merge(m.Hist[h], m.HistMax[h])
			}
		case <-deadline:
			return hist, lastRecv, ticks, errors.New("summary: a child did not report in time")
		}
	}
	return hist, lastRecv, ticks, nil
}

func readChild(c *child, out io.Reader, tr *tracker) {
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 32<<20)
	for sc.Scan() {
		var m childMsg
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			fmt.Fprintln(os.Stderr, "fanout-bench: bad child line:", err)
			continue
		}
		switch m.T {
		case "c":
			c.connected <- m
		case "dc":
			c.disconnected <- m
		case "rc":
			c.reconnected <- m
		case "p":
			c.heartbeats.Store(m.HB)
			c.beatStreams.Store(m.HS)
			c.progress.Store(m.D)
			c.caughtUp.Store(m.CU)
			tr.update()
		case "s":
			c.progress.Store(m.D)
			c.summary <- m
		}
	}
}

// publisher publishes the events. Event k (0-based, over both phases) is
// for user k % users with sequence number k / users + 1, so each user's
// sequence numbers increase; worker w publishes the users u with
// u % publishers == w, one at a time, so each user's events are published
// in order.
type publisher struct {
	o options
	// rdb publishes (a cluster client with -redis-cluster); single is
	// the one Redis whose CPU is read around the window (nil on a
	// cluster, whose nodes the caller reads).
	rdb       redis.UniversalClient
	single    *redis.Client
	tr        *tracker
	connsOf   []int64 // connected connections per user
	prefix    []int64 // prefix[u] = sum of connsOf[0:u]
	totalConn int64
	expected  atomic.Int64 // deliveries expected for the events published so far
	published atomic.Int64
	errs      atomic.Int64
}

// expectedBefore is the deliveries expected for events 0..k-1.
func (p *publisher) expectedBefore(k int) int64 {
	u := len(p.connsOf)
	return int64(k/u)*p.totalConn + p.prefix[k%u]
}

func (p *publisher) run(rep *report, pids []int) {
	p.prefix = make([]int64, len(p.connsOf)+1)
	for u, n := range p.connsOf {
		p.prefix[u+1] = p.prefix[u] + n
	}
	p.totalConn = p.prefix[len(p.connsOf)]
	// Bounded in flight: outstanding deliveries < inflight * average fan-out.
	window := int64(float64(p.o.inflight) * float64(p.totalConn) / float64(len(p.connsOf)))
	window = max(window, 1)

	// Wake gated publishers now and then so deadlines are noticed.
	stopTick := make(chan struct{})
	go func() {
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				p.tr.update()
			case <-stopTick:
				return
			}
		}
	}()
	defer close(stopTick)

	if p.o.script {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := history.Load(ctx, p.rdb)
		cancel()
		if err != nil {
			rep.Notes = append(rep.Notes, "could not load the publish script: "+err.Error())
		}
		rep.Notes = append(rep.Notes, "published with the publish script (EVALSHA, as fanout publish): each event appended and published in an envelope with its id")
	}
	cpu0, rcpu0 := cpuTicksAll(pids), redisCPU(p.single)
	t0 := time.Now()
	windowStartNs.Store(t0.UnixNano())
	pubDeadline := t0.Add(p.o.timeout)
	if p.o.rate > 0 {
		pubDeadline = pubDeadline.Add(time.Duration(float64(p.o.events) / p.o.rate * float64(time.Second)))
	}
	p.phase(0, p.o.events, p.o.rate, window, 1, pubDeadline)
	rep.PublishSeconds = time.Since(t0).Seconds()
	rep.Drained = p.drain(p.expected.Load(), rep)
	rep.WindowSeconds = time.Since(t0).Seconds()
	cpu1 := cpuTicksAll(pids)
	rep.DaemonCPUus = float64(cpu1-cpu0) * 1e6 / clkTck
	if rcpu0 >= 0 {
		if rcpu1 := redisCPU(p.single); rcpu1 >= 0 {
			rep.RedisCPUus = rcpu1 - rcpu0
			if n := p.published.Load(); n > 0 {
				rep.RedisCPUPerEvent = rep.RedisCPUus / float64(n)
			}
		}
	}

	if p.o.thenEvents > 0 {
		// The paced tail starts once the burst is drained (or timed out), so
		// its latency and CPU are its own.
		exp0 := p.expected.Load()
		t1 := time.Now()
		d := t1.Add(p.o.timeout + time.Duration(float64(p.o.thenEvents)/p.o.thenRate*float64(time.Second)))
		p.phase(p.o.events, p.o.events+p.o.thenEvents, p.o.thenRate, window, 2, d)
		drained := p.drain(p.expected.Load(), rep)
		rep.Drained = rep.Drained && drained
		rep.Phase2 = &latency{Events: int64(p.o.thenEvents), Expected: p.expected.Load() - exp0,
			WindowSeconds: time.Since(t1).Seconds(),
			DaemonCPUus:   float64(cpuTicksAll(pids)-cpu1) * 1e6 / clkTck}
	}
	rep.EventsPublished = p.published.Load()
	rep.PublishErrors = p.errs.Load()
	if rep.PublishErrors > 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("%d %s errors", rep.PublishErrors, p.command()))
	}
	if rep.EventsPublished < int64(p.o.events+p.o.thenEvents) {
		rep.Notes = append(rep.Notes, "publish phase hit -timeout before all events were published")
	}
	rep.Expected = p.expected.Load()
}

// drain waits until the children have reported want deliveries in total
// (every connection got every event of its user), or -timeout.
func (p *publisher) drain(want int64, rep *report) bool {
	deadline := time.Now().Add(p.o.timeout)
	p.tr.mu.Lock()
	for p.tr.delivered.Load() < want && time.Now().Before(deadline) {
		p.tr.cond.Wait()
	}
	p.tr.mu.Unlock()
	ok := p.tr.delivered.Load() >= want
	if !ok {
		rep.Notes = append(rep.Notes, "drain hit -timeout: some deliveries never arrived")
	}
	return ok
}

// phase publishes events [lo, hi) at rate (events/s), or as fast as the
// in-flight window allows when rate is 0.
func (p *publisher) phase(lo, hi int, rate float64, window int64, ph int, deadline time.Time) {
	users := len(p.connsOf)
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < p.o.publishers && w < users; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			// As fast as possible, the events the in-flight window allows
			// go out pipelined, up to pipelineMax per round trip: one
			// PUBLISH round trip per event made the generator, not the
			// daemon, the limit. Paced events go one by one.
			pipe := p.rdb.Pipeline()
			var pending []int // the users of the events in pipe
			flush := func() {
				if len(pending) == 0 {
					return
				}
				cmds, _ := pipe.Exec(ctx)
				for i, cmd := range cmds {
					if cmd.Err() != nil {
						p.errs.Add(1)
						continue
					}
					p.published.Add(1)
					p.expected.Add(p.connsOf[pending[i]])
				}
				pending = pending[:0]
			}
			defer flush()
			for k := lo; k < hi; k++ {
				u := k % users
				if u%p.o.publishers != w {
					continue
				}
				if rate > 0 {
					at := start.Add(time.Duration(float64(k-lo) / rate * float64(time.Second)))
					if at.After(deadline) {
						return
					}
					time.Sleep(time.Until(at))
				} else if need := p.expectedBefore(k) - window; p.tr.delivered.Load() <= need {
					// Waiting for deliveries: what is pipelined goes first.
					flush()
					p.tr.mu.Lock()
					for p.tr.delivered.Load() <= need && time.Now().Before(deadline) {
						p.tr.cond.Wait()
					}
					p.tr.mu.Unlock()
				}
				if time.Now().After(deadline) {
					return
				}
				user := "u" + strconv.Itoa(u)
				event := appendEvent(make([]byte, 0, p.o.payload+128), user, int64(k/users+1), time.Now().UnixNano(), ph, p.o.payload)
				switch {
				case p.o.script:
					p.publishScript().EvalSha(ctx, pipe, []string{p.layout().Key(user)},
						history.Channel(user), event, history.DefaultMaxLen, history.DefaultTTL.Milliseconds())
				case p.o.spublish:
					pipe.SPublish(ctx, history.Channel(user), event)
				default:
					pipe.Publish(ctx, history.Channel(user), event)
				}
				pending = append(pending, u)
				if rate > 0 || len(pending) >= pipelineMax {
					flush()
				}
			}
		}()
	}
	wg.Wait()
}

// command is the publishing command's name.
func (p *publisher) command() string {
	switch {
	case p.o.script:
		return "EVALSHA (publish script)"
	case p.o.spublish:
		return "SPUBLISH"
	}
	return "PUBLISH"
}

// layout is the history layout the publishers write (-spublish: sharded).
func (p *publisher) layout() history.Layout { return history.Layout{Sharded: p.o.spublish} }

// The publish scripts of -script, loaded on the server by run.
var (
	classicPublishScript = redis.NewScript(history.PublishSource)
	shardedPublishScript = redis.NewScript(history.PublishShardedSource)
)

// publishScript is the publish script of -script.
func (p *publisher) publishScript() *redis.Script {
	if p.o.spublish {
		return shardedPublishScript
	}
	return classicPublishScript
}

// pipelineMax is the most PUBLISH commands sent in one round trip.
const pipelineMax = 64

// clkTck is sysconf(_SC_CLK_TCK): /proc/PID/stat counts CPU time in clock
// ticks, which is 100 per second on Linux (fixed USER_HZ on every
// architecture Go supports), so it is hard-coded rather than read via cgo.
const clkTck = 100.0

func parsePIDs(s string) ([]int, error) {
	var pids []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("-pid: %q is not a PID", f)
		}
		if _, err := os.Stat("/proc/" + f); err != nil {
			return nil, fmt.Errorf("-pid: %d: %w", n, err)
		}
		pids = append(pids, n)
	}
	return pids, nil
}

// rss sums VmRSS (bytes) of pids from /proc/PID/status.
func rss(pids []int) int64 {
	var sum int64
	for _, pid := range pids {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				sum += kb << 10
			}
		}
	}
	return sum
}

// cpuTicks returns utime+stime of pid (fields 14 and 15 of /proc/PID/stat).
func cpuTicks(pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')') // the command name may hold spaces
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3 (state)
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return ut + st
}

func cpuTicksAll(pids []int) int64 {
	var sum int64
	for _, pid := range pids {
		sum += cpuTicks(pid)
	}
	return sum
}

func benchTicks(children []*child) int64 {
	sum := cpuTicks(os.Getpid())
	for _, c := range children {
		sum += cpuTicks(c.cmd.Process.Pid)
	}
	return sum
}
