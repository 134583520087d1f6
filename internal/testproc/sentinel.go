package testproc

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	// sentinelDownAfter is how long a sentinel waits before it calls a
	// silent master subjectively down. At 1 s a loaded machine (the whole
	// suite on 2 cores) once had the sentinels call the master they had
	// just promoted down, 1 s after the promotion, and fail back.
	sentinelDownAfter = 2000 * time.Millisecond
	// sentinelFailoverTimeout bounds one failover attempt (and the wait
	// before the next one).
	sentinelFailoverTimeout = 3000 * time.Millisecond
	// sentinelQuorum sentinels must agree that the master is down.
	sentinelQuorum = 2
)

// Sentinel is a real redis-sentinel on a free loopback port, owned by one
// test and stopped by its cleanup.
type Sentinel struct {
	Port int
	proc *Process
}

// Addr is the sentinel's host:port.
func (p *Sentinel) Addr() string { return Addr(p.Port) }

// startSentinel starts a sentinel monitoring masterAddr as name.
func startSentinel(tb testing.TB, dir, name, masterAddr string) *Sentinel {
	tb.Helper()
	host, port, _ := net.SplitHostPort(masterAddr)
	var lastErr error
	for range 5 {
		p := &Sentinel{Port: FreePort(tb)}
		// The sentinel rewrites its config file as it learns.
		confPath := filepath.Join(dir, fmt.Sprintf("sentinel-%d.conf", p.Port))
		conf := fmt.Sprintf(`port %d
bind 127.0.0.1
daemonize no
loglevel warning
dir %s
sentinel monitor %s %s %s %d
sentinel down-after-milliseconds %s %d
sentinel failover-timeout %s %d
sentinel parallel-syncs %s 1
`, p.Port, dir, name, host, port, sentinelQuorum,
			name, sentinelDownAfter.Milliseconds(), name, sentinelFailoverTimeout.Milliseconds(), name)
		if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
			tb.Fatalf("write %s: %v", confPath, err)
		}
		if lastErr = p.start(tb, confPath); lastErr == nil {
			return p
		}
	}
	tb.Fatalf("start redis-sentinel: %v", lastErr)
	return nil
}

