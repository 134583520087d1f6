package main

// A Redis Cluster as the bus (-redis-cluster seeds): events are published
// through go-redis's cluster client, with PUBLISH (classic pub/sub, which
// every node forwards to every other node over the cluster bus) or with
// -spublish SPUBLISH (sharded pub/sub, which stays on the channel's shard:
// its master and that master's replicas). Every node, masters and
// replicas, is read before the first publish and after the drain, so the
// report says what each one spent on the events: CPU (INFO cpu), bytes to
// its clients (INFO stats total_net_output_bytes), to its replicas
// (total_net_repl_output_bytes), everything it wrote (/proc/PID/io wchar,
// when the node runs on this machine: the cluster bus included, which
// INFO does not count) and cluster bus messages sent (CLUSTER INFO: all,
// and the forwarded publishes).

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// clusterNode is one node of the cluster as CLUSTER NODES lists it.
type clusterNode struct {
	ID   string
	Addr string
	// Master is true for a master; a replica's MasterID names its master.
	Master   bool
	MasterID string
	// Slots is the number of hash slots a master serves.
	Slots int
}

// parseClusterNodes reads the output of CLUSTER NODES, skipping nodes
// flagged failed, handshaking or without an address.
func parseClusterNodes(text string) ([]clusterNode, error) {
	var nodes []clusterNode
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		addr, _, _ := strings.Cut(f[1], "@") // ip:port@cport[,hostname]
		flags := "," + f[2] + ","
		if addr == "" || strings.HasPrefix(addr, ":") || strings.Contains(flags, ",fail,") ||
			strings.Contains(flags, ",handshake,") || strings.Contains(flags, ",noaddr,") {
			continue
		}
		n := clusterNode{ID: f[0], Addr: addr, Master: strings.Contains(flags, ",master,")}
		if !n.Master && f[3] != "-" {
			n.MasterID = f[3]
		}
		for _, r := range f[8:] {
			if strings.HasPrefix(r, "[") { // a slot being migrated
				continue
			}
			lo, hi, isRange := strings.Cut(r, "-")
			a, err1 := strconv.Atoi(lo)
			b, err2 := a, error(nil)
			if isRange {
				b, err2 = strconv.Atoi(hi)
			}
			if err1 != nil || err2 != nil || b < a {
				return nil, fmt.Errorf("CLUSTER NODES: bad slot range %q", r)
			}
			n.Slots += b - a + 1
		}
		nodes = append(nodes, n)
	}
	if len(nodes) == 0 {
		return nil, fmt.Errorf("CLUSTER NODES: no node")
	}
	// Masters first, each followed by its replicas, by address.
	byID := map[string]clusterNode{}
	for _, n := range nodes {
		byID[n.ID] = n
	}
	shard := func(n clusterNode) string {
		if m, ok := byID[n.MasterID]; ok && !n.Master {
			return m.Addr
		}
		return n.Addr
	}
	sort.Slice(nodes, func(i, j int) bool {
		si, sj := shard(nodes[i]), shard(nodes[j])
		if si != sj {
			return si < sj
		}
		if nodes[i].Master != nodes[j].Master {
			return nodes[i].Master
		}
		return nodes[i].Addr < nodes[j].Addr
	})
	return nodes, nil
}

// redisCluster is the bench's view of the cluster: the client that
// publishes, and one plain client per node for its statistics.
type redisCluster struct {
	client  *redis.ClusterClient
	nodes   []clusterNode
	clients []*redis.Client
}

