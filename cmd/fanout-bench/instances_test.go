package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestInstanceOfPutsAUsersConnectionsOnOneInstance(t *testing.T) {
	const users, connsPerUser, instances = 10, 3, 3
	instanceOfUser := map[int]int{}
	perInstance := make([]int, instances)
	for gi := 0; gi < users*connsPerUser; gi++ {
		u := gi % users // as the children assign users
		in := instanceOf(u, instances)
		if prev, ok := instanceOfUser[u]; ok && prev != in {
			t.Fatalf("user %d on instances %d and %d", u, prev, in)
		}
		instanceOfUser[u] = in
		perInstance[in]++
	}
	// 10 users over 3 instances: 4, 3, 3 users, 3 connections each.
	if fmt.Sprint(perInstance) != "[12 9 9]" {
		t.Errorf("connections per instance %v, want [12 9 9]", perInstance)
	}
}

func TestCheckWantsOneAdminURLPerInstance(t *testing.T) {
	for _, tc := range []struct {
		url, admin string
		ok         bool
	}{
		{"ws://a/ws", "", true},
		{"ws://a/ws,ws://b/ws", "", true},
		{"ws://a/ws, ws://b/ws", "http://a:1,http://b:2", true},
		{"ws://a/ws,ws://b/ws", "http://a:1", false},
		{"ws://a/ws", "http://a:1,http://b:2", false},
		{" , ", "", false},
	} {
		o := options{url: tc.url, admin: tc.admin, users: 1, connsPerUser: 1, thenRate: 10, inflight: 1,
			sources: 1, dialWorkers: 1, publishers: 1, timeout: time.Second, stormMissed: 1, stormDialWorkers: 1}
		if err := o.check(); (err == nil) != tc.ok {
			t.Errorf("-url %q -admin %q: err %v, want ok=%v", tc.url, tc.admin, err, tc.ok)
		}
	}
}

// statsBody is an /admin/stats body with the given counters.
func statsBody(instance string, conns int64, received, delivered uint64, extra string) string {
	return fmt.Sprintf(`{"instance":%q,"auth_mode":"none","connections":%d,"users":%d,
		"counters":{"messages_received":%d,"frames_delivered":%d,"history_recorded":7,"slow_disconnects":0},
		"last_minute":{"messages_received":1},"redis":{"addr":"x","subscribed":true%s}}`,
		instance, conns, conns/2, received, delivered, extra)
}

func TestParseAdminStatsKeepsModeAndLeaseFields(t *testing.T) {
	body := strings.Replace(statsBody("h/1", 10, 5, 6, `,"lease_holder":true`), `"auth_mode"`, `"subscribe_mode":"user","auth_mode"`, 1)
	st, err := parseAdminStats([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	if st.Instance != "h/1" || st.Connections != 10 || st.Counters["messages_received"] != 5 {
		t.Errorf("parsed %+v", st)
	}
	want := map[string]string{"subscribe_mode": `"user"`, "redis.lease_holder": "true"}
	if fmt.Sprint(st.extra) != fmt.Sprint(want) {
		t.Errorf("extra %v, want %v", st.extra, want)
	}
	if _, err := parseAdminStats([]byte(`{"instance":"x"}`)); err == nil {
		t.Error("a body without counters was accepted")
	}
	if _, err := parseAdminStats([]byte(`not json`)); err == nil {
		t.Error("not JSON was accepted")
	}
}

// TestInstanceProbeReportsEachInstancesGrowth serves /admin/stats from
// two fake instances whose counters grow between the two readings, as in
// user mode with a lease holder: one receives every event, the other its
// users' share.
func TestInstanceProbeReportsEachInstancesGrowth(t *testing.T) {
	var phase atomic.Int64
	fake := func(name string, received, delivered [2]uint64) *httptest.Server {
		return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/admin/stats" {
				http.NotFound(w, r)
				return
			}
			p := phase.Load()
			fmt.Fprint(w, statsBody(name, 4, received[p], delivered[p], ""))
		}))
	}
	a := fake("a", [2]uint64{100, 1100}, [2]uint64{0, 600})
	defer a.Close()
	b := fake("b", [2]uint64{50, 450}, [2]uint64{10, 810})
	defer b.Close()
	o := options{url: "ws://a/ws,ws://b/ws", admin: a.URL + "," + b.URL}
	p := newInstanceProbe(o, nil)
	p.start()
	phase.Store(1)
	// 5 users: u0, u2, u4 on #0, u1, u3 on #1; 2 connections each.
	res := p.finish(5, []int64{2, 2, 2, 2, 2}, 1000)
	if len(res) != 2 {
		t.Fatalf("%d results", len(res))
	}
	if r := res[0]; r.Err != "" || r.Name != "a" || r.Users != 3 || r.ConnsPlanned != 6 || r.Connections != 4 ||
		r.Received != 1000 || r.Delivered != 600 || r.Recorded != 0 || r.ReceivedShare != 1 {
		t.Errorf("#0: %+v", r)
	}
	if r := res[1]; r.Err != "" || r.Users != 2 || r.ConnsPlanned != 4 || r.Received != 400 || r.Delivered != 800 || r.ReceivedShare != 0.4 {
		t.Errorf("#1: %+v", r)
	}
	if n := fullReceivers(res); n != 1 {
		t.Errorf("%d instances received every event, want 1", n)
	}
	rep := &report{Instances: res}
	rows := instanceRows(rep)
	if len(rows) != 2 || !strings.Contains(rows[1], "received 400 (40% of published)") {
		t.Errorf("rows: %q", rows)
	}

	// An instance that does not answer is reported as such, not as zero.
	a.Close()
	p.start()
	res = p.finish(5, []int64{2, 2, 2, 2, 2}, 1000)
	if res[0].Err == "" || res[1].Err != "" {
		t.Errorf("errors: %q, %q", res[0].Err, res[1].Err)
	}
}

func TestParseClientListCountsSubscribers(t *testing.T) {
	list := "id=3 addr=127.0.0.1:1 name= db=0 sub=0 psub=1 ssub=0 multi=-1 cmd=psubscribe\n" +
		"id=4 addr=127.0.0.1:2 name= db=0 sub=2 psub=0 ssub=0 multi=-1 cmd=subscribe\n" +
		"id=5 addr=127.0.0.1:3 name= db=0 sub=3 psub=1 ssub=0 multi=-1 cmd=subscribe\n" +
		"id=6 addr=127.0.0.1:4 name= db=0 sub=0 psub=0 ssub=0 multi=-1 cmd=publish\n" +
		"id=7 addr=127.0.0.1:5 name= db=0 sub=1 psub=0 ssub=40 multi=-1 cmd=ssubscribe\n"
	got := parseClientList(list)
	if got != (pubsubClients{PatternClients: 2, ChannelClients: 3, Channels: 6, ShardClients: 1, ShardChannels: 40}) {
		t.Errorf("got %+v", got)
	}
}

func TestConnsPerGiB(t *testing.T) {
	if got := connsPerGiB(8192); got != 131072 {
		t.Errorf("8 KiB per connection: %v per GiB, want 131072", got)
	}
	if got := connsPerGiB(0); got != 0 {
		t.Errorf("unmeasured: %v", got)
	}
}
