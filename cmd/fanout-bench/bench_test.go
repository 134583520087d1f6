package main

import (
	"encoding/json"
	"math"
	"math/rand"
	"sort"
	"testing"
	"time"
)

func TestScanEventRoundTrip(t *testing.T) {
	now := time.Now().UnixNano()
	for _, payload := range []int{0, 50, 256, 1000} {
		b := appendEvent(nil, "u123", 42, now, 2, payload)
		if payload >= 100 && len(b) != payload {
			t.Errorf("payload %d: event is %d bytes", payload, len(b))
		}
		var v map[string]any
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatalf("payload %d: not JSON: %v: %s", payload, err, b)
		}
		if v["type"] != "bench" || v["user"] != "u123" {
			t.Errorf("fields: %s", b)
		}
		ev, ok := scanEvent(b)
		if !ok || string(ev.user) != "u123" || ev.seq != 42 || ev.sentNs != now || ev.phase != 2 {
			t.Errorf("payload %d: scan %+v %v of %s", payload, ev, ok, b)
		}
	}
}

func TestScanEventRejects(t *testing.T) {
	for _, s := range []string{
		``, `{}`, `{"type":"x"}`,
		`{"user":"u1","seq":1}`,                                // no sent_ns
		`{"user":"u1","sent_ns":5}`,                            // no seq
		`{"user":"u1","seq":x,"sent_ns":2}`,                    // not a number
		`{"user":"u1","seq":1,"sent_ns":99999999999999999999}`, // overflow
	} {
		if ev, ok := scanEvent([]byte(s)); ok {
			t.Errorf("%q: accepted as %+v", s, ev)
		}
	}
	ev, ok := scanEvent([]byte(`{"type":"bench","user":"alice","seq":7,"sent_ns":9223372036854775807}`))
	if !ok || ev.sentNs != math.MaxInt64 || ev.phase != 0 {
		t.Errorf("max int64: %+v %v", ev, ok)
	}
}

func TestBuckets(t *testing.T) {
	prev := -1
	for v := int64(0); v < 1<<20; v++ {
		b := bucketOf(v)
		if b < prev || b > prev+1 {
			t.Fatalf("bucketOf(%d) = %d after %d", v, b, prev)
		}
		if v > bucketHigh(b) || (b > 0 && v <= bucketHigh(b-1)) {
			t.Fatalf("%d not in bucket %d (high %d)", v, b, bucketHigh(b))
		}
		prev = b
	}
	for _, v := range []int64{1e9, 1e10, 3e10} {
		b := bucketOf(v)
		if v > bucketHigh(b) || v <= bucketHigh(b-1) {
			t.Errorf("%d not in bucket %d", v, b)
		}
		if rel := float64(bucketHigh(b)-v) / float64(v); rel > 1.0/32 {
			t.Errorf("%d: bucket too wide (%.3f)", v, rel)
		}
	}
	if bucketOf(math.MaxInt64) != numBuckets-1 || bucketOf(-5) != 0 {
		t.Error("clamping")
	}
}

func TestPercentiles(t *testing.T) {
	var h histogram
	if h.percentile(0.5) != 0 {
		t.Fatal("empty histogram")
	}
	r := rand.New(rand.NewSource(1))
	var vals []int64
	for i := 0; i < 100000; i++ {
		v := int64(math.Exp(r.Float64()*math.Log(1e10/1e3))) * 1e3 // 1 µs .. 10 s, log-uniform
		vals = append(vals, v)
		h.record(v)
	}
	sort.Slice(vals, func(i, j int) bool { return vals[i] < vals[j] })
	for _, q := range []float64{0.5, 0.99, 0.999, 1} {
		exact := vals[int(math.Ceil(q*float64(len(vals))))-1]
		got := h.percentile(q)
		if got < exact || float64(got-exact) > float64(exact)/32+1 {
			t.Errorf("p%v = %d, exact %d", q*100, got, exact)
		}
	}
	if h.max != vals[len(vals)-1] || h.percentile(1) != h.max {
		t.Errorf("max %d, want %d", h.max, vals[len(vals)-1])
	}
	// Merging sparse buckets (as children send them) gives the same result.
	var m histogram
	m.merge(h.sparse(), h.max)
	if m.total != h.total || m.percentile(0.99) != h.percentile(0.99) {
		t.Error("merge differs")
	}
	// Small exact case: 1..100 ns, each its own bucket below 64.
	var s histogram
	for v := int64(1); v <= 100; v++ {
		s.record(v)
	}
	if s.percentile(0.5) != 50 || s.percentile(0.01) != 1 {
		t.Errorf("small: p50 %d p1 %d", s.percentile(0.5), s.percentile(0.01))
	}
}
