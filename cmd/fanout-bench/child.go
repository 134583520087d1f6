package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// childEnv carries the child's configuration (JSON) from the parent; its
// presence is what makes the process a child.
const childEnv = "FANOUT_BENCH_CHILD"

// childConfig is what a child needs: the global connection indices [Lo, Hi)
// it opens. Connection i watches user i % Users and binds source address
// 127.0.0.(1 + i % Sources).
type childConfig struct {
	URL         string        `json:"url"`
	Users       int           `json:"users"`
	Sources     int           `json:"sources"`
	Lo          int           `json:"lo"`
	Hi          int           `json:"hi"`
	DialWorkers int           `json:"dial_workers"`
	Timeout     time.Duration `json:"timeout"`  // bound of the connect phase
	MaxLife     time.Duration `json:"max_life"` // the child exits after this, whatever happens
}

// childMsg is one line a child writes on stdout: "c" (connect phase done),
// "p" (progress: deliveries so far), "s" (final summary).
type childMsg struct {
	T string `json:"t"`
	// "c"
	OK     int      `json:"ok,omitempty"`
	Fail   int      `json:"fail,omitempty"`
	Failed []int    `json:"failed,omitempty"` // global indices of failed connections
	Errs   []string `json:"errs,omitempty"`   // a few distinct dial errors
	// "p" and "s"
	D int64 `json:"d,omitempty"` // deliveries (right user, not a duplicate)
	// "s"
	Dups        int64          `json:"dups,omitempty"`
	OOO         int64          `json:"ooo,omitempty"`
	Leaks       int64          `json:"leaks,omitempty"`
	ParseErrs   int64          `json:"parse_errs,omitempty"`
	Disconnects int64          `json:"disconnects,omitempty"`
	LastRecvNs  [2]int64       `json:"last_recv_ns,omitempty"` // per phase
	Hist        [2][][2]uint64 `json:"hist,omitempty"`         // per phase, sparse
	HistMax     [2]int64       `json:"hist_max,omitempty"`
	CPUTicks    int64          `json:"cpu_ticks,omitempty"` // the child's own utime+stime
}

// benchConn is one client connection and its delivery bookkeeping; only its
// reader goroutine touches last and seen.
type benchConn struct {
	ws   *websocket.Conn
	user string
	last int64    // highest sequence number seen
	seen []uint64 // bitset of sequence numbers seen, for exact duplicates
}

type childState struct {
	out      *bufio.Writer
	outMu    sync.Mutex
	stopping atomic.Bool

	delivered, dups, ooo, leaks, parseErrs, disconnects atomic.Int64
	lastRecv                                            [2]atomic.Int64 // per phase

	histMu [16]sync.Mutex
	hists  [16][2]histogram
}

func (s *childState) send(m childMsg) {
	b, _ := json.Marshal(m)
	s.outMu.Lock()
	s.out.Write(b)
	s.out.WriteByte('\n')
	s.out.Flush()
	s.outMu.Unlock()
}

