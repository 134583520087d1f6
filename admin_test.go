package main

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// adminGet fetches url with the Authorization header auth (none when
// empty) and returns the response, whose body is read into body.
func adminGet(t *testing.T, url, auth string) (resp *http.Response, body string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp, string(data)
}

// adminStats fetches and decodes /admin/stats.
func adminStats(t *testing.T, td *testDaemon) statsSnapshot {
	t.Helper()
	resp, body := adminGet(t, td.adminURL+"/admin/stats", "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/admin/stats: %d %q", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("/admin/stats Content-Type %q, want application/json", ct)
	}
	var snap statsSnapshot
	if err := json.Unmarshal([]byte(body), &snap); err != nil {
		t.Fatalf("/admin/stats body %q: %v", body, err)
	}
	return snap
}

func TestAdminStatsReportsConnectionsCountersAndRefusals(t *testing.T) {
	td := startDaemon(t, startRedis(t), nil)
	td.waitReady()

	snap := adminStats(t, td)
	if snap.AuthMode != authLoopback || !snap.Ready || snap.Connections != 0 || snap.Users != 0 || snap.Version != version {
		t.Fatalf("idle daemon: %+v", snap)
	}
	for _, name := range rejectReasonNames {
		if n, ok := snap.Rejected[name]; !ok || n != 0 {
			t.Errorf("rejected[%s] = %d (listed %v), want listed with 0", name, n, ok)
		}
	}
	for _, name := range []string{"connections_accepted", "connections_rejected", "messages_received", "frames_delivered", "frames_dropped"} {
		if _, ok := snap.Counters[name]; !ok {
			t.Errorf("counters lack %s: %v", name, snap.Counters)
		}
	}

	_ = td.dial("alice")
	_ = td.dial("alice")
	bob := td.dial("bob")
	snap = adminStats(t, td)
	if snap.Connections != 3 || snap.Users != 2 || snap.Counters["connections_accepted"] != 3 {
		t.Fatalf("with 2 users on 3 connections: connections %d, users %d, accepted %d",
			snap.Connections, snap.Users, snap.Counters["connections_accepted"])
	}

	const n = 7
	before := snap.Counters["frames_delivered"]
	for i := range n {
		td.publish("bob", event("bob", i))
	}
	for range n {
		readText(t, bob, 5*time.Second)
	}
	eventually(t, 5*time.Second, "frames counted", func() bool {
		return adminStats(t, td).Counters["frames_delivered"] >= before+n
	})
	snap = adminStats(t, td)
	if got := snap.Counters["frames_delivered"] - before; got != n {
		t.Fatalf("frames_delivered moved by %d for %d events to one connection", got, n)
	}
	if got := snap.Counters["messages_received"]; got != n {
		t.Fatalf("messages_received = %d, want %d (probes not counted)", got, n)
	}

	// One refused request is counted under its reason.
	if status, _, err := get(td.baseURL + "/ws?username=bad*name"); err != nil || status != http.StatusBadRequest {
		t.Fatalf("bad username: %d %v, want 400", status, err)
	}
	snap = adminStats(t, td)
	if snap.Rejected["bad_request"] != 1 || snap.Counters["connections_rejected"] != 1 {
		t.Fatalf("after one bad request: rejected %v, connections_rejected %d", snap.Rejected, snap.Counters["connections_rejected"])
	}

	_ = bob.Close()
	eventually(t, 5*time.Second, "bob gone from the stats", func() bool {
		s := adminStats(t, td)
		return s.Connections == 2 && s.Users == 1
	})
}

func TestAdminEndpointsAreNotOnThePublicPort(t *testing.T) {
	td := startDaemon(t, startRedis(t), map[string]string{"PPROF": "true"})
	for _, path := range []string{"/admin/stats", "/debug/pprof/", "/debug/pprof/cmdline"} {
		status, _, err := get(td.baseURL + path)
		if err != nil {
			t.Fatal(err)
		}
		if status != http.StatusNotFound {
			t.Errorf("public %s: %d, want 404", path, status)
		}
		if status, _, _ := get(td.adminURL + path); status != http.StatusOK {
			t.Errorf("admin %s: %d, want 200", path, status)
		}
	}
	// Nor is the public surface on the admin listener.
	if status, _, _ := get(td.adminURL + "/ws?username=u"); status != http.StatusNotFound {
		t.Errorf("admin /ws: %d, want 404", status)
	}
}