// dialCluster connects to the seeds and lists the cluster's nodes.
func dialCluster(seeds []string, poolSize int) (*redisCluster, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var text string
	var err error
	for _, seed := range seeds {
		c := redis.NewClient(&redis.Options{Addr: seed, PoolSize: 1, MaxRetries: -1})
		text, err = c.ClusterNodes(ctx).Result()
		c.Close()
		if err == nil {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("redis cluster %s: %w", strings.Join(seeds, ","), err)
	}
	nodes, err := parseClusterNodes(text)
	if err != nil {
		return nil, err
	}
	rc := &redisCluster{nodes: nodes,
		client: redis.NewClusterClient(&redis.ClusterOptions{Addrs: seeds, PoolSize: poolSize})}
	for _, n := range nodes {
		rc.clients = append(rc.clients, redis.NewClient(&redis.Options{Addr: n.Addr, PoolSize: 2}))
	}
	if err := rc.client.Ping(ctx).Err(); err != nil {
		rc.Close()
		return nil, fmt.Errorf("redis cluster %s: %w", strings.Join(seeds, ","), err)
	}
	return rc, nil
}

// Close closes every client.
func (rc *redisCluster) Close() {
	rc.client.Close()
	for _, c := range rc.clients {
		c.Close()
	}
}

// masterAddr is the address of the master of node i (itself for a master).
func (rc *redisCluster) masterAddr(i int) string {
	n := rc.nodes[i]
	for _, m := range rc.nodes {
		if m.Master && m.ID == n.MasterID {
			return m.Addr
		}
	}
	return n.Addr
}

// nodeSample is one reading of a node's counters; -1 where unreadable.
type nodeSample struct {
	CPUus               float64
	ClientOut, ReplOut  int64
	Written             int64
	UsedMemory          int64
	BusSent, PublishBus int64
	ShardBus            int64
	err                 error
}

// sample reads every node.
func (rc *redisCluster) sample() []nodeSample {
	out := make([]nodeSample, len(rc.clients))
	for i, c := range rc.clients {
		out[i] = sampleNode(c)
	}
	return out
}

// sampleNode reads one node's INFO, CLUSTER INFO and, when the node's
// process is on this machine, /proc/PID/io.
func sampleNode(c *redis.Client) nodeSample {
	s := nodeSample{CPUus: -1, ClientOut: -1, ReplOut: -1, Written: -1, UsedMemory: -1, BusSent: -1, PublishBus: -1, ShardBus: -1}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	raw, err := c.Info(ctx, "server", "cpu", "stats", "memory").Result()
	if err != nil {
		s.err = err
		return s
	}
	info := infoFields(raw)
	if sys, err1 := strconv.ParseFloat(info["used_cpu_sys"], 64); err1 == nil {
		if user, err2 := strconv.ParseFloat(info["used_cpu_user"], 64); err2 == nil {
			s.CPUus = (sys + user) * 1e6
		}
	}
	s.ClientOut = intField(info, "total_net_output_bytes")
	s.ReplOut = intField(info, "total_net_repl_output_bytes")
	s.UsedMemory = intField(info, "used_memory")
	if pid := intField(info, "process_id"); pid > 0 && isLoopback(c.Options().Addr) {
		s.Written = procWritten(int(pid))
	}
	raw, err = c.ClusterInfo(ctx).Result()
	if err != nil {
		s.err = err
		return s
	}
	ci := infoFields(raw)
	s.BusSent = intField(ci, "cluster_stats_messages_sent")
	// A counter Redis has not used yet is not listed: 0, not unknown.
	s.PublishBus = max(0, intField(ci, "cluster_stats_messages_publish_sent"))
	s.ShardBus = max(0, intField(ci, "cluster_stats_messages_publishshard_sent"))
	return s
}

// infoFields splits INFO-style "key:value" lines.
func infoFields(raw string) map[string]string {
	fields := map[string]string{}
	for _, line := range strings.Split(raw, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			fields[k] = v
		}
	}
	return fields
}

// intField is fields[k] as an integer, or -1.
func intField(fields map[string]string, k string) int64 {
	n, err := strconv.ParseInt(fields[k], 10, 64)
	if err != nil {
		return -1
	}
	return n
}

func isLoopback(addr string) bool {
	return strings.HasPrefix(addr, "127.") || strings.HasPrefix(addr, "localhost:") || strings.HasPrefix(addr, "[::1]:")
}

// procWritten is wchar of /proc/PID/io (bytes passed to write(2) and
// friends, sockets included), or -1.
func procWritten(pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "wchar:"); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err == nil {
				return n
			}
		}
	}
	return -1
}

// memory is used_memory summed over the masters (replicas hold copies), or
// -1.
func (rc *redisCluster) memory() int64 {
	var sum int64
	for i, c := range rc.clients {
		if !rc.nodes[i].Master {
			continue
		}
		s := sampleNode(c)
		if s.UsedMemory < 0 {
			return -1
		}
		sum += s.UsedMemory
	}
	return sum
}

