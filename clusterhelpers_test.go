package main

// Real Redis Sentinel and Redis Cluster deployments for the e2e tests of
// the failover and cluster modes: every process runs on a free loopback
// port, keeps its files under the test's TempDir and is stopped by the
// test's cleanup. Timings are short so that a failover takes seconds.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"fanout/history"
)

const (
	// sentinelDownAfter is how long a sentinel waits before it calls a
	// silent master subjectively down.
	sentinelDownAfter = 1000 * time.Millisecond
	// sentinelFailoverTimeout bounds one failover attempt (and the wait
	// before the next one).
	sentinelFailoverTimeout = 3000 * time.Millisecond
	// sentinelQuorum sentinels must agree that the master is down.
	sentinelQuorum = 2
	// clusterNodeTimeout is how long a cluster node may be silent before
	// the others mark it failing.
	clusterNodeTimeout = 1000 * time.Millisecond
	// clusterSlotCount is the number of hash slots of a Redis Cluster.
	clusterSlotCount = 16384
	// helperQueryTimeout bounds each query the helpers send to a node.
	helperQueryTimeout = 2 * time.Second
)

// running reports whether the redis-server process is up (started and
// neither killed nor exited).
func (r *redisServer) running() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return false
	}
	select {
	case <-r.done:
		return false
	default:
		return true
	}
}

// queryNode runs one command on addr over a fresh connection and closes it.
func queryNode(addr string, args ...any) (any, error) {
	client := redis.NewClient(&redis.Options{
		Addr: addr, MaxRetries: -1, DialTimeout: 500 * time.Millisecond,
		ReadTimeout: helperQueryTimeout, WriteTimeout: helperQueryTimeout,
	})
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), helperQueryTimeout)
	defer cancel()
	return client.Do(ctx, args...).Result()
}

// queryNodeText is queryNode for commands that answer one string.
func queryNodeText(addr string, args ...any) (string, error) {
	reply, err := queryNode(addr, args...)
	if err != nil {
		return "", err
	}
	text, ok := reply.(string)
	if !ok {
		return "", fmt.Errorf("%v on %s: reply %T, want a string", args, addr, reply)
	}
	return text, nil
}

// infoField returns field of an INFO or CLUSTER INFO text ("" if absent).
func infoField(info, field string) string {
	for _, line := range strings.Split(info, "\n") {
		if value, ok := strings.CutPrefix(line, field+":"); ok {
			return strings.TrimSpace(value)
		}
	}
	return ""
}

// sentinelProc is a real redis-sentinel on a free loopback port, owned by
// one test and stopped by its cleanup.
type sentinelProc struct {
	port int
	// conf is the sentinel's config file, which it rewrites as it learns.
	conf string
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	out  *syncBuffer
}

func (p *sentinelProc) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(p.port)) }

// stop kills the sentinel.
func (p *sentinelProc) stop() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// startSentinel starts a sentinel monitoring masterAddr as name.
func startSentinel(tb testing.TB, dir, name, masterAddr string) *sentinelProc {
	tb.Helper()
	host, port, _ := net.SplitHostPort(masterAddr)
	var lastErr error
	for range 5 {
		p := &sentinelProc{port: freePort(tb)}
		p.conf = filepath.Join(dir, fmt.Sprintf("sentinel-%d.conf", p.port))
		conf := fmt.Sprintf(`port %d
bind 127.0.0.1
daemonize no
loglevel warning
dir %s
sentinel monitor %s %s %s %d
sentinel down-after-milliseconds %s %d
sentinel failover-timeout %s %d
sentinel parallel-syncs %s 1
`, p.port, dir, name, host, port, sentinelQuorum,
			name, sentinelDownAfter.Milliseconds(), name, sentinelFailoverTimeout.Milliseconds(), name)
		if err := os.WriteFile(p.conf, []byte(conf), 0o600); err != nil {
			tb.Fatalf("write %s: %v", p.conf, err)
		}
		if lastErr = p.start(); lastErr == nil {
			tb.Cleanup(p.stop)
			return p
		}
	}
	tb.Fatalf("start redis-sentinel: %v", lastErr)
	return nil
}

