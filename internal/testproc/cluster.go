package testproc

// A real Redis Cluster: every node runs on a free loopback port, keeps its
// files under the test's TempDir and is stopped by the test's cleanup.
// Timings are short so that a failover takes seconds.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// clusterNodeTimeout is how long a cluster node may be silent before
	// the others mark it failing.
	clusterNodeTimeout = 1000 * time.Millisecond
	// clusterSlotCount is the number of hash slots of a Redis Cluster.
	clusterSlotCount = 16384
)

// ClusterNode is one redis-server of a Cluster.
type ClusterNode struct {
	*Redis
	// ID is the node's cluster ID (CLUSTER MYID).
	ID string
}

// Cluster is a Redis Cluster of three masters with one replica each,
// with a node timeout short enough that a replica takes over a killed
// master within a few seconds.
type Cluster struct {
	tb    testing.TB
	Nodes []*ClusterNode
}

// StartCluster starts six cluster nodes, joins them with redis-cli
// --cluster create (three masters, one replica each) and waits until the
// cluster is ok as every node sees it and every master has its replica.
func StartCluster(tb testing.TB) *Cluster {
	tb.Helper()
	NeedTool(tb, "redis-cli")
	c := &Cluster{tb: tb}
	dir := tb.TempDir()
	for range 6 {
		c.Nodes = append(c.Nodes, startClusterNode(tb, dir))
	}
	args := []string{"--cluster", "create"}
	args = append(args, c.Seeds()...)
	args = append(args, "--cluster-replicas", "1", "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "redis-cli", args...).CombinedOutput(); err != nil {
		tb.Fatalf("redis-cli %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	c.WaitClusterOK(20 * time.Second)
	// A replica whose link to its master is being set up (or that a busy
	// machine kept from answering for a node timeout) is not yet one
	// that would take over: wait until every master has a healthy one.
	WaitFor(tb, 20*time.Second, "every master with one healthy replica", func() string {
		for addr := range c.Masters() {
			if replicas := c.ReplicasOf(addr); len(replicas) != 1 {
				return fmt.Sprintf("master %s has replicas %v", addr, replicas)
			}
		}
		return ""
	})
	return c
}

// startClusterNode starts a cluster-enabled redis-server on a port whose
// cluster bus port (port+10000) is free too.
func startClusterNode(tb testing.TB, dir string) *ClusterNode {
	tb.Helper()
	var lastErr error
	for range 10 {
		port := freeClusterPort(tb)
		n := &ClusterNode{Redis: NewRedis(tb, port)}
		n.Args = []string{
			"--cluster-enabled", "yes",
			"--cluster-config-file", filepath.Join(dir, fmt.Sprintf("nodes-%d.conf", port)),
			"--cluster-node-timeout", strconv.FormatInt(clusterNodeTimeout.Milliseconds(), 10),
			"--cluster-replica-validity-factor", "0",
			// A replica syncs at once, not after the default 5s wait
			// for more replicas.
			"--repl-diskless-sync-delay", "0",
			"--dir", dir,
		}
		if lastErr = n.Start(); lastErr != nil {
			continue
		}
		id, err := QueryText(n.Addr(), "CLUSTER", "MYID")
		if err != nil {
			tb.Fatalf("CLUSTER MYID on %s: %v", n.Addr(), err)
		}
		n.ID = id
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
			if Claim(port) && Claim(port+10000) {
				return port
			}
		}
	}
	tb.Fatal("find a free port whose cluster bus port (+10000) is free: none in 100 tries")
	return 0
}

// Seeds returns every node's address (live or not), for REDIS_CLUSTER_ADDRS.
func (c *Cluster) Seeds() []string {
	addrs := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		addrs[i] = n.Addr()
	}
	return addrs
}

// node returns the node at addr.
func (c *Cluster) node(addr string) *ClusterNode {
	c.tb.Helper()
	for _, n := range c.Nodes {
		if n.Addr() == addr {
			return n
		}
	}
	c.tb.Fatalf("no cluster node at %s (nodes: %v)", addr, c.Seeds())
	return nil
}

