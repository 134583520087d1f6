package main

// Several daemon instances (-url with several URLs): user uN connects to
// instance N % instances (instanceOf), and with -admin the run reads each
// instance's /admin/stats before the first publish and after the drain,
// so the report says what each one received from Redis and delivered, and
// with as many -pid as URLs what CPU each spent. Redis's egress (INFO
// stats total_net_output_bytes) is read over the same window, and its
// pub/sub clients (CLIENT LIST) after the connect phase.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// urls returns the -url list: one /ws URL per instance.
func (o options) urls() []string { return splitList(o.url) }

// admins returns the -admin list: one admin base URL per instance.
func (o options) admins() []string { return splitList(o.admin) }

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// instanceResult is one instance's share of a run with several instances.
type instanceResult struct {
	URL   string `json:"url"`
	Admin string `json:"admin,omitempty"`
	PID   int    `json:"pid,omitempty"`
	// Name is the instance's name in /admin/stats (host/random id).
	Name string `json:"instance,omitempty"`
	// Users and ConnsPlanned are what the bench sent to it;
	// Connections is what /admin/stats counted before the first publish.
	Users        int   `json:"users"`
	ConnsPlanned int64 `json:"conns_planned"`
	Connections  int64 `json:"connections"`
	// Received, Delivered and Recorded are the growth of its counters
	// messages_received, frames_delivered and history_recorded from
	// before the first publish to after the drain; ReceivedShare is
	// Received over the events published.
	Received      uint64  `json:"messages_received"`
	Delivered     uint64  `json:"frames_delivered"`
	Recorded      uint64  `json:"history_recorded"`
	ReceivedShare float64 `json:"received_share"`
	// Counters is the growth of every counter of /admin/stats over the
	// window (names as there), for whatever the table does not show.
	Counters map[string]uint64 `json:"counters,omitempty"`
	// Extra holds the /admin/stats fields about the subscription mode or
	// a recorder lease, when the daemon has any (keys with "lease" or
	// "subscribe_mode" in their name, top level or one level down).
	Extra map[string]string `json:"extra,omitempty"`
	// CPUus is its utime+stime over the window (only with one -pid per
	// -url, in the same order).
	CPUus float64 `json:"cpu_us"`
	Err   string  `json:"error,omitempty"`
}

// adminStats is the part of /admin/stats the bench reads.
type adminStats struct {
	Instance    string            `json:"instance"`
	Connections int64             `json:"connections"`
	Users       int64             `json:"users"`
	Counters    map[string]uint64 `json:"counters"`
	// extra: see instanceResult.Extra.
	extra map[string]string
}

// parseAdminStats decodes a /admin/stats body.
func parseAdminStats(body []byte) (adminStats, error) {
	var st adminStats
	if err := json.Unmarshal(body, &st); err != nil {
		return st, fmt.Errorf("/admin/stats: %w", err)
	}
	if st.Counters == nil {
		return st, fmt.Errorf("/admin/stats: no counters")
	}
	var raw map[string]json.RawMessage
	_ = json.Unmarshal(body, &raw)
	for k, v := range raw {
		var inner map[string]json.RawMessage
		if json.Unmarshal(v, &inner) == nil && k != "counters" && k != "last_minute" && k != "rates_per_second" {
			for k2, v2 := range inner {
				if modeField(k2) {
					st.setExtra(k+"."+k2, v2)
				}
			}
		}
		if modeField(k) {
			st.setExtra(k, v)
		}
	}
	for k, n := range st.Counters {
		if modeField(k) {
			st.setExtra("counters."+k, json.RawMessage(strconv.FormatUint(n, 10)))
		}
	}
	return st, nil
}

// modeField reports whether an /admin/stats key is about the subscription
// mode or the recorder lease.
func modeField(k string) bool {
	return strings.Contains(k, "lease") || strings.Contains(k, "recorder") || strings.Contains(k, "subscribe_mode")
}

func (st *adminStats) setExtra(k string, v json.RawMessage) {
	if st.extra == nil {
		st.extra = map[string]string{}
	}
	s := string(v)
	if len(s) > 120 {
		s = s[:120] + "…"
	}
	st.extra[k] = s
}

