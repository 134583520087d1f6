package main

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

// clusterNodesText is CLUSTER NODES of 3 masters and 3 replicas, as
// redis-cli --cluster create leaves them, plus a failed node.
const clusterNodesText = `c543 127.0.0.1:21001@31001 myself,master - 0 1796156495000 1 connected 0-5460
b802 127.0.0.1:21002@31002 master - 0 1796156496255 2 connected 5461-10922
4d4d 127.0.0.1:21006@31006 slave b802 0 1796156495000 6 connected
0fae 127.0.0.1:21004@31004 slave 3618 0 1796156495241 3 connected
3618 127.0.0.1:21003@31003 master - 0 1796156495000 3 connected 10923-16382 16383 [16383->-b802]
5aab 127.0.0.1:21005@31005,node5.example slave c543 0 1796156495000 5 connected
dead 127.0.0.1:21007@31007 master,fail - 0 1796156495000 7 disconnected
`

func TestParseClusterNodesListsMastersEachFollowedByItsReplicas(t *testing.T) {
	nodes, err := parseClusterNodes(clusterNodesText)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	slots := 0
	for _, n := range nodes {
		role := "r"
		if n.Master {
			role = "m"
			slots += n.Slots
		}
		got = append(got, role+n.Addr[len("127.0.0.1:"):])
	}
	if want := "m21001 r21005 m21002 r21006 m21003 r21004"; strings.Join(got, " ") != want {
		t.Errorf("order %v, want %s", got, want)
	}
	if slots != 16384 {
		t.Errorf("masters serve %d slots, want 16384", slots)
	}
	if _, err := parseClusterNodes("ERR This instance has cluster support disabled"); err == nil {
		t.Error("no node: no error")
	}
	if _, err := parseClusterNodes("a 127.0.0.1:1@2 master - 0 0 1 connected 9-x\n"); err == nil {
		t.Error("bad slot range: no error")
	}
}

func TestClusterDeltaSplitsCPUAndEstimatesTheBus(t *testing.T) {
	nodes, err := parseClusterNodes(clusterNodesText)
	if err != nil {
		t.Fatal(err)
	}
	rc := &redisCluster{nodes: nodes}
	before := make([]nodeSample, len(nodes))
	after := make([]nodeSample, len(nodes))
	for i, n := range nodes {
		before[i] = nodeSample{CPUus: 1e6, ClientOut: 100, ReplOut: 10, Written: 1000, BusSent: 5, PublishBus: 0, ShardBus: 2}
		after[i] = before[i]
		if n.Master {
			// Per 1 000 events: 20 ms of CPU, 50 kB to clients, 30 kB to
			// its replica, 500 kB written, 1 000 publishes forwarded.
			after[i].CPUus += 20000
			after[i].ClientOut += 50000
			after[i].ReplOut += 30000
			after[i].Written += 580000
			after[i].BusSent += 1010
			after[i].PublishBus += 1000
		} else {
			after[i].CPUus += 5000
			after[i].Written += 2000
			after[i].BusSent += 1
		}
	}
	// The last replica could not be read afterwards.
	after[5].err = errors.New("i/o timeout")
	res := rc.delta(before, after, 1000, "PUBLISH")
	if res.Masters != 3 || res.Replicas != 3 || len(res.Nodes) != 6 {
		t.Fatalf("%d masters, %d replicas, %d nodes", res.Masters, res.Replicas, len(res.Nodes))
	}
	m := res.Nodes[0]
	if m.Role != "master" || m.CPUus != 20000 || m.CPUPerEvent != 20 || m.BusBytes != 500000 || m.PublishMessages != 1000 || m.ShardMessages != 0 {
		t.Errorf("master: %+v", m)
	}
	if r := res.Nodes[1]; r.Role != "replica" || r.Shard != "127.0.0.1:21001" || r.BusBytes != 2000 || r.CPUPerEvent != 5 {
		t.Errorf("replica: %+v", r)
	}
	if r := res.Nodes[5]; r.Err == "" || r.CPUus != -1 {
		t.Errorf("unreadable replica: %+v", r)
	}
	near := func(a, b float64) bool { return math.Abs(a-b) < 1e-9 }
	if !near(res.CPUPerEvent, 70) || !near(res.MasterCPUPerEvent, 60) || !near(res.ReplicaCPUPerEvent, 10) {
		t.Errorf("CPU per event: all %v, masters %v, replicas %v", res.CPUPerEvent, res.MasterCPUPerEvent, res.ReplicaCPUPerEvent)
	}
	if res.BusBytesPerEvent != -1 {
		t.Errorf("bus bytes per event with a node unread: %v, want -1 (unknown)", res.BusBytesPerEvent)
	}
	if !near(res.BusPublishesPerEvent, 3) || !near(res.ClientOutPerEvent, 150) {
		t.Errorf("per event: %v publishes, %v B to clients", res.BusPublishesPerEvent, res.ClientOutPerEvent)
	}
	if cpu, out := res.totals(); cpu != 70000 || out != 150000 {
		t.Errorf("totals: %v µs, %d B", cpu, out)
	}
	if rows := clusterRows(res); len(rows) != 7 || !strings.Contains(rows[0], "? B of cluster bus") {
		t.Errorf("rows: %q", rows)
	}
}

func TestClusterRampsAreJudgedAsTheCeiling(t *testing.T) {
	limit := 50 * time.Millisecond
	ramp := func(name string, rate float64, p99 time.Duration) report {
		r := step(rate, p99)
		r.Scenario = name + r.Scenario[len("ceiling"):]
		return r
	}
	reports := []report{
		step(1000, time.Millisecond),
		ramp("cluster-classic", 1500, 5*time.Millisecond),
		ramp("cluster-sharded", 1500, 5*time.Millisecond),
		ramp("cluster-classic", 3000, 80*time.Millisecond),
		ramp("cluster-sharded", 3000, 10*time.Millisecond),
		{Scenario: "S2"},
	}
	if got := sweepPrefixes(reports); strings.Join(got, " ") != "cluster-classic@ cluster-sharded@" {
		t.Errorf("sweeps %q", got)
	}
	classic := ceilingOf(reports, "cluster-classic@", limit)
	if len(classic.steps) != 2 || !classic.stop || classic.best == nil || classic.best.r.Rate != 1500 {
		t.Errorf("classic: %+v", classic)
	}
	sharded := ceilingOf(reports, "cluster-sharded@", limit)
	if sharded.stop || sharded.best == nil || sharded.best.r.Rate != 3000 {
		t.Errorf("sharded: %+v", sharded)
	}
	if one := ceilingOf(reports, ceilingPrefix, limit); len(one.steps) != 1 {
		t.Errorf("the ceiling sweep took %d steps, want its own 1", len(one.steps))
	}
}
