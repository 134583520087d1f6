package history

import (
	"context"
	"testing"
	"time"
)

// appendAlone runs one AppendUsers call of owner for user's payloads.
func appendAlone(t *testing.T, in *instance, owner, user string, payloads ...string) ([]string, bool) {
	t.Helper()
	ctx := context.Background()
	pipe := in.rdb.Pipeline()
	call := Layout{}.AppendUsers(ctx, pipe, in.retention, owner, []UserEvents{{Username: user, Payloads: payloads}})
	_, _ = pipe.Exec(ctx)
	ids, held, err := call.IDs()
	if err != nil {
		t.Fatalf("append: %v", err)
	}
	if !held {
		return nil, false
	}
	return ids[0], true
}

func TestAppendUsersAppendsOnlyWhileItsInstanceHoldsSoloKey(t *testing.T) {
	rdb := client(t)
	ctx := context.Background()
	in := subscribed(t, rdb)
	if _, held := appendAlone(t, in, "a", "u", `{"n":1}`); held {
		t.Fatal("appended with SoloKey unset")
	}
	rdb.Set(ctx, SoloKey, "b", time.Minute)
	if _, held := appendAlone(t, in, "a", "u", `{"n":1}`); held {
		t.Fatal("appended with SoloKey held by another instance")
	}
	if n := streamLen(t, rdb, "u"); n != 0 {
		t.Fatalf("%d entries appended without SoloKey", n)
	}
	rdb.Set(ctx, SoloKey, "a", time.Minute)
	ids, held := appendAlone(t, in, "a", "u", `{"n":1}`, `{"n":1}`, `{"n":2}`)
	if !held || len(ids) != 3 {
		t.Fatalf("held %v, ids %v", held, ids)
	}
	entries, err := rdb.XRange(ctx, HistoryKey("u"), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{`{"n":1}`, `{"n":1}`, `{"n":2}`}
	if len(entries) != len(want) {
		t.Fatalf("%d entries, want %d", len(entries), len(want))
	}
	for i, e := range entries {
		if e.ID != ids[i] || e.Values["d"] != want[i] {
			t.Fatalf("entry %d: %s %v, want %s %s", i, e.ID, e.Values, ids[i], want[i])
		}
	}
	if ttl := rdb.PTTL(ctx, HistoryKey("u")).Val(); ttl <= 0 {
		t.Fatalf("history TTL %v after appending", ttl)
	}
}

// TestRecordAppendsNothingWhileAnotherInstanceHoldsSoloKey: the fence. An
// instance that names itself finds the holder's entries and waits for the
// others (pending) while another instance holds SoloKey, and appends as
// usual once it is gone; one that names no instance (a Redis Cluster)
// ignores the key.
func TestRecordAppendsNothingWhileAnotherInstanceHoldsSoloKey(t *testing.T) {
	rdb := client(t)
	ctx := context.Background()
	holder, other := subscribed(t, rdb), subscribed(t, rdb)
	rdb.Set(ctx, SoloKey, "holder", time.Minute)
	ids, held := appendAlone(t, holder, "holder", "u", `{"n":1}`)
	if !held {
		t.Fatal("the holder could not append")
	}
	// One event, nothing after the instance's place (the script's
	// shortcut): pending.
	ahead := subscribed(t, rdb)
	ahead.cur = Cursor{After: ids[0], Entry: true}
	if got := ahead.recordAs(t, "other", "u", `{"n":2}`); !got[0].Pending {
		t.Fatalf("one event after the last entry: %+v, want pending", got[0])
	}
	got := other.recordAs(t, "other", "u", `{"n":1}`, `{"n":2}`, `{"n":3}`)
	if got[0].ID != ids[0] || got[0].Appended || got[0].Pending {
		t.Fatalf("the holder's entry: %+v, want found as %s", got[0], ids[0])
	}
	for _, r := range got[1:] {
		if !r.Pending || r.ID != "" {
			t.Fatalf("an event the holder has not appended: %+v, want pending", r)
		}
	}
	if n := streamLen(t, rdb, "u"); n != 1 {
		t.Fatalf("%d entries: the fenced instance appended", n)
	}
	// Its own key does not fence an instance.
	rdb.Set(ctx, SoloKey, "other", time.Minute)
	got = other.recordAs(t, "other", "u", `{"n":2}`)
	if !got[0].Appended {
		t.Fatalf("with SoloKey its own: %+v, want appended", got[0])
	}
	rdb.Set(ctx, SoloKey, "holder", time.Minute)
	if got := other.recordAs(t, "", "u", `{"n":3}`); !got[0].Appended {
		t.Fatalf("naming no instance: %+v, want appended", got[0])
	}
	rdb.Del(ctx, SoloKey)
	if got := other.recordAs(t, "other", "u", `{"n":4}`); !got[0].Appended {
		t.Fatalf("with SoloKey gone: %+v, want appended", got[0])
	}
	if n := streamLen(t, rdb, "u"); n != 4 {
		t.Fatalf("%d entries, want 4", n)
	}
}