// start runs the sentinel and waits until it answers PING.
func (p *sentinelProc) start() error {
	cmd := exec.Command("redis-sentinel", p.conf)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("exec redis-sentinel: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			return fmt.Errorf("redis-sentinel exited: %s", strings.TrimSpace(out.String()))
		default:
		}
		if _, err := queryNode(p.addr(), "PING"); err == nil {
			p.mu.Lock()
			p.cmd, p.done, p.out = cmd, done, out
			p.mu.Unlock()
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = cmd.Process.Kill()
	<-done
	return errors.New("redis-sentinel did not answer PING within 10s")
}

// sentinelSet is a master, its replica and three sentinels (quorum 2)
// that fail the master over about two seconds after it dies.
type sentinelSet struct {
	tb testing.TB
	// master is the master as of the last waitFailover (at first, the one
	// the set started with); replica is the other server.
	master, replica *redisServer
	sentinels       []*sentinelProc
	// name is the master name the sentinels monitor.
	name string
	// killed is the server the last killMaster stopped.
	killed *redisServer
	// dataArgs are the options master and replica run with.
	dataArgs []string
}

// startSentinelSet starts a master with one replica and three sentinels,
// and returns once the replica is in sync and every sentinel knows the
// replica and the two other sentinels, so that a failover can start at
// once.
func startSentinelSet(tb testing.TB) *sentinelSet {
	tb.Helper()
	if _, err := exec.LookPath("redis-sentinel"); err != nil {
		tb.Fatal("redis-sentinel is not installed: run ./test.sh, which installs it")
	}
	// A replica writes the RDB it syncs from to its dir: keep it out of
	// the package directory. A master sends it at once, not after waiting
	// 5s for more replicas.
	s := &sentinelSet{tb: tb, name: "mymaster",
		dataArgs: []string{"--dir", tb.TempDir(), "--repl-diskless-sync-delay", "0"}}
	s.master = startRedis(tb, s.dataArgs...)
	s.replica = startRedis(tb, append(slices.Clone(s.dataArgs), "--replicaof", "127.0.0.1", strconv.Itoa(s.master.port))...)
	waitFor(tb, 10*time.Second, "replica "+s.replica.addr()+" in sync with "+s.master.addr(), func() string {
		info, err := queryNodeText(s.replica.addr(), "INFO", "replication")
		if err != nil {
			return err.Error()
		}
		if status := infoField(info, "master_link_status"); status != "up" {
			return "master_link_status:" + status
		}
		return ""
	})
	dir := tb.TempDir()
	for range 3 {
		s.sentinels = append(s.sentinels, startSentinel(tb, dir, s.name, s.master.addr()))
	}
	waitFor(tb, 15*time.Second, "sentinels know the replica and each other", func() string {
		for _, p := range s.sentinels {
			reply, err := queryNode(p.addr(), "SENTINEL", "MASTER", s.name)
			if err != nil {
				return p.addr() + ": " + err.Error()
			}
			fields := sentinelFields(reply)
			if fields["num-slaves"] != "1" || fields["num-other-sentinels"] != "2" || fields["flags"] != "master" {
				return fmt.Sprintf("%s: flags %s, num-slaves %s, num-other-sentinels %s",
					p.addr(), fields["flags"], fields["num-slaves"], fields["num-other-sentinels"])
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

// sentinelAddrs returns the sentinels' addresses, for REDIS_SENTINEL_ADDRS.
func (s *sentinelSet) sentinelAddrs() []string {
	addrs := make([]string, len(s.sentinels))
	for i, p := range s.sentinels {
		addrs[i] = p.addr()
	}
	return addrs
}

// sentinelMaster returns the master address each sentinel reports, by
// sentinel address; a sentinel that does not answer maps to its error.
func (s *sentinelSet) sentinelMaster() map[string]string {
	answers := map[string]string{}
	for _, p := range s.sentinels {
		reply, err := queryNode(p.addr(), "SENTINEL", "GET-MASTER-ADDR-BY-NAME", s.name)
		if err != nil {
			answers[p.addr()] = "error: " + err.Error()
			continue
		}
		hostPort, ok := reply.([]any)
		if !ok || len(hostPort) != 2 {
			answers[p.addr()] = fmt.Sprintf("unexpected reply %v", reply)
			continue
		}
		answers[p.addr()] = net.JoinHostPort(fmt.Sprint(hostPort[0]), fmt.Sprint(hostPort[1]))
	}
	return answers
}

// masterAddr returns the master address as the first answering sentinel
// reports it.
func (s *sentinelSet) masterAddr() string {
	s.tb.Helper()
	answers := s.sentinelMaster()
	for _, p := range s.sentinels {
		if addr := answers[p.addr()]; !strings.HasPrefix(addr, "error: ") && !strings.HasPrefix(addr, "unexpected") {
			return addr
		}
	}
	s.tb.Fatalf("no sentinel reports the master of %s: %v", s.name, answers)
	return ""
}

// server returns the set's data server at addr, or nil.
func (s *sentinelSet) server(addr string) *redisServer {
	for _, r := range []*redisServer{s.master, s.replica} {
		if r.addr() == addr {
			return r
		}
	}
	return nil
}

// killMaster kills (SIGKILL) the server the sentinels report as master and
// records it in s.killed; restartKilled brings it back.
func (s *sentinelSet) killMaster() {
	s.tb.Helper()
	addr := s.masterAddr()
	r := s.server(addr)
	if r == nil {
		s.tb.Fatalf("sentinels report master %s, which is neither %s nor %s", addr, s.master.addr(), s.replica.addr())
	}
	r.kill()
	s.killed = r
}

// restartKilled starts the server the last killMaster stopped again on its
// port, as an empty master that the sentinels then turn into a replica of
// the current master (use it rather than s.killed.start(), which would
// run it without the set's options).
func (s *sentinelSet) restartKilled() {
	s.tb.Helper()
	if s.killed == nil {
		s.tb.Fatal("restartKilled: killMaster was not called")
	}
	if err := s.killed.startArgs(s.dataArgs...); err != nil {
		s.tb.Fatalf("restart %s: %v", s.killed.addr(), err)
	}
}

// waitFailover waits until every sentinel reports a master other than
// oldAddr, the same one, and that server answers ROLE as a master; it
// returns its address and makes it s.master.
func (s *sentinelSet) waitFailover(t testing.TB, oldAddr string, timeout time.Duration) string {
	t.Helper()
	var newAddr string
	waitFor(t, timeout, "sentinels fail over from "+oldAddr, func() string {
		answers := s.sentinelMaster()
		newAddr = answers[s.sentinels[0].addr()]
		for _, addr := range answers {
			if addr != newAddr || addr == oldAddr || s.server(addr) == nil {
				return fmt.Sprintf("sentinels report %v", answers)
			}
		}
		reply, err := queryNode(newAddr, "ROLE")
		if err != nil {
			return newAddr + ": ROLE: " + err.Error()
		}
		if role, ok := reply.([]any); !ok || len(role) == 0 || role[0] != "master" {
			return fmt.Sprintf("%s: ROLE %v, want master", newAddr, reply)
		}
		return ""
	})
	if s.master.addr() != newAddr {
		s.master, s.replica = s.replica, s.master
	}
	return newAddr
}

// waitFor polls check every 50ms until it returns "" and fails t with what
// it last returned after d.
func waitFor(t testing.TB, d time.Duration, what string, check func() string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		problem := check()
		if problem == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s: %s", d, what, problem)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// clusterNode is one redis-server of a redisCluster.
type clusterNode struct {
	*redisServer
	// id is the node's cluster ID (CLUSTER MYID).
	id string
	// args are the cluster options it runs with, kept for a restart.
	args []string
}

// redisCluster is a Redis Cluster of three masters with one replica each,
// with a node timeout short enough that a replica takes over a killed
// master within a few seconds.
type redisCluster struct {
	tb    testing.TB
	nodes []*clusterNode
}

// startCluster starts six cluster nodes, joins them with redis-cli
// --cluster create (three masters, one replica each) and waits until the
// cluster is ok as every node sees it.
func startCluster(tb testing.TB) *redisCluster {
	tb.Helper()
	if _, err := exec.LookPath("redis-cli"); err != nil {
		tb.Fatal("redis-cli is not installed: run ./test.sh, which installs redis-server (and redis-cli with it)")
	}
	c := &redisCluster{tb: tb}
	dir := tb.TempDir()
	for range 6 {
		c.nodes = append(c.nodes, startClusterNode(tb, dir))
	}
	args := []string{"--cluster", "create"}
	args = append(args, c.seeds()...)
	args = append(args, "--cluster-replicas", "1", "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "redis-cli", args...).CombinedOutput(); err != nil {
		tb.Fatalf("redis-cli %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	c.waitClusterOK(20 * time.Second)
	return c
}

// startClusterNode starts a cluster-enabled redis-server on a port whose
// cluster bus port (port+10000) is free too.
func startClusterNode(tb testing.TB, dir string) *clusterNode {
	tb.Helper()
	var lastErr error
	for range 10 {
		port := freeClusterPort(tb)
		n := &clusterNode{redisServer: &redisServer{tb: tb, port: port}}
		n.args = []string{
			"--cluster-enabled", "yes",
			"--cluster-config-file", filepath.Join(dir, fmt.Sprintf("nodes-%d.conf", port)),
			"--cluster-node-timeout", strconv.FormatInt(clusterNodeTimeout.Milliseconds(), 10),
			"--cluster-replica-validity-factor", "0",
			// A replica syncs at once, not after the default 5s wait
			// for more replicas.
			"--repl-diskless-sync-delay", "0",
			"--dir", dir,
		}
		if lastErr = n.startArgs(n.args...); lastErr != nil {
			continue
		}
		tb.Cleanup(n.stop)
		id, err := queryNodeText(n.addr(), "CLUSTER", "MYID")
		if err != nil {
			tb.Fatalf("CLUSTER MYID on %s: %v", n.addr(), err)
		}
		n.id = id
		return n
	}
	tb.Fatalf("start cluster node: %v", lastErr)
	return nil
}

// freeClusterPort returns a free loopback port whose bus port (+10000) is
// free too.
func freeClusterPort(tb testing.TB) int {
	tb.Helper()
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatalf("find a free port: %v", err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		if port+10000 > 65535 {
			ln.Close()
			continue
		}
		bus, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port+10000)))
		ln.Close()
		if err == nil {
			bus.Close()
			return port
		}
	}
	tb.Fatal("find a free port whose cluster bus port (+10000) is free: none in 100 tries")
	return 0
}

// seeds returns every node's address (live or not), for REDIS_CLUSTER_ADDRS.
func (c *redisCluster) seeds() []string {
	addrs := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		addrs[i] = n.addr()
	}
	return addrs
}

// node returns the node at addr.
func (c *redisCluster) node(addr string) *clusterNode {
	c.tb.Helper()
	for _, n := range c.nodes {
		if n.addr() == addr {
			return n
		}
	}
	c.tb.Fatalf("no cluster node at %s (nodes: %v)", addr, c.seeds())
	return nil
}

// liveNodes returns the nodes whose process is running.
func (c *redisCluster) liveNodes() []*clusterNode {
	var live []*clusterNode
	for _, n := range c.nodes {
		if n.running() {
			live = append(live, n)
		}
	}
	return live
}

// clusterNodeLine is one line of CLUSTER NODES.
type clusterNodeLine struct {
	id string
	// addr is host:port, without the bus port.
	addr string
	// flags are the node's flags (myself, master, slave, fail?, fail, ...).
	flags []string
	// masterID is the master's ID for a replica, "-" for a master.
	masterID  string
	connected bool
	// slots are the owned slot ranges, inclusive; slots being imported or
	// migrated ("[...]") are left out.
	slots [][2]int
}

// failing reports whether the viewing node considers this node unusable.
func (l clusterNodeLine) failing() bool {
	for _, f := range l.flags {
		if f == "fail" || f == "fail?" || f == "noaddr" || f == "handshake" {
			return true
		}
	}
	return false
}

func (l clusterNodeLine) isMaster() bool { return slices.Contains(l.flags, "master") }

// clusterNodes asks addr for CLUSTER NODES.
func clusterNodes(addr string) ([]clusterNodeLine, error) {
	text, err := queryNodeText(addr, "CLUSTER", "NODES")
	if err != nil {
		return nil, fmt.Errorf("CLUSTER NODES on %s: %w", addr, err)
	}
	var lines []clusterNodeLine
	for _, raw := range strings.Split(strings.TrimSpace(text), "\n") {
		f := strings.Fields(raw)
		if len(f) < 8 {
			return nil, fmt.Errorf("CLUSTER NODES on %s: bad line %q", addr, raw)
		}
		l := clusterNodeLine{
			id:        f[0],
			addr:      strings.SplitN(strings.SplitN(f[1], "@", 2)[0], ",", 2)[0],
			flags:     strings.Split(f[2], ","),
			masterID:  f[3],
			connected: f[7] == "connected",
		}
		for _, r := range f[8:] {
			if strings.HasPrefix(r, "[") {
				continue
			}
			from, to, isRange := strings.Cut(r, "-")
			lo, err := strconv.Atoi(from)
			if err != nil {
				return nil, fmt.Errorf("CLUSTER NODES on %s: bad slot range %q", addr, r)
			}
			hi := lo
			if isRange {
				if hi, err = strconv.Atoi(to); err != nil {
					return nil, fmt.Errorf("CLUSTER NODES on %s: bad slot range %q", addr, r)
				}
			}
			l.slots = append(l.slots, [2]int{lo, hi})
		}
		lines = append(lines, l)
	}
	return lines, nil
}

// slotOwners asks addr which master owns each slot, counting only masters
// that addr considers healthy and whose process is running; a slot nobody
// serves maps to "".
func (c *redisCluster) slotOwners(addr string) ([]string, error) {
	lines, err := clusterNodes(addr)
	if err != nil {
		return nil, err
	}
	live := map[string]bool{}
	for _, n := range c.liveNodes() {
		live[n.addr()] = true
	}
	owners := make([]string, clusterSlotCount)
	for _, l := range lines {
		if !l.isMaster() || l.failing() || !live[l.addr] {
			continue
		}
		if !l.connected && !slices.Contains(l.flags, "myself") {
			continue
		}
		for _, r := range l.slots {
			for s := r[0]; s <= r[1]; s++ {
				if owners[s] != "" {
					return nil, fmt.Errorf("%s sees slot %d owned by both %s and %s", addr, s, owners[s], l.addr)
				}
				owners[s] = l.addr
			}
		}
	}
	return owners, nil
}

// clusterProblem returns why the cluster is not ok yet, or "": every live
// node must report cluster_state:ok, see all 16384 slots served by healthy
// running masters, and agree with the others on who serves which.
func (c *redisCluster) clusterProblem() string {
	live := c.liveNodes()
	if len(live) == 0 {
		return "no node is running"
	}
	var first []string
	for _, n := range live {
		info, err := queryNodeText(n.addr(), "CLUSTER", "INFO")
		if err != nil {
			return fmt.Sprintf("CLUSTER INFO on %s: %v", n.addr(), err)
		}
		if state := infoField(info, "cluster_state"); state != "ok" {
			return fmt.Sprintf("%s: cluster_state:%s", n.addr(), state)
		}
		owners, err := c.slotOwners(n.addr())
		if err != nil {
			return err.Error()
		}
		if missing := slices.Index(owners, ""); missing >= 0 {
			uncovered := 0
			for _, addr := range owners {
				if addr == "" {
					uncovered++
				}
			}
			return fmt.Sprintf("%s sees %d slots without a running healthy master (first: %d)",
				n.addr(), uncovered, missing)
		}
		if first == nil {
			first = owners
			continue
		}
		for s := range owners {
			if owners[s] != first[s] {
				return fmt.Sprintf("nodes disagree: %s sees slot %d at %s, %s at %s",
					live[0].addr(), s, first[s], n.addr(), owners[s])
			}
		}
	}
	return ""
}

// waitClusterOK waits until every live node reports cluster_state:ok and
// sees all 16384 slots served by running masters it considers healthy, the
// same ones as the other live nodes see.
func (c *redisCluster) waitClusterOK(timeout time.Duration) {
	c.tb.Helper()
	waitFor(c.tb, timeout, "cluster ok", c.clusterProblem)
}

// slotOwner returns the master serving slot as the first live node sees it.
func (c *redisCluster) slotOwner(slot int) (string, error) {
	live := c.liveNodes()
	if len(live) == 0 {
		return "", errors.New("no cluster node is running")
	}
	owners, err := c.slotOwners(live[0].addr())
	if err != nil {
		return "", err
	}
	if owners[slot] == "" {
		return "", fmt.Errorf("%s sees no running healthy master for slot %d", live[0].addr(), slot)
	}
	return owners[slot], nil
}

// masterOfSlot returns the address of the master serving slot, as the
// first live node sees it.
func (c *redisCluster) masterOfSlot(slot int) string {
	c.tb.Helper()
	addr, err := c.slotOwner(slot)
	if err != nil {
		c.tb.Fatalf("master of slot %d: %v", slot, err)
	}
	return addr
}

// masterFor returns the address of the master serving key (or sharded
// channel).
func (c *redisCluster) masterFor(key string) string {
	c.tb.Helper()
	return c.masterOfSlot(c.slot(key))
}

// masters returns the running masters' addresses with their slot counts,
// as the first live node sees them.
func (c *redisCluster) masters() map[string]int {
	c.tb.Helper()
	live := c.liveNodes()
	if len(live) == 0 {
		c.tb.Fatal("no cluster node is running")
	}
	owners, err := c.slotOwners(live[0].addr())
	if err != nil {
		c.tb.Fatal(err)
	}
	counts := map[string]int{}
	for _, addr := range owners {
		if addr != "" {
			counts[addr]++
		}
	}
	return counts
}

// replicasOf returns the addresses of masterAddr's replicas, as
// masterAddr sees them.
func (c *redisCluster) replicasOf(masterAddr string) []string {
	c.tb.Helper()
	lines, err := clusterNodes(masterAddr)
	if err != nil {
		c.tb.Fatal(err)
	}
	id := c.node(masterAddr).id
	var replicas []string
	for _, l := range lines {
		if l.masterID == id && !l.failing() {
			replicas = append(replicas, l.addr)
		}
	}
	return replicas
}

// killNode kills (SIGKILL) the node at addr, as a crash would.
func (c *redisCluster) killNode(addr string) {
	c.tb.Helper()
	c.node(addr).kill()
}

// restartNode starts the killed node at addr again on its port with its
// nodes.conf: it rejoins with the same ID (a former master whose slots a
// replica took over comes back as that replica's replica).
func (c *redisCluster) restartNode(addr string) {
	c.tb.Helper()
	n := c.node(addr)
	if err := n.startArgs(n.args...); err != nil {
		c.tb.Fatalf("restart cluster node %s: %v", addr, err)
	}
}

// reshard moves slots slots from the master at fromAddr to the master at
// toAddr with redis-cli --cluster reshard. The cluster must be ok.
func (c *redisCluster) reshard(fromAddr, toAddr string, slots int) error {
	from, to := c.nodeOrNil(fromAddr), c.nodeOrNil(toAddr)
	if from == nil || to == nil {
		return fmt.Errorf("reshard %s -> %s: not both are nodes of this cluster (%v)", fromAddr, toAddr, c.seeds())
	}
	args := []string{"--cluster", "reshard", fromAddr,
		"--cluster-from", from.id, "--cluster-to", to.id,
		"--cluster-slots", strconv.Itoa(slots), "--cluster-yes"}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "redis-cli", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("redis-cli %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	// redis-cli exits 0 after some errors; they start with [ERR].
	if strings.Contains(string(out), "[ERR]") {
		return fmt.Errorf("redis-cli %s:\n%s", strings.Join(args, " "), out)
	}
	return nil
}

// nodeOrNil returns the node at addr, or nil.
func (c *redisCluster) nodeOrNil(addr string) *clusterNode {
	for _, n := range c.nodes {
		if n.addr() == addr {
			return n
		}
	}
	return nil
}

// moveSlot moves one slot, with its keys, to the master at toAddr, the
// way redis-cli does: CLUSTER SETSLOT IMPORTING on the target, MIGRATING
// on the owner, MIGRATE of the keys, then SETSLOT NODE on the target, the
// owner and the other masters. It is safe to call from any goroutine.
func (c *redisCluster) moveSlot(slot int, toAddr string) error {
	fromAddr, err := c.slotOwner(slot)
	if err != nil {
		return fmt.Errorf("move slot %d: %w", slot, err)
	}
	if fromAddr == toAddr {
		return nil
	}
	from, to := c.nodeOrNil(fromAddr), c.nodeOrNil(toAddr)
	if from == nil || to == nil {
		return fmt.Errorf("move slot %d to %s: not a node of this cluster (%v)", slot, toAddr, c.seeds())
	}
	step := func(addr string, args ...any) error {
		if _, err := queryNode(addr, args...); err != nil {
			return fmt.Errorf("move slot %d: %v on %s: %w", slot, args, addr, err)
		}
		return nil
	}
	if err := step(toAddr, "CLUSTER", "SETSLOT", slot, "IMPORTING", from.id); err != nil {
		return err
	}
	if err := step(fromAddr, "CLUSTER", "SETSLOT", slot, "MIGRATING", to.id); err != nil {
		return err
	}
	for {
		reply, err := queryNode(fromAddr, "CLUSTER", "GETKEYSINSLOT", slot, 100)
		if err != nil {
			return fmt.Errorf("move slot %d: GETKEYSINSLOT on %s: %w", slot, fromAddr, err)
		}
		keys, _ := reply.([]any)
		if len(keys) == 0 {
			break
		}
		args := []any{"MIGRATE", "127.0.0.1", to.port, "", 0, 5000, "KEYS"}
		if err := step(fromAddr, append(args, keys...)...); err != nil {
			return err
		}
	}
	if err := step(toAddr, "CLUSTER", "SETSLOT", slot, "NODE", to.id); err != nil {
		return err
	}
	if err := step(fromAddr, "CLUSTER", "SETSLOT", slot, "NODE", to.id); err != nil {
		return err
	}
	live, err := c.slotOwners(toAddr)
	if err != nil {
		return fmt.Errorf("move slot %d: %w", slot, err)
	}
	for _, addr := range slices.Compact(slices.Sorted(slices.Values(live))) {
		if addr != "" && addr != fromAddr && addr != toAddr {
			if err := step(addr, "CLUSTER", "SETSLOT", slot, "NODE", to.id); err != nil {
				return err
			}
		}
	}
	return nil
}

// client returns a go-redis cluster client seeded with every node, closed
// at cleanup. Its slot map is not refreshed when a master dies: go-redis
// v9 keeps dialling the dead address (commands fail with "connection
// refused" even after the failover) until ReloadState or a MOVED reply.
func (c *redisCluster) client() *redis.ClusterClient {
	client := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.seeds()})
	c.tb.Cleanup(func() {
		_ = client.Close()
		waitDialProbesDone(time.Now().Add(2 * time.Second))
	})
	return client
}

// waitDialProbesDone waits, until deadline at most, for go-redis's dial
// probes to end. A pool that failed PoolSize dials (to a killed node)
// probes the address in a goroutine that sleeps a second between tries and
// only sees the pool closed after its sleep, which goleak would report.
func waitDialProbesDone(deadline time.Time) {
	buf := make([]byte, 1<<20)
	for time.Now().Before(deadline) {
		n := runtime.Stack(buf, true)
		if !bytes.Contains(buf[:n], []byte("internal/pool.(*ConnPool).tryDial")) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// slot returns key's hash slot: CRC16 of the key, or of its hash tag (the
// text between the first "{" and the next "}", when not empty), mod 16384.
func (c *redisCluster) slot(key string) int { return history.Slot(key) }
