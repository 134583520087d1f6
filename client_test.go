package main

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

func TestBurstOf2000EventsToOneUserAllArriveInOrder(t *testing.T) {
	td := startDaemon(t, startRedis(t), map[string]string{"LOG_LEVEL": "info"})
	td.waitReady()
	conn := td.dial("burst")

	const n = 2000
	pipe := td.pub.Pipeline()
	for i := range n {
		pipe.Publish(context.Background(), channelPrefix+"burst", event("burst", i))
	}
	if _, err := pipe.Exec(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if got, want := readText(t, conn, 10*time.Second), event("burst", i); got != want {
			t.Fatalf("event %d = %s, want %s", i, got, want)
		}
	}
	if got := td.d.stats.FramesDropped.Load() + td.d.stats.SlowDisconnects.Load(); got != 0 {
		t.Fatalf("%d drops or slow disconnects for a client that reads", got)
	}
}

func TestSlowClientIsDisconnectedAloneAndOthersKeepTheirPace(t *testing.T) {
	td := startDaemon(t, startRedis(t), map[string]string{
		"SEND_QUEUE_BYTES": "65536",
		"WRITE_WAIT":       "5s",
		"LOG_LEVEL":        "info",
	})
	td.waitReady()
	stuck := td.dial("slow") // reads nothing until it has overflowed
	fast := td.dial("fast")

	// The fast user reads everything published to it, concurrently.
	fastGot := make(chan string, 4096)
	go func() {
		defer close(fastGot)
		for {
			_ = fast.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, data, err := fast.ReadMessage()
			if err != nil {
				return
			}
			fastGot <- string(data)
		}
	}()

	big := `{"type":"blob","data":"` + strings.Repeat("x", 32<<10) + `"}`
	published := 0
	for i := 0; i < 2000 && td.d.stats.SlowDisconnects.Load() == 0; i++ {
		td.publish("slow", big)
		td.publish("fast", event("fast", i))
		published++
		// The fast user is never held up by the stuck one.
		select {
		case got := <-fastGot:
			if want := event("fast", i); got != want {
				t.Fatalf("fast user got %s, want %s", got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("fast user stalled at event %d", i)
		}
	}
	if td.d.stats.SlowDisconnects.Load() != 1 {
		t.Fatalf("no slow disconnect after %d MiB to a client that does not read", published*len(big)>>20)
	}
	if td.d.hub.connectionCount("fast") != 1 {
		t.Fatal("the fast user's connection was dropped too")
	}

	// The stuck client, reading again, gets what was already on the wire and
	// then the close frame.
	err := readUntilError(stuck)
	if !websocket.IsCloseError(err, websocket.CloseTryAgainLater) {
		t.Fatalf("slow client read error %v, want close 1013", err)
	}
	eventually(t, 5*time.Second, "slow client unregistered", func() bool { return td.d.hub.connectionCount("slow") == 0 })
	eventually(t, 5*time.Second, "slow close logged", func() bool {
		return strings.Contains(td.logs.String(), `msg="Closing client" username=slow`)
	})
}

func TestClientThatNeverReadsIsDroppedAndMemoryStaysBounded(t *testing.T) {
	td := startDaemon(t, startRedis(t), map[string]string{
		"WRITE_WAIT": "300ms",
		"LOG_LEVEL":  "info",
	})
	td.waitReady()
	_ = td.dial("stuck") // never reads, never closes

	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	big := `{"type":"blob","data":"` + strings.Repeat("x", 256<<10) + `"}`
	const count = 160 // 40 MiB to a client that reads nothing
	td.publishPaced("stuck", big, count)
	eventually(t, 10*time.Second, "stuck client dropped", func() bool { return td.d.hub.connectionCount("stuck") == 0 })
	if td.d.stats.SlowDisconnects.Load() != 1 {
		t.Fatalf("SlowDisconnects = %d, want 1", td.d.stats.SlowDisconnects.Load())
	}
	if td.d.stats.RedisFailures.Load() != 0 {
		t.Fatal("the Redis subscription broke while a client was stuck")
	}

	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grown := int64(after.HeapAlloc) - int64(before.HeapAlloc); grown > 16<<20 {
		t.Fatalf("heap grew by %d MiB after 40 MiB to a stuck client", grown>>20)
	}
}