func runChild(raw string) {
	var cfg childConfig
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "fanout-bench child: bad config:", err)
		os.Exit(2)
	}
	// Hard bound on the child's life, whatever the parent does.
	time.AfterFunc(cfg.MaxLife, func() {
		fmt.Fprintln(os.Stderr, "fanout-bench child: max life reached, exiting")
		os.Exit(3)
	})
	s := &childState{out: bufio.NewWriterSize(os.Stdout, 64<<10)}

	dialers := make([]*websocket.Dialer, cfg.Sources)
	for i := range dialers {
		local := &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+i))}
		nd := &net.Dialer{LocalAddr: local, Timeout: 10 * time.Second}
		dialers[i] = &websocket.Dialer{
			NetDialContext:   nd.DialContext,
			HandshakeTimeout: 10 * time.Second,
			ReadBufferSize:   1024,
			WriteBufferSize:  512,
		}
	}

	n := cfg.Hi - cfg.Lo
	conns := make([]*benchConn, n)
	var next atomic.Int64
	var mu sync.Mutex
	var failed []int
	errSeen := map[string]bool{}
	var errs []string
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
	var wg sync.WaitGroup
	for w := 0; w < cfg.DialWorkers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				j := int(next.Add(1) - 1)
				if j >= n {
					return
				}
				gi := cfg.Lo + j
				user := "u" + strconv.Itoa(gi%cfg.Users)
				var ws *websocket.Conn
				err := ctx.Err()
				if err == nil {
					ws, _, err = dialers[gi%cfg.Sources].DialContext(ctx, cfg.URL+"?username="+user, nil)
				}
				if err != nil {
					mu.Lock()
					failed = append(failed, gi)
					if e := err.Error(); !errSeen[e] && len(errs) < 5 {
						errSeen[e] = true
						errs = append(errs, e)
					}
					mu.Unlock()
					continue
				}
				c := &benchConn{ws: ws, user: user}
				conns[j] = c
				go s.read(c, j)
			}
		}()
	}
	wg.Wait()
	cancel()
	s.send(childMsg{T: "c", OK: n - len(failed), Fail: len(failed), Failed: failed, Errs: errs})

	// Progress every 10 ms (only when it changed), until stopped.
	go func() {
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		last := int64(-1)
		for range t.C {
			if s.stopping.Load() {
				return
			}
			if d := s.delivered.Load(); d != last {
				last = d
				s.send(childMsg{T: "p", D: d})
			}
		}
	}()

	// Wait for "stop" (or EOF) from the parent.
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if sc.Text() == "stop" {
			break
		}
	}
	s.stopping.Store(true)
	sum := childMsg{T: "s", D: s.delivered.Load(), Dups: s.dups.Load(), OOO: s.ooo.Load(),
		Leaks: s.leaks.Load(), ParseErrs: s.parseErrs.Load(), Disconnects: s.disconnects.Load(),
		LastRecvNs: [2]int64{s.lastRecv[0].Load(), s.lastRecv[1].Load()}, CPUTicks: cpuTicks(os.Getpid())}
	var merged [2]histogram
	for i := range s.hists {
		s.histMu[i].Lock()
		for p := 0; p < 2; p++ {
			merged[p].merge(s.hists[i][p].sparse(), s.hists[i][p].max)
		}
		s.histMu[i].Unlock()
	}
	for p := 0; p < 2; p++ {
		sum.Hist[p] = merged[p].sparse()
		sum.HistMax[p] = merged[p].max
	}
	s.send(sum)
	// Exiting closes every socket at once.
	os.Exit(0)
}

// read is the one goroutine per connection: it reads each frame into a
// reused buffer and hand-scans the few fields it needs.
func (s *childState) read(c *benchConn, j int) {
	c.ws.SetReadLimit(1 << 20)
	buf := make([]byte, 0, 512)
	shard := j % len(s.hists)
	for {
		_, r, err := c.ws.NextReader()
		if err != nil {
			if !s.stopping.Load() {
				s.disconnects.Add(1)
			}
			return
		}
		buf = buf[:0]
		for {
			if len(buf) == cap(buf) {
				buf = append(buf, 0)[:len(buf)]
			}
			m, err := r.Read(buf[len(buf):cap(buf)])
			buf = buf[:len(buf)+m]
			if err == io.EOF {
				break
			}
			if err != nil {
				if !s.stopping.Load() {
					s.disconnects.Add(1)
				}
				return
			}
		}
		now := time.Now().UnixNano()
		ev, ok := scanEvent(buf)
		if !ok {
			s.parseErrs.Add(1)
			continue
		}
		if string(ev.user) != c.user {
			s.leaks.Add(1)
			continue
		}
		if ev.seq <= 0 || ev.seq > 1<<24 {
			s.parseErrs.Add(1)
			continue
		}
		w, bit := int(ev.seq>>6), uint64(1)<<(ev.seq&63)
		for len(c.seen) <= w {
			c.seen = append(c.seen, 0)
		}
		if c.seen[w]&bit != 0 {
			s.dups.Add(1)
			continue
		}
		c.seen[w] |= bit
		if ev.seq < c.last {
			s.ooo.Add(1)
		} else {
			c.last = ev.seq
		}
		p := 0
		if ev.phase == 2 {
			p = 1
		}
		s.histMu[shard].Lock()
		s.hists[shard][p].record(now - ev.sentNs)
		s.histMu[shard].Unlock()
		s.delivered.Add(1)
		for {
			old := s.lastRecv[p].Load()
			if now <= old || s.lastRecv[p].CompareAndSwap(old, now) {
				break
			}
		}
	}
}
