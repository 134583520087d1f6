package main

import (
	"errors"
	"math"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Errors returned by Hub.reserve when a connection limit is reached.
var (
	errUserLimit     = errors.New("too many connections for this user (MAX_CONNECTIONS_PER_USER)")
	errInstanceLimit = errors.New("this instance is full (MAX_CONNECTIONS)")
)

// Retry-After values for the connection limits, in seconds.
const (
	retryAfterUserLimit     = 10
	retryAfterInstanceLimit = 5
)

// ipLimiterSweepEvery is how often idle per-address buckets are forgotten.
const ipLimiterSweepEvery = time.Minute

// ipLimiter is a token bucket of /ws requests per client address. IPv6
// addresses share the bucket of their /64, which one host usually owns.
type ipLimiter struct {
	limit rate.Limit
	burst int

	// mu guards buckets and lastSweep.
	mu        sync.Mutex
	buckets   map[netip.Addr]*rate.Limiter
	lastSweep time.Time
}

func newIPLimiter(perSecond float64, burst int) *ipLimiter {
	return &ipLimiter{
		limit:     rate.Limit(perSecond),
		burst:     burst,
		buckets:   make(map[netip.Addr]*rate.Limiter),
		lastSweep: time.Now(),
	}
}

// allow takes a token for addr. When none is left it returns how long until
// the next one.
func (l *ipLimiter) allow(addr netip.Addr, now time.Time) (bool, time.Duration) {
	if l == nil {
		return true, 0
	}
	if addr.Is6() {
		p, _ := addr.Prefix(64)
		addr = p.Addr()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.lastSweep) >= ipLimiterSweepEvery {
		l.sweep(now)
	}
	b := l.buckets[addr]
	if b == nil {
		b = rate.NewLimiter(l.limit, l.burst)
		l.buckets[addr] = b
	}
	if b.AllowN(now, 1) {
		return true, 0
	}
	missing := 1 - b.TokensAt(now)
	return false, time.Duration(missing / float64(l.limit) * float64(time.Second))
}

// sweep forgets the buckets that have refilled: they hold nothing a new
// bucket would not. It keeps the map as small as the set of recent clients.
func (l *ipLimiter) sweep(now time.Time) {
	for addr, b := range l.buckets {
		if b.TokensAt(now) >= float64(l.burst) {
			delete(l.buckets, addr)
		}
	}
	l.lastSweep = now
}

// retryAfterSeconds rounds a wait up to whole seconds, at least 1.
func retryAfterSeconds(d time.Duration) int {
	return max(1, int(math.Ceil(d.Seconds())))
}

// peerAddr is the address of the TCP peer of r.
func peerAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		a, _ := netip.ParseAddr(host)
		return a.Unmap()
	}
	return ap.Addr().Unmap()
}

// clientAddr is the address of the client behind r: the TCP peer, or, when
// the peer is a trusted proxy, the rightmost X-Forwarded-For entry that is
// not itself a trusted proxy. Entries left of an untrusted one are ignored:
// anyone can write them.
func clientAddr(r *http.Request, trusted []netip.Prefix) netip.Addr {
	addr := peerAddr(r)
	if !inPrefixes(addr, trusted) {
		return addr
	}
	hops := forwardedFor(r.Header)
	for i := len(hops) - 1; i >= 0; i-- {
		hop, err := netip.ParseAddr(hops[i])
		if err != nil {
			// A malformed entry: keep the last proxy that we trust.
			return addr
		}
		addr = hop.Unmap()
		if !inPrefixes(addr, trusted) {
			return addr
		}
	}
	return addr
}

// forwardedFor returns the X-Forwarded-For entries of h, left to right.
func forwardedFor(h http.Header) []string {
	var hops []string
	for _, line := range h.Values("X-Forwarded-For") {
		for _, hop := range strings.Split(line, ",") {
			if hop = strings.TrimSpace(hop); hop != "" {
				hops = append(hops, hop)
			}
		}
	}
	return hops
}

// forwardedForRemote reports a client address named by a proxy header of r
// (X-Forwarded-For, X-Real-IP or Forwarded) that is not loopback, or "" when
// there is none. Protected mode uses it to refuse requests a proxy on this
// host forwards for remote clients. Headers can be forged, but forging one
// can only get a request refused.
func forwardedForRemote(h http.Header) string {
	hops := forwardedFor(h)
	hops = append(hops, h.Values("X-Real-IP")...)
	for _, line := range h.Values("Forwarded") {
		for _, part := range strings.FieldsFunc(line, func(r rune) bool { return r == ',' || r == ';' }) {
			key, value, ok := strings.Cut(strings.TrimSpace(part), "=")
			if ok && strings.EqualFold(key, "for") {
				value = strings.Trim(value, `"`)
				if host, _, err := net.SplitHostPort(value); err == nil {
					value = host
				}
				hops = append(hops, strings.Trim(value, "[]"))
			}
		}
	}
	for _, hop := range hops {
		hop = strings.TrimSpace(hop)
		if a, err := netip.ParseAddr(hop); err != nil || !a.Unmap().IsLoopback() {
			return hop
		}
	}
	return ""
}

// fromThisHost reports whether r comes from this machine: a loopback peer,
// and no proxy header naming a client that is not loopback. These are the
// requests protected mode admits, and they are not limited per address. A
// loopback proxy that forwards for remote clients (whether its
// X-Forwarded-For is believed or not) is not "this host": its clients are
// limited by their own address, or share the proxy's when TRUSTED_PROXIES
// leaves it out.
func fromThisHost(r *http.Request) bool {
	return peerAddr(r).IsLoopback() && forwardedForRemote(r.Header) == ""
}

func inPrefixes(addr netip.Addr, prefixes []netip.Prefix) bool {
	for _, p := range prefixes {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}