// pubsub sums CLIENT LIST's pub/sub figures over the nodes, or nil.
func (rc *redisCluster) pubsub() *pubsubClients {
	var all pubsubClients
	for _, c := range rc.clients {
		pc := redisPubSub(c)
		if pc == nil {
			return nil
		}
		all.PatternClients += pc.PatternClients
		all.ChannelClients += pc.ChannelClients
		all.Channels += pc.Channels
		all.ShardClients += pc.ShardClients
		all.ShardChannels += pc.ShardChannels
	}
	return &all
}

// clusterNodeResult is what one node spent over the publish window.
type clusterNodeResult struct {
	Addr string `json:"addr"`
	// Role is "master" or "replica"; Shard is the address of the master
	// of the node's shard (its own for a master).
	Role  string `json:"role"`
	Shard string `json:"shard"`
	Slots int    `json:"slots,omitempty"`
	// CPUus is used_cpu_sys + used_cpu_user grown over the window;
	// CPUPerEvent is that over the events published.
	CPUus       float64 `json:"cpu_us"`
	CPUPerEvent float64 `json:"cpu_us_per_event"`
	// ClientOutBytes is total_net_output_bytes grown (to its clients: the
	// instances' pub/sub messages, replies); ReplOutBytes
	// total_net_repl_output_bytes (to its replicas); WrittenBytes wchar
	// of /proc/PID/io (everything, -1 when the node is not on this
	// machine); BusBytes WrittenBytes minus the other two: the cluster
	// bus, estimated (-1 when WrittenBytes is unknown).
	ClientOutBytes int64 `json:"client_out_bytes"`
	ReplOutBytes   int64 `json:"repl_out_bytes"`
	WrittenBytes   int64 `json:"written_bytes"`
	BusBytes       int64 `json:"bus_bytes_est"`
	// BusMessages is cluster_stats_messages_sent grown (pings and pongs
	// too); PublishMessages and ShardMessages the forwarded PUBLISH and
	// SPUBLISH (cluster_stats_messages_publish_sent, _publishshard_sent).
	BusMessages     int64  `json:"bus_messages_sent"`
	PublishMessages int64  `json:"publish_messages_sent"`
	ShardMessages   int64  `json:"publishshard_messages_sent"`
	Err             string `json:"error,omitempty"`
}

// clusterResult is the cluster's share of a run.
type clusterResult struct {
	// Publish is the command the generator published with.
	Publish string              `json:"publish"`
	Nodes   []clusterNodeResult `json:"nodes"`
	// Masters and Replicas count the nodes.
	Masters  int `json:"masters"`
	Replicas int `json:"replicas"`
	// CPUPerEvent is the CPU of every node per event published;
	// MasterCPUPerEvent and ReplicaCPUPerEvent that of the masters and
	// of the replicas (summed over them).
	CPUPerEvent        float64 `json:"cpu_us_per_event"`
	MasterCPUPerEvent  float64 `json:"master_cpu_us_per_event"`
	ReplicaCPUPerEvent float64 `json:"replica_cpu_us_per_event"`
	// BusBytesPerEvent (estimated, over every node, -1 when unknown) and
	// BusPublishesPerEvent (forwarded PUBLISH and SPUBLISH messages) per
	// event published.
	BusBytesPerEvent     float64 `json:"bus_bytes_per_event"`
	BusPublishesPerEvent float64 `json:"bus_publishes_per_event"`
	// ClientOutPerEvent is the bytes every node sent its clients per event.
	ClientOutPerEvent float64 `json:"client_out_bytes_per_event"`
}

