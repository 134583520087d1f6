package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// BenchmarkIdleConnectionRSS measures the resident memory an idle WebSocket
// connection costs the daemon: the test binary runs as the real daemon in
// its own process, b.N connections are opened to it, and the growth of its
// VmRSS over the idle baseline is reported per connection, at steady state:
// after every connection has answered at least two pings.
//
//	go test -run '^$' -bench IdleConnectionRSS -benchtime 5000x
func BenchmarkIdleConnectionRSS(b *testing.B) {
	r := startRedis(b)
	port := freePort(b)
	cmd := daemonCommand(b, "PORT="+strconv.Itoa(port), "LISTEN_HOST=127.0.0.1",
		"REDIS_HOST=127.0.0.1", "REDIS_PORT="+strconv.Itoa(r.Port),
		// One client address opens every connection: no per-address limit.
		"CONNECT_RATE_PER_IP=0",
		// A ping every second, so that two rounds pass before measuring.
		"PING_INTERVAL=1s", "PONG_WAIT=10s")
	p := startProcess(b, cmd)
	p.waitLog(b, 10*time.Second, "Subscribed to Redis")
	time.Sleep(200 * time.Millisecond) // let start-up allocations settle
	before := vmRSS(b, cmd.Process.Pid)
	connected := func() int { return countLines(p.logs.String(), "New WebSocket connection") }

	url := fmt.Sprintf("ws://127.0.0.1:%d/ws?username=", port)
	conns := make([]*websocket.Conn, 0, b.N)
	var readers sync.WaitGroup
	defer func() {
		for _, c := range conns {
			c.Close()
		}
		readers.Wait()
	}()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c, _, err := websocket.DefaultDialer.Dial(url+"user"+strconv.Itoa(i/2), nil)
		if err != nil {
			b.Fatalf("dial %d: %v", i, err)
		}
		conns = append(conns, c)
		// Reading answers the daemon's pings.
		readers.Go(func() {
			for {
				if _, _, err := c.NextReader(); err != nil {
					return
				}
			}
		})
	}
	b.StopTimer()
	eventually(b, 30*time.Second, "all connections registered", func() bool { return connected() == b.N })
	time.Sleep(2500 * time.Millisecond) // two ping rounds after the last connection
	after := vmRSS(b, cmd.Process.Pid)
	b.ReportMetric(float64(after-before)/float64(b.N), "rss-bytes/conn")
}

// vmRSS returns the resident set size of pid in bytes.
func vmRSS(tb testing.TB, pid int) int64 {
	tb.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	tb.Fatal("no VmRSS")
	return 0
}