// fetchAdminStats reads base + "/admin/stats".
func fetchAdminStats(base string) (adminStats, error) {
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(strings.TrimSuffix(base, "/") + "/admin/stats")
	if err != nil {
		return adminStats{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return adminStats{}, fmt.Errorf("%s/admin/stats: %s", base, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return adminStats{}, fmt.Errorf("%s/admin/stats: %w", base, err)
	}
	return parseAdminStats(body)
}

// counterGrowth is after − before for every counter in after.
func counterGrowth(before, after map[string]uint64) map[string]uint64 {
	out := make(map[string]uint64, len(after))
	for k, v := range after {
		if v >= before[k] {
			out[k] = v - before[k]
		}
	}
	return out
}

// instanceProbe reads the instances before and after the publish window.
type instanceProbe struct {
	urls, admins []string
	pids         []int // per instance, or nil
	before       []adminStats
	beforeErr    []error
	cpu0         []int64
}

func newInstanceProbe(o options, pids []int) *instanceProbe {
	p := &instanceProbe{urls: o.urls(), admins: o.admins()}
	if len(pids) == len(p.urls) {
		p.pids = pids
	}
	return p
}

// start takes the readings before the first publish.
func (p *instanceProbe) start() {
	p.before = make([]adminStats, len(p.admins))
	p.beforeErr = make([]error, len(p.admins))
	for i, a := range p.admins {
		p.before[i], p.beforeErr[i] = fetchAdminStats(a)
	}
	for _, pid := range p.pids {
		p.cpu0 = append(p.cpu0, cpuTicks(pid))
	}
}

// finish takes the readings after the drain and returns one result per
// instance.
func (p *instanceProbe) finish(users int, connsPerUser []int64, published int64) []instanceResult {
	res := make([]instanceResult, len(p.urls))
	for u := 0; u < users; u++ {
		i := instanceOf(u, len(p.urls))
		res[i].Users++
		res[i].ConnsPlanned += connsPerUser[u]
	}
	for i := range res {
		res[i].URL = p.urls[i]
		if p.pids != nil {
			res[i].PID = p.pids[i]
			res[i].CPUus = float64(cpuTicks(p.pids[i])-p.cpu0[i]) * 1e6 / clkTck
		}
	}
	for i, a := range p.admins {
		r := &res[i]
		r.Admin = a
		after, err := fetchAdminStats(a)
		if err == nil {
			err = p.beforeErr[i]
		}
		if err != nil {
			r.Err = err.Error()
			continue
		}
		r.fill(p.before[i], after, published)
	}
	return res
}

// fill sets the counters' growth from before to after.
func (r *instanceResult) fill(before, after adminStats, published int64) {
	r.Name = after.Instance
	r.Connections = before.Connections
	r.Counters = counterGrowth(before.Counters, after.Counters)
	r.Received = r.Counters["messages_received"]
	r.Delivered = r.Counters["frames_delivered"]
	r.Recorded = r.Counters["history_recorded"]
	if published > 0 {
		r.ReceivedShare = float64(r.Received) / float64(published)
	}
	r.Extra = after.extra
}

// fullReceivers counts the instances that received (nearly) every event:
// all of them in pattern mode; in user mode the lease holder, which keeps
// the pattern for the history.
func fullReceivers(res []instanceResult) int {
	n := 0
	for _, r := range res {
		if r.ReceivedShare >= 0.99 {
			n++
		}
	}
	return n
}

// redisNetOut returns INFO stats total_net_output_bytes, or -1.
func redisNetOut(rdb *redis.Client) int64 {
	f, err := redisInfo(rdb, "stats")
	if err != nil {
		return -1
	}
	n, err := strconv.ParseInt(f["total_net_output_bytes"], 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// pubsubClients is what CLIENT LIST says about Redis's pub/sub clients.
type pubsubClients struct {
	// PatternClients is the clients with a pattern subscription (psub>0).
	PatternClients int `json:"pattern_clients"`
	// ChannelClients is the clients with channel subscriptions (sub>0),
	// Channels the sum of their subscriptions.
	ChannelClients int `json:"channel_clients"`
	Channels       int `json:"channels"`
	// ShardClients is the clients with shard channel subscriptions
	// (ssub>0, SSUBSCRIBE), ShardChannels the sum of those.
	ShardClients  int `json:"shard_clients,omitempty"`
	ShardChannels int `json:"shard_channels,omitempty"`
}

// parseClientList reads CLIENT LIST's sub=, psub= and ssub= fields.
func parseClientList(list string) pubsubClients {
	var pc pubsubClients
	for _, line := range strings.Split(list, "\n") {
		var sub, psub, ssub int
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "sub="); ok {
				sub, _ = strconv.Atoi(v)
			} else if v, ok := strings.CutPrefix(f, "psub="); ok {
				psub, _ = strconv.Atoi(v)
			} else if v, ok := strings.CutPrefix(f, "ssub="); ok {
				ssub, _ = strconv.Atoi(v)
			}
		}
		if ssub > 0 {
			pc.ShardClients++
			pc.ShardChannels += ssub
		}
		if psub > 0 {
			pc.PatternClients++
		}
		if sub > 0 {
			pc.ChannelClients++
			pc.Channels += sub
		}
	}
	return pc
}

// redisPubSub returns CLIENT LIST's pub/sub figures, or nil.
func redisPubSub(rdb *redis.Client) *pubsubClients {
	if rdb == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	list, err := rdb.ClientList(ctx).Result()
	if err != nil {
		return nil
	}
	pc := parseClientList(list)
	return &pc
}

// instanceRows formats the per-instance lines of the report.
func instanceRows(r *report) []string {
	var rows []string
	for i, in := range r.Instances {
		line := fmt.Sprintf("#%d %s: %d users, %d conns (admin says %d); received %d (%.0f%% of published), delivered %d, recorded %d",
			i, in.URL, in.Users, in.ConnsPlanned, in.Connections, in.Received, 100*in.ReceivedShare, in.Delivered, in.Recorded)
		if in.Admin == "" {
			line = fmt.Sprintf("#%d %s: %d users, %d conns (no -admin: counters not read)", i, in.URL, in.Users, in.ConnsPlanned)
		}
		if in.PID > 0 {
			line += fmt.Sprintf("; CPU %.0f ms", in.CPUus/1e3)
		}
		if len(in.Extra) > 0 {
			keys := make([]string, 0, len(in.Extra))
			for k := range in.Extra {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				line += fmt.Sprintf("; %s=%s", k, in.Extra[k])
			}
		}
		if in.Err != "" {
			line += "; error: " + in.Err
		}
		rows = append(rows, line)
	}
	return rows
}