// start runs the sentinel and waits until it answers PING.
func (p *Sentinel) start(tb testing.TB, confPath string) error {
	proc, err := start(tb, exec.Command("redis-sentinel", confPath))
	if err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if proc.Exited() {
			return fmt.Errorf("redis-sentinel exited: %s", strings.TrimSpace(proc.Output()))
		}
		if _, err := Query(p.Addr(), "PING"); err == nil {
			p.proc = proc
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	proc.Kill()
	return fmt.Errorf("redis-sentinel did not answer PING within 10s")
}

// SentinelSet is a master, its replica and three sentinels (quorum 2)
// that fail the master over about two seconds after it dies.
type SentinelSet struct {
	tb testing.TB
	// Master is the master as of the last WaitFailover (at first, the one
	// the set started with); Replica is the other server.
	Master, Replica *Redis
	Sentinels       []*Sentinel
	// Name is the master name the sentinels monitor.
	Name string
	// Killed is the server the last KillMaster stopped.
	Killed *Redis
	// dataArgs are the options master and replica run with.
	dataArgs []string
}

// StartSentinelSet starts a master with one replica and three sentinels,
// and returns once the replica is in sync and every sentinel knows the
// replica and the two other sentinels, so that a failover can start at
// once.
func StartSentinelSet(tb testing.TB) *SentinelSet {
	tb.Helper()
	NeedTool(tb, "redis-sentinel")
	// A replica writes the RDB it syncs from to its dir: keep it out of
	// the package directory. A master sends it at once, not after waiting
	// 5s for more replicas.
	s := &SentinelSet{tb: tb, Name: "mymaster",
		dataArgs: []string{"--dir", tb.TempDir(), "--repl-diskless-sync-delay", "0"}}
	s.Master = StartRedis(tb, s.dataArgs...)
	s.Replica = StartRedis(tb, append(slices.Clone(s.dataArgs), "--replicaof", "127.0.0.1", strconv.Itoa(s.Master.Port))...)
	WaitFor(tb, 10*time.Second, "replica "+s.Replica.Addr()+" in sync with "+s.Master.Addr(), func() string {
		info, err := QueryText(s.Replica.Addr(), "INFO", "replication")
		if err != nil {
			return err.Error()
		}
		if status := InfoField(info, "master_link_status"); status != "up" {
			return "master_link_status:" + status
		}
		return ""
	})
	dir := tb.TempDir()
	for range 3 {
		s.Sentinels = append(s.Sentinels, startSentinel(tb, dir, s.Name, s.Master.Addr()))
	}
	WaitFor(tb, 15*time.Second, "sentinels know the replica and each other", func() string {
		for _, p := range s.Sentinels {
			reply, err := Query(p.Addr(), "SENTINEL", "MASTER", s.Name)
			if err != nil {
				return p.Addr() + ": " + err.Error()
			}
			fields := sentinelFields(reply)
			if fields["num-slaves"] != "1" || fields["num-other-sentinels"] != "2" || fields["flags"] != "master" {
				return fmt.Sprintf("%s: flags %s, num-slaves %s, num-other-sentinels %s",
					p.Addr(), fields["flags"], fields["num-slaves"], fields["num-other-sentinels"])
			}
		}
		return ""
	})
	return s
}

// sentinelFields turns a SENTINEL MASTER reply (a flat list or a RESP3
// map) into a map.
func sentinelFields(reply any) map[string]string {
	fields := map[string]string{}
	switch reply := reply.(type) {
	case []any:
		for i := 0; i+1 < len(reply); i += 2 {
			fields[fmt.Sprint(reply[i])] = fmt.Sprint(reply[i+1])
		}
	case map[any]any:
		for k, v := range reply {
			fields[fmt.Sprint(k)] = fmt.Sprint(v)
		}
	}
	return fields
}

// SentinelAddrs returns the sentinels' addresses, for REDIS_SENTINEL_ADDRS.
func (s *SentinelSet) SentinelAddrs() []string {
	addrs := make([]string, len(s.Sentinels))
	for i, p := range s.Sentinels {
		addrs[i] = p.Addr()
	}
	return addrs
}

// SentinelMaster returns the master address each sentinel reports, by
// sentinel address; a sentinel that does not answer maps to its error.
func (s *SentinelSet) SentinelMaster() map[string]string {
	answers := map[string]string{}
	for _, p := range s.Sentinels {
		reply, err := Query(p.Addr(), "SENTINEL", "GET-MASTER-ADDR-BY-NAME", s.Name)
		if err != nil {
			answers[p.Addr()] = "error: " + err.Error()
			continue
		}
		hostPort, ok := reply.([]any)
		if !ok || len(hostPort) != 2 {
			answers[p.Addr()] = fmt.Sprintf("unexpected reply %v", reply)
			continue
		}
		answers[p.Addr()] = net.JoinHostPort(fmt.Sprint(hostPort[0]), fmt.Sprint(hostPort[1]))
	}
	return answers
}

// MasterAddr returns the master address as the first answering sentinel
// reports it.
func (s *SentinelSet) MasterAddr() string {
	s.tb.Helper()
	answers := s.SentinelMaster()
	for _, p := range s.Sentinels {
		if addr := answers[p.Addr()]; !strings.HasPrefix(addr, "error: ") && !strings.HasPrefix(addr, "unexpected") {
			return addr
		}
	}
	s.tb.Fatalf("no sentinel reports the master of %s: %v", s.Name, answers)
	return ""
}

// server returns the set's data server at addr, or nil.
func (s *SentinelSet) server(addr string) *Redis {
	for _, r := range []*Redis{s.Master, s.Replica} {
		if r.Addr() == addr {
			return r
		}
	}
	return nil
}

// KillMaster kills (SIGKILL) the server the sentinels report as master and
// records it in s.Killed; RestartKilled brings it back.
func (s *SentinelSet) KillMaster() {
	s.tb.Helper()
	addr := s.MasterAddr()
	r := s.server(addr)
	if r == nil {
		s.tb.Fatalf("sentinels report master %s, which is neither %s nor %s", addr, s.Master.Addr(), s.Replica.Addr())
	}
	r.Kill()
	s.Killed = r
}

// RestartKilled starts the server the last KillMaster stopped again on its
// port, as an empty master that the sentinels then turn into a replica of
// the current master (a replica restarted as it was started would
// follow the old master).
func (s *SentinelSet) RestartKilled() {
	s.tb.Helper()
	if s.Killed == nil {
		s.tb.Fatal("RestartKilled: KillMaster was not called")
	}
	s.Killed.Args = s.dataArgs
	if err := s.Killed.Start(); err != nil {
		s.tb.Fatalf("restart %s: %v", s.Killed.Addr(), err)
	}
}

// WaitFailover waits until every sentinel reports a master other than
// oldAddr, the same one, and that server answers ROLE as a master; it
// returns its address and makes it s.Master.
func (s *SentinelSet) WaitFailover(t testing.TB, oldAddr string, timeout time.Duration) string {
	t.Helper()
	var newAddr string
	WaitFor(t, timeout, "sentinels fail over from "+oldAddr, func() string {
		answers := s.SentinelMaster()
		newAddr = answers[s.Sentinels[0].Addr()]
		for _, addr := range answers {
			if addr != newAddr || addr == oldAddr || s.server(addr) == nil {
				return fmt.Sprintf("sentinels report %v", answers)
			}
		}
		reply, err := Query(newAddr, "ROLE")
		if err != nil {
			return newAddr + ": ROLE: " + err.Error()
		}
		if role, ok := reply.([]any); !ok || len(role) == 0 || role[0] != "master" {
			return fmt.Sprintf("%s: ROLE %v, want master", newAddr, reply)
		}
		return ""
	})
	if s.Master.Addr() != newAddr {
		s.Master, s.Replica = s.Replica, s.Master
	}
	return newAddr
}
