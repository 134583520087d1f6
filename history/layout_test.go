package history

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"fanout/internal/testproc"
)

func TestLayoutNamesPerMode(t *testing.T) {
	for _, tc := range []struct {
		layout       Layout
		key, channel string
	}{
		{Layout{}, "fanout:history:{alice}", "workflow:events:alice"},
		{Layout{Sharded: true}, "fanout:history:{workflow:events:alice}", "workflow:events:alice"},
	} {
		if got := tc.layout.Key("alice"); got != tc.key {
			t.Errorf("%+v.Key(alice) = %q, want %q", tc.layout, got, tc.key)
		}
		if got := tc.layout.Channel("alice"); got != tc.channel {
			t.Errorf("%+v.Channel(alice) = %q, want %q", tc.layout, got, tc.channel)
		}
	}
	// The package functions are the classic layout, as before.
	if HistoryKey("alice") != "fanout:history:{alice}" || Channel("alice") != "workflow:events:alice" {
		t.Fatalf("HistoryKey %q, Channel %q", HistoryKey("alice"), Channel("alice"))
	}
}

func TestShardedKeyIsInTheChannelsClusterSlot(t *testing.T) {
	// The function against what CLUSTER KEYSLOT answers (redis-server 7.0).
	for key, slot := range map[string]int{
		"123456789":                              12739,
		"{user1000}.following":                   3443,
		"foo{}{bar}":                             8363,
		"foo{{bar}}zap":                          4015,
		"foo{bar}{zap}":                          5061,
		"workflow:events:alice":                  8166,
		"fanout:history:{alice}":                 749,
		"fanout:history:{workflow:events:alice}": 8166,
	} {
		if got := Slot(key); got != slot {
			t.Fatalf("slot(%q) = %d, want %d", key, got, slot)
		}
	}
	sharded := Layout{Sharded: true}
	apart := 0
	for _, user := range []string{"alice", "bob", "u", "a.b-c_d@e+f", strings.Repeat("z", 128)} {
		channel := Slot(Channel(user))
		if got := Slot(sharded.Key(user)); got != channel {
			t.Errorf("%s: sharded key %s in slot %d, channel %s in slot %d", user, sharded.Key(user), got, Channel(user), channel)
		}
		if Slot(Layout{}.Key(user)) != channel {
			apart++
		}
	}
	// Why sharded mode needs its own key: the classic one is elsewhere.
	if apart == 0 {
		t.Fatal("every classic key is in its channel's slot")
	}
}

// publisherClients returns the two kinds of client a publisher is given,
// over the one Redis at addr: a *redis.Client, and a *redis.ClusterClient
// told that this server holds every slot (its pipeline, script loading and
// routing are the cluster client's; the server is not a cluster).
func publisherClients(t *testing.T, addr string) map[string]redis.UniversalClient {
	t.Helper()
	single := redis.NewClient(&redis.Options{Addr: addr})
	cluster := redis.NewClusterClient(&redis.ClusterOptions{
		ClusterSlots: func(context.Context) ([]redis.ClusterSlot, error) {
			return []redis.ClusterSlot{{Start: 0, End: 16383, Nodes: []redis.ClusterNode{{Addr: addr}}}}, nil
		},
	})
	t.Cleanup(func() {
		single.Close()
		cluster.Close()
	})
	return map[string]redis.UniversalClient{"Client": single, "ClusterClient": cluster}
}

// listeners are the two ways an instance listens: SSUBSCRIBE to one
// channel (PUBSUB_SHARDED=true) and PSUBSCRIBE to all of them.
type listeners struct {
	sharded, pattern *redis.PubSub
}

