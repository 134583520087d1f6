package history

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

func TestEnvelopeCarriesTheIDAndThePayloadByteForByte(t *testing.T) {
	payload := `{"type":"node_completed","text":"a #b c"}`
	msg := Envelope("1733050000000-7", payload)
	if msg != `#1733050000000-7 `+payload {
		t.Fatalf("Envelope = %q", msg)
	}
	id, got, ok := OpenEnvelope(msg)
	if !ok || id != "1733050000000-7" || got != payload {
		t.Fatalf("OpenEnvelope = %q %q %v", id, got, ok)
	}
	for _, bad := range []string{
		``, `{"x":1}`, ` #1-0 {}`, `#`, `#1-0`, `#1733050000000 {}`, `#x-0 {}`, `#1-0-0 {}`, `#-1 {}`,
	} {
		if id, got, ok := OpenEnvelope(bad); ok {
			t.Errorf("OpenEnvelope(%q) = %q %q, want not an envelope", bad, id, got)
		}
	}
	if IsEnvelope(`{"x":1}`) || IsEnvelope(``) || !IsEnvelope(`#garbage`) {
		t.Error("IsEnvelope tells JSON from an envelope by its first byte")
	}
}

func FuzzOpenEnvelope(f *testing.F) {
	f.Add("#1-0 {}")
	f.Add(`#1733050000000-7 {"a":1}`)
	f.Add("#1-0")
	f.Fuzz(func(t *testing.T, msg string) {
		id, payload, ok := OpenEnvelope(msg)
		if !ok {
			return
		}
		if _, valid := ParseID(id); !valid {
			t.Fatalf("id %q is not an id", id)
		}
		if Envelope(id, payload) != msg {
			t.Fatalf("%q opens to %q %q, which wrap to another message", msg, id, payload)
		}
	})
}

func TestCursorKnownMovesPastTheIDOnly(t *testing.T) {
	h := Horizon(time.UnixMilli(86400000))
	if got := h.Known("86400000-0"); got.After != "86400000-0" || !got.Entry {
		t.Fatalf("from a horizon: %+v", got)
	}
	c := Cursor{After: "10-0", Entry: true, Consumed: []string{"11-0", "13-0"}}
	if got := c.Known("12-0"); got.After != "12-0" || !got.Entry || len(got.Consumed) != 1 || got.Consumed[0] != "13-0" {
		t.Fatalf("after 10-0 with 11-0, 13-0 consumed: %+v", got)
	}
	if len(c.Consumed) != 2 {
		t.Fatal("Known changed the cursor it was called on")
	}
	for _, same := range []string{"10-0", "9-5", "not an id"} {
		if got := c.Known(same); got.After != c.After || len(got.Consumed) != 2 {
			t.Fatalf("Known(%q) moved the cursor: %+v", same, got)
		}
	}
}

// Instances that take the ids of envelopes as they come, locally
// (Cursor.Known) or inside the record script (an envelope without its
// payload, as the recorder sends a user's mixed batch), and record the
// plain events with the script, give every event the same id, the id the
// publish script gave it, and together append each plain event once,
// whatever the interleaving of plain and script publishes and of the
// instances' recordings. (Matching script-published events by their
// payload, as instances did before envelopes, could append one of them
// again when the first event an instance sees from its horizon is a plain
// one appended after it.)
func TestKnownIDsAgreeAcrossInstancesAndAppendEachEventOnce(t *testing.T) {
	rdb := client(t)
	ctx := context.Background()
	pub := NewPublisher(rdb, Retention{})
	for seed := range uint64(12) {
		user := fmt.Sprintf("mix%d", seed)
		rng := rand.New(rand.NewPCG(seed, 23))
		type published struct{ payload, id string }
		var msgs []published
		local := &instance{rdb: rdb}   // Known, then the script for each plain event
		batched := &instance{rdb: rdb} // everything it has not seen in one script call
		late := subscribed(t, rdb)     // the same, from the horizon of its subscription
		instances := []*instance{local, batched, late}
		got := map[*instance][]string{}
		catchUp := func(in *instance) {
			todo := msgs[len(got[in]):]
			if in == local {
				for _, m := range todo {
					if m.id != "" {
						in.cur = in.cur.Known(m.id)
						got[in] = append(got[in], m.id)
						continue
					}
					got[in] = append(got[in], in.record(t, user, m.payload)[0].ID)
				}
				return
			}
			if len(todo) == 0 {
				return
			}
			args := make([]string, len(todo))
			for i, m := range todo {
				args[i] = m.payload
				if m.id != "" {
					args[i] = Envelope(m.id, "")
				}
			}
			for _, r := range in.record(t, user, args...) {
				got[in] = append(got[in], r.ID)
			}
		}
		for i := range 60 {
			payload := fmt.Sprintf(`{"n":%d}`, i)
			if rng.IntN(2) == 0 {
				msgs = append(msgs, published{payload: payload})
			} else {
				id, err := pub.Publish(ctx, user, []byte(payload))
				if err != nil {
					t.Fatal(err)
				}
				msgs = append(msgs, published{payload: payload, id: id})
			}
			for _, in := range instances {
				if rng.IntN(4) == 0 {
					catchUp(in)
				}
			}
		}
		for _, in := range instances {
			catchUp(in)
		}
		// The script moves past a known id as Known does: no entry is
		// looked through again.
		if batched.cur.After != local.cur.After || late.cur.After != local.cur.After {
			t.Fatalf("seed %d: cursors local %+v, batched %+v, late %+v", seed, local.cur, batched.cur, late.cur)
		}
		seen := make(map[string]bool)
		for i, m := range msgs {
			id := got[local][i]
			if got[batched][i] != id || got[late][i] != id || (m.id != "" && m.id != id) || id == "" {
				t.Fatalf("seed %d, event %d (%s, published with id %q): local %s, batched %s, late %s",
					seed, i, m.payload, m.id, id, got[batched][i], got[late][i])
			}
			if seen[id] {
				t.Fatalf("seed %d: id %s given twice", seed, id)
			}
			seen[id] = true
		}
		if n := streamLen(t, rdb, user); n != int64(len(msgs)) {
			t.Fatalf("seed %d: stream holds %d entries for %d events", seed, n, len(msgs))
		}
	}
}