// LiveNodes returns the nodes whose process is running.
func (c *Cluster) LiveNodes() []*ClusterNode {
	var live []*ClusterNode
	for _, n := range c.Nodes {
		if n.Running() {
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
	text, err := QueryText(addr, "CLUSTER", "NODES")
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
func (c *Cluster) slotOwners(addr string) ([]string, error) {
	lines, err := clusterNodes(addr)
	if err != nil {
		return nil, err
	}
	live := map[string]bool{}
	for _, n := range c.LiveNodes() {
		live[n.Addr()] = true
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
func (c *Cluster) clusterProblem() string {
	live := c.LiveNodes()
	if len(live) == 0 {
		return "no node is running"
	}
	var first []string
	for _, n := range live {
		info, err := QueryText(n.Addr(), "CLUSTER", "INFO")
		if err != nil {
			return fmt.Sprintf("CLUSTER INFO on %s: %v", n.Addr(), err)
		}
		if state := InfoField(info, "cluster_state"); state != "ok" {
			return fmt.Sprintf("%s: cluster_state:%s", n.Addr(), state)
		}
		owners, err := c.slotOwners(n.Addr())
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
				n.Addr(), uncovered, missing)
		}
		if first == nil {
			first = owners
			continue
		}
		for s := range owners {
			if owners[s] != first[s] {
				return fmt.Sprintf("nodes disagree: %s sees slot %d at %s, %s at %s",
					live[0].Addr(), s, first[s], n.Addr(), owners[s])
			}
		}
	}
	return ""
}

// WaitClusterOK waits until every live node reports cluster_state:ok and
// sees all 16384 slots served by running masters it considers healthy, the
// same ones as the other live nodes see.
func (c *Cluster) WaitClusterOK(timeout time.Duration) {
	c.tb.Helper()
	WaitFor(c.tb, timeout, "cluster ok", c.clusterProblem)
}

// SlotOwner returns the master serving slot as the first live node sees it.
func (c *Cluster) SlotOwner(slot int) (string, error) {
	live := c.LiveNodes()
	if len(live) == 0 {
		return "", errors.New("no cluster node is running")
	}
	owners, err := c.slotOwners(live[0].Addr())
	if err != nil {
		return "", err
	}
	if owners[slot] == "" {
		return "", fmt.Errorf("%s sees no running healthy master for slot %d", live[0].Addr(), slot)
	}
	return owners[slot], nil
}

// MasterOfSlot returns the address of the master serving slot, as the
// first live node sees it.
func (c *Cluster) MasterOfSlot(slot int) string {
	c.tb.Helper()
	addr, err := c.SlotOwner(slot)
	if err != nil {
		c.tb.Fatalf("master of slot %d: %v", slot, err)
	}
	return addr
}

// MasterFor returns the address of the master serving key (or sharded
// channel).
func (c *Cluster) MasterFor(key string) string {
	c.tb.Helper()
	return c.MasterOfSlot(c.Slot(key))
}

// Masters returns the running masters' addresses with their slot counts,
// as the first live node sees them.
func (c *Cluster) Masters() map[string]int {
	c.tb.Helper()
	live := c.LiveNodes()
	if len(live) == 0 {
		c.tb.Fatal("no cluster node is running")
	}
	owners, err := c.slotOwners(live[0].Addr())
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

// ReplicasOf returns the addresses of masterAddr's replicas, as
// masterAddr sees them.
func (c *Cluster) ReplicasOf(masterAddr string) []string {
	c.tb.Helper()
	lines, err := clusterNodes(masterAddr)
	if err != nil {
		c.tb.Fatal(err)
	}
	id := c.node(masterAddr).ID
	var replicas []string
	for _, l := range lines {
		if l.masterID == id && !l.failing() {
			replicas = append(replicas, l.addr)
		}
	}
	return replicas
}

// KillNode kills (SIGKILL) the node at addr, as a crash would.
func (c *Cluster) KillNode(addr string) {
	c.tb.Helper()
	c.node(addr).Kill()
}

// RestartNode starts the killed node at addr again on its port with its
// nodes.conf: it rejoins with the same ID (a former master whose slots a
// replica took over comes back as that replica's replica).
func (c *Cluster) RestartNode(addr string) {
	c.tb.Helper()
	n := c.node(addr)
	if err := n.Start(); err != nil {
		c.tb.Fatalf("restart cluster node %s: %v", addr, err)
	}
}

// Reshard moves slots slots from the master at fromAddr to the master at
// toAddr with redis-cli --cluster reshard. The cluster must be ok.
func (c *Cluster) Reshard(fromAddr, toAddr string, slots int) error {
	from, to := c.nodeOrNil(fromAddr), c.nodeOrNil(toAddr)
	if from == nil || to == nil {
		return fmt.Errorf("reshard %s -> %s: not both are nodes of this cluster (%v)", fromAddr, toAddr, c.Seeds())
	}
	args := []string{"--cluster", "reshard", fromAddr,
		"--cluster-from", from.ID, "--cluster-to", to.ID,
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
func (c *Cluster) nodeOrNil(addr string) *ClusterNode {
	for _, n := range c.Nodes {
		if n.Addr() == addr {
			return n
		}
	}
	return nil
}

// MoveSlot moves one slot, with its keys, to the master at toAddr, the
// way redis-cli does: CLUSTER SETSLOT IMPORTING on the target, MIGRATING
// on the owner, MIGRATE of the keys, then SETSLOT NODE on the target, the
// owner and the other masters. It is safe to call from any goroutine.
func (c *Cluster) MoveSlot(slot int, toAddr string) error {
	fromAddr, err := c.SlotOwner(slot)
	if err != nil {
		return fmt.Errorf("move slot %d: %w", slot, err)
	}
	if fromAddr == toAddr {
		return nil
	}
	from, to := c.nodeOrNil(fromAddr), c.nodeOrNil(toAddr)
	if from == nil || to == nil {
		return fmt.Errorf("move slot %d to %s: not a node of this cluster (%v)", slot, toAddr, c.Seeds())
	}
	step := func(addr string, args ...any) error {
		if _, err := Query(addr, args...); err != nil {
			return fmt.Errorf("move slot %d: %v on %s: %w", slot, args, addr, err)
		}
		return nil
	}
	if err := step(toAddr, "CLUSTER", "SETSLOT", slot, "IMPORTING", from.ID); err != nil {
		return err
	}
	if err := step(fromAddr, "CLUSTER", "SETSLOT", slot, "MIGRATING", to.ID); err != nil {
		return err
	}
	for {
		reply, err := Query(fromAddr, "CLUSTER", "GETKEYSINSLOT", slot, 100)
		if err != nil {
			return fmt.Errorf("move slot %d: GETKEYSINSLOT on %s: %w", slot, fromAddr, err)
		}
		keys, _ := reply.([]any)
		if len(keys) == 0 {
			break
		}
		args := []any{"MIGRATE", "127.0.0.1", to.Port, "", 0, 5000, "KEYS"}
		if err := step(fromAddr, append(args, keys...)...); err != nil {
			return err
		}
	}
	if err := step(toAddr, "CLUSTER", "SETSLOT", slot, "NODE", to.ID); err != nil {
		return err
	}
	if err := step(fromAddr, "CLUSTER", "SETSLOT", slot, "NODE", to.ID); err != nil {
		return err
	}
	live, err := c.slotOwners(toAddr)
	if err != nil {
		return fmt.Errorf("move slot %d: %w", slot, err)
	}
	for _, addr := range slices.Compact(slices.Sorted(slices.Values(live))) {
		if addr != "" && addr != fromAddr && addr != toAddr {
			if err := step(addr, "CLUSTER", "SETSLOT", slot, "NODE", to.ID); err != nil {
				return err
			}
		}
	}
	return nil
}

// Client returns a go-redis cluster client seeded with every node, closed
// at cleanup. Its slot map is not refreshed when a master dies: go-redis
// v9 keeps dialling the dead address (commands fail with "connection
// refused" even after the failover) until ReloadState or a MOVED reply.
func (c *Cluster) Client() *redis.ClusterClient {
	client := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Seeds()})
	c.tb.Cleanup(func() {
		_ = client.Close()
		WaitDialProbesDone(time.Now().Add(2 * time.Second))
	})
	return client
}

// WaitDialProbesDone waits, until deadline at most, for go-redis's dial
// probes to end. A pool that failed PoolSize dials (to a killed node)
// probes the address in a goroutine that sleeps a second between tries and
// only sees the pool closed after its sleep, which goleak would report.
func WaitDialProbesDone(deadline time.Time) {
	buf := make([]byte, 1<<20)
	for time.Now().Before(deadline) {
		n := runtime.Stack(buf, true)
		if !bytes.Contains(buf[:n], []byte("internal/pool.(*ConnPool).tryDial")) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Slot returns key's hash slot as a live node computes it (CLUSTER
// KEYSLOT).
func (c *Cluster) Slot(key string) int {
	c.tb.Helper()
	live := c.LiveNodes()
	if len(live) == 0 {
		c.tb.Fatal("no cluster node is running")
	}
	slot, err := Query(live[0].Addr(), "CLUSTER", "KEYSLOT", key)
	if err != nil {
		c.tb.Fatalf("CLUSTER KEYSLOT %q: %v", key, err)
	}
	return int(slot.(int64))
}