func listen(t *testing.T, rdb *redis.Client, username string) listeners {
	t.Helper()
	ctx := context.Background()
	l := listeners{
		sharded: rdb.SSubscribe(ctx, Channel(username)),
		pattern: rdb.PSubscribe(ctx, ChannelPrefix+"*"),
	}
	t.Cleanup(func() {
		l.sharded.Close()
		l.pattern.Close()
	})
	// The confirmations: from here on no message is missed.
	for _, sub := range []*redis.PubSub{l.sharded, l.pattern} {
		if _, err := sub.Receive(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

func receiveWithin(t *testing.T, sub *redis.PubSub, what string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	msg, err := sub.ReceiveMessage(ctx)
	if err != nil {
		t.Fatalf("%s received nothing: %v", what, err)
	}
	return msg.Payload
}

// expectShardedOnly checks that the SSUBSCRIBE'd listener received
// payloads in order and the PSUBSCRIBE'd one none of them: after a marker
// published plainly, the marker is the first it gets.
func (l listeners) expectShardedOnly(t *testing.T, rdb *redis.Client, username string, payloads ...string) {
	t.Helper()
	for i, want := range payloads {
		if got := receiveWithin(t, l.sharded, "SSUBSCRIBE"); got != want {
			t.Fatalf("SSUBSCRIBE message %d is %s, want %s", i, got, want)
		}
	}
	const marker = `{"marker":true}`
	if err := rdb.Publish(context.Background(), Channel(username), marker).Err(); err != nil {
		t.Fatal(err)
	}
	if got := receiveWithin(t, l.pattern, "PSUBSCRIBE"); got != marker {
		t.Fatalf("PSUBSCRIBE got %s before the marker: a sharded event reached a pattern subscriber", got)
	}
}

// expectKept checks that username's sharded history key, and only it,
// holds payloads with ids.
func expectKept(t *testing.T, rdb *redis.Client, username string, ids []string, payloads ...string) {
	t.Helper()
	ctx := context.Background()
	msgs, err := rdb.XRange(ctx, "fanout:history:{workflow:events:"+username+"}", "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != len(payloads) || len(ids) != len(payloads) {
		t.Fatalf("%d ids, %d entries in the sharded key, want %d", len(ids), len(msgs), len(payloads))
	}
	for i, m := range msgs {
		if m.ID != ids[i] || m.Values["d"] != payloads[i] {
			t.Fatalf("entry %d is %s %v, want %s %s", i, m.ID, m.Values, ids[i], payloads[i])
		}
	}
	if n := rdb.Exists(ctx, HistoryKey(username)).Val(); n != 0 {
		t.Fatal("the classic key was written in the sharded layout")
	}
	if ttl := rdb.PTTL(ctx, Layout{Sharded: true}.Key(username)).Val(); ttl <= 0 || ttl > DefaultTTL {
		t.Fatalf("PTTL %v, want up to %v", ttl, DefaultTTL)
	}
}

func TestShardedPublisherSpublishesAndKeepsTheEventUnderTheChannelsKey(t *testing.T) {
	addr := testproc.StartRedis(t).Addr()
	observer := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { observer.Close() })
	ctx := context.Background()
	for name, rdb := range publisherClients(t, addr) {
		t.Run(name, func(t *testing.T) {
			user := "alice-" + name
			l := listen(t, observer, user)
			pub := NewPublisher(rdb, Retention{})
			pub.Layout = Layout{Sharded: true}

			id, err := pub.Publish(ctx, user, []byte(`{"n":1}`))
			if err != nil {
				t.Fatal(err)
			}
			l.expectShardedOnly(t, observer, user, Envelope(id, `{"n":1}`))

			more, err := pub.PublishAll(ctx, user, [][]byte{[]byte(`{"n":2}`), []byte(`{"n":3}`)})
			if err != nil {
				t.Fatal(err)
			}
			l.expectShardedOnly(t, observer, user, Envelope(more[0], `{"n":2}`), Envelope(more[1], `{"n":3}`))
			expectKept(t, observer, user, append([]string{id}, more...), `{"n":1}`, `{"n":2}`, `{"n":3}`)

			// Read back through the layout.
			evs, err := pub.Layout.After(ctx, observer, user, id, 10)
			if err != nil || len(evs) != 2 || evs[0].ID != more[0] || evs[1].ID != more[1] {
				t.Fatalf("After %s: %+v %v", id, evs, err)
			}
			if evs, err = pub.Layout.From(ctx, observer, user, id, 1); err != nil || len(evs) != 1 || evs[0].ID != id {
				t.Fatalf("From %s: %+v %v", id, evs, err)
			}
			if evs, err = pub.Layout.Last(ctx, observer, user, 2); err != nil || len(evs) != 2 || evs[1].ID != more[1] {
				t.Fatalf("Last 2: %+v %v", evs, err)
			}
		})
	}
}

func TestClassicPublisherOnAClusterClientPublishesToEveryListener(t *testing.T) {
	addr := testproc.StartRedis(t).Addr()
	observer := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { observer.Close() })
	ctx := context.Background()
	rdb := publisherClients(t, addr)["ClusterClient"]
	sub := observer.PSubscribe(ctx, ChannelPrefix+"*")
	t.Cleanup(func() { sub.Close() })
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	ids, err := NewPublisher(rdb, Retention{}).PublishAll(ctx, "bob", [][]byte{[]byte(`{"n":1}`), []byte(`{"n":2}`)})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{Envelope(ids[0], `{"n":1}`), Envelope(ids[1], `{"n":2}`)} {
		if got := receiveWithin(t, sub, "PSUBSCRIBE"); got != want {
			t.Fatalf("PSUBSCRIBE got %s, want %s", got, want)
		}
	}
	evs, err := After(ctx, observer, "bob", "", 10)
	if err != nil || len(evs) != 2 || evs[0].ID != ids[0] || evs[1].ID != ids[1] {
		t.Fatalf("classic history %+v %v, want ids %v", evs, err, ids)
	}
}

func TestPublishAndPublishAllRecoverFromNOSCRIPT(t *testing.T) {
	addr := testproc.StartRedis(t).Addr()
	observer := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { observer.Close() })
	ctx := context.Background()
	for name, rdb := range publisherClients(t, addr) {
		for _, layout := range []Layout{{}, {Sharded: true}} {
			t.Run(fmt.Sprintf("%s/sharded=%v", name, layout.Sharded), func(t *testing.T) {
				user := fmt.Sprintf("carol-%s-%v", name, layout.Sharded)
				pub := NewPublisher(rdb, Retention{})
				pub.Layout = layout
				var ids, want []string
				// Each call finds the scripts gone, as after a restart or
				// the failover to a replica that never loaded them.
				for round := range 3 {
					if err := observer.ScriptFlush(ctx).Err(); err != nil {
						t.Fatal(err)
					}
					payload := fmt.Sprintf(`{"round":%d}`, round)
					id, err := pub.Publish(ctx, user, []byte(payload))
					if err != nil {
						t.Fatalf("Publish after SCRIPT FLUSH: %v", err)
					}
					ids, want = append(ids, id), append(want, payload)

					if err := observer.ScriptFlush(ctx).Err(); err != nil {
						t.Fatal(err)
					}
					var batch [][]byte
					for i := range 50 {
						batch = append(batch, fmt.Appendf(nil, `{"round":%d,"n":%d}`, round, i))
						want = append(want, string(batch[i]))
					}
					more, err := pub.PublishAll(ctx, user, batch)
					if err != nil {
						t.Fatalf("PublishAll after SCRIPT FLUSH: %v (%d ids)", err, len(more))
					}
					ids = append(ids, more...)
				}
				evs, err := layout.After(ctx, observer, user, "", 1000)
				if err != nil {
					t.Fatal(err)
				}
				if len(evs) != len(want) || len(ids) != len(want) {
					t.Fatalf("%d events, %d ids, want %d", len(evs), len(ids), len(want))
				}
				for i := range want {
					if evs[i].ID != ids[i] || evs[i].Data != want[i] {
						t.Fatalf("event %d is %s %s, want %s %s", i, evs[i].ID, evs[i].Data, ids[i], want[i])
					}
				}
			})
		}
	}
}

func TestShardedLayoutRecordsUnderTheChannelsKey(t *testing.T) {
	rdb := client(t)
	ctx := context.Background()
	sharded := Layout{Sharded: true}
	pub := NewPublisher(rdb, Retention{})
	pub.Layout = sharded
	id, err := pub.Publish(ctx, "dan", []byte(`{"n":1}`))
	if err != nil {
		t.Fatal(err)
	}
	// An instance finds the published event under the sharded key and
	// appends the next one there.
	pipe := rdb.Pipeline()
	rec := sharded.Record(ctx, pipe, "dan", Cursor{}, Retention{}, []string{`{"n":1}`, `{"n":2}`})
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	got, _, err := rec.Result()
	if err != nil {
		t.Fatal(err)
	}
	if got[0].ID != id || got[0].Appended || !got[1].Appended {
		t.Fatalf("recorded %+v, want %s found then one appended", got, id)
	}
	if n := rdb.XLen(ctx, sharded.Key("dan")).Val(); n != 2 {
		t.Fatalf("sharded key holds %d entries, want 2", n)
	}
	if n := rdb.Exists(ctx, HistoryKey("dan")).Val(); n != 0 {
		t.Fatal("the classic key was written")
	}
}