// clusterDelta is what the nodes spent from before to after, for events
// published.
func (rc *redisCluster) delta(before, after []nodeSample, events int64, publish string) *clusterResult {
	res := &clusterResult{Publish: publish}
	var clientOut, bus int64
	var busKnown = true
	var publishes int64
	var cpuAll, cpuMasters, cpuReplicas float64
	for i, n := range rc.nodes {
		b, a := before[i], after[i]
		nr := clusterNodeResult{Addr: n.Addr, Role: "replica", Shard: rc.masterAddr(i), Slots: n.Slots,
			CPUus: -1, ClientOutBytes: -1, ReplOutBytes: -1, WrittenBytes: -1, BusBytes: -1,
			BusMessages: -1, PublishMessages: -1, ShardMessages: -1}
		if n.Master {
			nr.Role = "master"
			res.Masters++
		} else {
			res.Replicas++
		}
		if err := firstErr(b.err, a.err); err != nil {
			nr.Err = err.Error()
			busKnown = false
			res.Nodes = append(res.Nodes, nr)
			continue
		}
		grown := func(x, y int64) int64 {
			if x < 0 || y < x {
				return -1
			}
			return y - x
		}
		if b.CPUus >= 0 && a.CPUus >= b.CPUus {
			nr.CPUus = a.CPUus - b.CPUus
			cpuAll += nr.CPUus
			if n.Master {
				cpuMasters += nr.CPUus
			} else {
				cpuReplicas += nr.CPUus
			}
			if events > 0 {
				nr.CPUPerEvent = nr.CPUus / float64(events)
			}
		}
		nr.ClientOutBytes = grown(b.ClientOut, a.ClientOut)
		nr.ReplOutBytes = grown(b.ReplOut, a.ReplOut)
		nr.WrittenBytes = grown(b.Written, a.Written)
		nr.BusMessages = grown(b.BusSent, a.BusSent)
		nr.PublishMessages = grown(b.PublishBus, a.PublishBus)
		nr.ShardMessages = grown(b.ShardBus, a.ShardBus)
		if nr.WrittenBytes >= 0 && nr.ClientOutBytes >= 0 && nr.ReplOutBytes >= 0 {
			nr.BusBytes = max(0, nr.WrittenBytes-nr.ClientOutBytes-nr.ReplOutBytes)
			bus += nr.BusBytes
		} else {
			busKnown = false
		}
		clientOut += max(0, nr.ClientOutBytes)
		publishes += max(0, nr.PublishMessages) + max(0, nr.ShardMessages)
		res.Nodes = append(res.Nodes, nr)
	}
	res.BusBytesPerEvent = -1
	if events > 0 {
		e := float64(events)
		res.CPUPerEvent, res.MasterCPUPerEvent, res.ReplicaCPUPerEvent = cpuAll/e, cpuMasters/e, cpuReplicas/e
		res.BusPublishesPerEvent = float64(publishes) / e
		res.ClientOutPerEvent = float64(clientOut) / e
		if busKnown {
			res.BusBytesPerEvent = float64(bus) / e
		}
	}
	return res
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// totals returns the CPU (µs) and client egress (bytes) of every node.
func (c *clusterResult) totals() (cpuUs float64, clientOut int64) {
	for _, n := range c.Nodes {
		cpuUs += max(0, n.CPUus)
		clientOut += max(0, n.ClientOutBytes)
	}
	return cpuUs, clientOut
}

// clusterRows formats the per-node lines of the report.
func clusterRows(c *clusterResult) []string {
	rows := []string{fmt.Sprintf("%d masters, %d replicas, events published with %s; per event: CPU %.2f µs on every node (masters %.2f, replicas %.2f), %s of cluster bus (%.2f forwarded publishes), %.0f B to clients",
		c.Masters, c.Replicas, c.Publish, c.CPUPerEvent, c.MasterCPUPerEvent, c.ReplicaCPUPerEvent, busBytes(c.BusBytesPerEvent),
		c.BusPublishesPerEvent, c.ClientOutPerEvent)}
	for _, n := range c.Nodes {
		line := fmt.Sprintf("%s %s", n.Role, n.Addr)
		if n.Role == "replica" {
			line += " (of " + n.Shard + ")"
		} else {
			line += fmt.Sprintf(" (%d slots)", n.Slots)
		}
		if n.Err != "" {
			rows = append(rows, line+": error: "+n.Err)
			continue
		}
		line += fmt.Sprintf(": CPU %.0f ms (%.2f µs/event); out to clients %s, to replicas %s, bus %s; bus messages %d (%d publish, %d publishshard)",
			n.CPUus/1e3, n.CPUPerEvent, bytesOrDash(n.ClientOutBytes), bytesOrDash(n.ReplOutBytes), bytesOrDash(n.BusBytes),
			n.BusMessages, n.PublishMessages, n.ShardMessages)
		rows = append(rows, line)
	}
	return rows
}

func bytesOrDash(b int64) string {
	if b < 0 {
		return "-"
	}
	return bytesHuman(float64(b))
}

func busBytes(perEvent float64) string {
	if perEvent < 0 {
		return "? B"
	}
	return fmt.Sprintf("%.0f B", perEvent)
}
