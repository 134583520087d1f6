package main

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"fanout/presence"
)

func TestPresenceCountsWebSocketsAndStreamsAndAStoppingInstanceHandsItsUsersTheGrace(t *testing.T) {
	skipShort(t, "two daemons in turn and a grace period")
	t.Parallel()
	r := startRedis(t)
	td := startDaemon(t, r, map[string]string{"PRESENCE_TTL": "2s", "PRESENCE_GRACE": "500ms"})
	td.waitReady()
	ps := r.client().Subscribe(t.Context(), presence.DefaultChannel)
	defer ps.Close()
	if _, err := ps.Receive(t.Context()); err != nil {
		t.Fatal(err)
	}
	transitions := ps.Channel()
	next := func(d time.Duration) string {
		select {
		case m := <-transitions:
			return m.Payload
		case <-time.After(d):
			return ""
		}
	}

	td.dial("alice")
	getEvents(t, td, "username=alice", nil)
	if got := next(3 * time.Second); got != `{"username":"alice","online":true}` {
		t.Fatalf("transition %q, want alice online", got)
	}
	eventually(t, 3*time.Second, "alice's two connections in presence", func() bool {
		st, err := presence.Query(context.Background(), r.client(), "alice")
		return err == nil && st[0].Connections == 2
	})
	// The transition is published inside the tick's script, so it can
	// arrive before the tick's reply is counted.
	eventually(t, 3*time.Second, "presence_transitions 1", func() bool {
		return td.d.stats.PresenceTransitions.Load() == 1
	})

	// Stopping takes alice out at once; she is announced offline after
	// the grace, by whoever ticks next: here the next instance to start.
	if err := td.stop(); err != nil {
		t.Fatal(err)
	}
	st, err := presence.Query(context.Background(), r.client(), "alice")
	if err != nil || st[0].Online {
		t.Fatalf("after the instance stopped: %+v %v", st, err)
	}
	time.Sleep(600 * time.Millisecond)
	startDaemon(t, r, map[string]string{"PRESENCE_TTL": "2s", "PRESENCE_GRACE": "500ms"}).waitReady()
	var tr presence.Status
	got := next(3 * time.Second)
	if err := json.Unmarshal([]byte(got), &tr); err != nil || tr.Username != "alice" || tr.Online {
		t.Fatalf("transition %q, want alice offline", got)
	}
	if got := next(1500 * time.Millisecond); got != "" {
		t.Fatalf("published again: %q", got)
	}
}

func TestPresenceOffWritesNothing(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	td := startDaemon(t, r, map[string]string{"PRESENCE": "off"})
	td.waitReady()
	td.dial("bob")
	eventually(t, 3*time.Second, "bob connected", func() bool { return td.d.hub.connectionCount("bob") == 1 })
	time.Sleep(1500 * time.Millisecond) // a tick, were presence on
	if _, err := presence.Query(context.Background(), r.client(), "bob"); !errors.Is(err, presence.ErrNeverWritten) {
		t.Fatalf("Query with every instance PRESENCE=off: %v, want ErrNeverWritten", err)
	}
	keys, err := r.client().Keys(context.Background(), "*presence*").Result()
	if err != nil || len(keys) != 0 {
		t.Fatalf("PRESENCE=off wrote %v (%v)", keys, err)
	}
}

func TestPresenceCommandSaysWhyItCannotAnswer(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	host, port := "127.0.0.1", strconv.Itoa(r.Port)
	env := map[string]string{"REDIS_HOST": host, "REDIS_PORT": port}
	for _, c := range []struct {
		name string
		env  map[string]string
		args []string
		code int
		want string
	}{
		{"no user", env, nil, 2, "name at least one user"},
		{"bad username", env, []string{"a:b"}, 2, `"a:b"`},
		{"PRESENCE=off here", map[string]string{"REDIS_HOST": host, "REDIS_PORT": port, "PRESENCE": "off"}, []string{"alice"}, 1, "PRESENCE=off"},
		{"never written", env, []string{"alice"}, 1, "no fanout instance has written presence"},
	} {
		res := runCLI(t, c.env, append([]string{"presence"}, c.args...)...)
		if res.code != c.code || !oneLine(res.stderr) || !strings.Contains(res.stderr, c.want) || res.stdout != "" {
			t.Errorf("%s: exit %d, stderr %q, stdout %q; want %d and one line with %q", c.name, res.code, res.stderr, res.stdout, c.code, c.want)
		}
	}
	td := startDaemon(t, r, nil)
	td.waitReady()
	td.dial("alice")
	eventually(t, 3*time.Second, "alice in presence", func() bool {
		res := runCLI(t, env, "presence", "alice", "bob")
		return res.code == 0 && res.stdout == `{"username":"alice","online":true,"connections":1}`+"\n"+`{"username":"bob","online":false,"connections":0}`+"\n"
	})
}

// TestAPresenceTickCutShortByShutdownIsNoFailure: the daemon stopping
// during a periodic tick cancels it; that is neither counted nor logged as
// a failed update (it was, once per stop), and the users stay to be
// written by the leaving tick.
func TestAPresenceTickCutShortByShutdownIsNoFailure(t *testing.T) {
	t.Parallel()
	td := startDaemon(t, startRedis(t), map[string]string{"LOG_LEVEL": "info"})
	td.waitReady()
	p := td.d.presence.(*redisPresence)
	p.changed("alice")
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	p.tick(ctx, false)
	if n := td.d.stats.PresenceErrors.Load(); n != 0 {
		t.Fatalf("presence_errors = %d after a cancelled tick, want 0", n)
	}
	if logs := td.logs.String(); strings.Contains(logs, "Presence update failed") {
		t.Fatalf("a cancelled tick was logged as a failure:\n%s", logs)
	}
	p.mu.Lock()
	_, dirty := p.dirty["alice"]
	p.mu.Unlock()
	if !dirty {
		t.Fatal("alice was dropped from the users to write")
	}
}
