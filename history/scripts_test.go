package history

import (
	"context"
	"fmt"
	"testing"

	"github.com/redis/go-redis/v9"

	"fanout/internal/testproc"
)

func TestExecScriptsLoadsTheScriptsAndSendsTheRefusedCallsAgain(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: testproc.StartRedis(t).Addr()})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	for round := range 2 {
		// As after a restart: every call of the pipeline is refused first.
		if err := rdb.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		pipe := rdb.Pipeline()
		var recs []Recording
		for _, user := range []string{"ida", "jay"} {
			recs = append(recs, Record(ctx, pipe, user, Cursor{}, Retention{}, []string{fmt.Sprintf(`{"round":%d}`, round)}))
		}
		if err := ExecScripts(ctx, rdb, pipe); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		for i, rec := range recs {
			got, _, err := rec.Result()
			if err != nil || len(got) != 1 || got[0].ID == "" || !got[0].Appended {
				t.Fatalf("round %d user %d: %+v %v, want one appended event", round, i, got, err)
			}
		}
	}
	for _, user := range []string{"ida", "jay"} {
		if n := rdb.XLen(ctx, HistoryKey(user)).Val(); n != 2 {
			t.Fatalf("%s has %d events, want 2", user, n)
		}
	}
}

func TestExecScriptsDoesNotSendARefusedCallAfterALaterOneOnItsKey(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: testproc.StartRedis(t).Addr()})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	publish := func(pipe redis.Pipeliner, user, payload string) *redis.Cmd {
		return publishScript.EvalSha(ctx, pipe, []string{HistoryKey(user)}, Channel(user), payload, DefaultMaxLen, DefaultTTL.Milliseconds())
	}
	// Another process loads the script between two calls of the
	// pipeline: kim's first call was refused, her second ran.
	pipe := rdb.Pipeline()
	kimFirst := publish(pipe, "kim", `{"n":1}`)
	lee := publish(pipe, "lee", `{"n":1}`)
	pipe.ScriptLoad(ctx, PublishSource)
	kimSecond := publish(pipe, "kim", `{"n":2}`)
	err := ExecScripts(ctx, rdb, pipe)
	if !IsNoScript(err) || !IsNoScript(kimFirst.Err()) {
		t.Fatalf("err %v, kim's first call %v: want it refused, not sent after her second", err, kimFirst.Err())
	}
	if lee.Err() != nil || kimSecond.Err() != nil {
		t.Fatalf("lee %v, kim's second %v: want both run", lee.Err(), kimSecond.Err())
	}
	evs, err := After(ctx, rdb, "kim", "", 10)
	if err != nil || len(evs) != 1 || evs[0].Data != `{"n":2}` {
		t.Fatalf("kim's history %+v %v, want only the second event", evs, err)
	}
	if n := rdb.XLen(ctx, HistoryKey("lee")).Val(); n != 1 {
		t.Fatalf("lee has %d events, want 1", n)
	}
}