func TestAdminTokenIsRequiredWhenSet(t *testing.T) {
	const token = "0123456789abcdef-admin"
	td := startDaemon(t, startRedis(t), map[string]string{"ADMIN_TOKEN": token, "PPROF": "true"})
	for _, path := range []string{"/admin/stats", "/debug/pprof/"} {
		for _, auth := range []string{"", "Bearer wrong-token-0123456789", "Bearer " + token + "x", "Bearer " + token[:len(token)-1], "Basic " + token, token, "Bearer"} {
			resp, body := adminGet(t, td.adminURL+path, auth)
			if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer ") {
				t.Errorf("%s with Authorization %q: %d, WWW-Authenticate %q; want 401 with a Bearer challenge",
					path, auth, resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
			}
			if strings.Contains(body, token) {
				t.Errorf("%s: 401 body %q holds the token", path, body)
			}
		}
		for _, auth := range []string{"Bearer " + token, "bearer " + token} {
			if resp, body := adminGet(t, td.adminURL+path, auth); resp.StatusCode != http.StatusOK {
				t.Errorf("%s with the right token (%.6s…): %d %q, want 200", path, auth, resp.StatusCode, body)
			}
		}
	}
	// The public listener does not ask for it.
	if status, _, _ := get(td.baseURL + "/health"); status != http.StatusOK {
		t.Errorf("/health: %d, want 200 without a token", status)
	}
	// Logged before the admin listener serves, so it is there by now.
	if logs := td.logs.String(); !strings.Contains(logs, "token_required=true") || strings.Contains(logs, token) {
		t.Error("admin listener start-up line does not say a token is required, or logs the token")
	}
}

func TestPprofIsServedOnTheAdminListenerOnlyWithPPROF(t *testing.T) {
	r := startRedis(t)
	on := startDaemon(t, r, map[string]string{"PPROF": "true"})
	resp, body := adminGet(t, on.adminURL+"/debug/pprof/", "")
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "goroutine") {
		t.Fatalf("PPROF=true: /debug/pprof/ %d %.200q, want 200 with the profile index", resp.StatusCode, body)
	}
	if resp, _ := adminGet(t, on.adminURL+"/debug/pprof/goroutine?debug=1", ""); resp.StatusCode != http.StatusOK {
		t.Fatalf("PPROF=true: goroutine profile %d, want 200", resp.StatusCode)
	}
	if !strings.Contains(on.logs.String(), "pprof=true") {
		t.Error("admin listener start-up line does not say pprof is on")
	}

	off := startDaemon(t, r, nil)
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/goroutine", "/debug/pprof/cmdline"} {
		if resp, _ := adminGet(t, off.adminURL+path, ""); resp.StatusCode != http.StatusNotFound {
			t.Errorf("without PPROF: %s %d, want 404", path, resp.StatusCode)
		}
	}
	if resp, _ := adminGet(t, off.adminURL+"/admin/stats", ""); resp.StatusCode != http.StatusOK {
		t.Errorf("without PPROF: /admin/stats %d, want 200", resp.StatusCode)
	}
}

func TestAdminListenerIsOffWithADMIN_ADDROff(t *testing.T) {
	td := startDaemon(t, startRedis(t), map[string]string{"ADMIN_ADDR": "off"})
	if td.adminURL != "" || td.d.cfg.AdminAddr != "" {
		t.Fatalf("ADMIN_ADDR=off: adminURL %q, AdminAddr %q; want both empty", td.adminURL, td.d.cfg.AdminAddr)
	}
	td.waitReady()
	if status, _, _ := get(td.baseURL + "/admin/stats"); status != http.StatusNotFound {
		t.Fatalf("ADMIN_ADDR=off: public /admin/stats %d, want 404", status)
	}
	// Once it has stopped, every line is written.
	if err := td.stop(); err != nil {
		t.Fatalf("run returned %v", err)
	}
	if logs := td.logs.String(); !strings.Contains(logs, "msg=Stopped") || strings.Contains(logs, "Admin listener") {
		t.Fatalf("ADMIN_ADDR=off: logs\n%s\nwant no admin listener", logs)
	}
}
