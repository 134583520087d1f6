package main

import (
	"math/bits"
)

// Latency histogram: fixed log-scale buckets over nanoseconds, HDR-like.
// Values below 64 ns get one bucket each; above that every power of two is
// split into 32 sub-buckets, so a bucket's width is at most 1/32 (~3 %) of
// its lower bound. 1024 buckets cover 0 ns .. ~2^37 ns (137 s); larger
// values land in the last bucket. The exact maximum is kept separately.

const (
	subBits    = 5
	subCount   = 1 << subBits // 32
	numBuckets = 1024
)

type histogram struct {
	counts [numBuckets]uint64
	total  uint64
	max    int64
}

// bucketOf returns the bucket index of v (ns); negative values count as 0.
func bucketOf(v int64) int {
	if v < 2*subCount {
		if v < 0 {
			return 0
		}
		return int(v)
	}
	e := bits.Len64(uint64(v)) - subBits - 1 // shift leaving 6 significant bits
	m := uint64(v) >> e                      // in [32, 64)
	idx := (e+1)*subCount + int(m-subCount)
	if idx >= numBuckets {
		return numBuckets - 1
	}
	return idx
}

// bucketHigh returns the largest value that falls into bucket idx.
func bucketHigh(idx int) int64 {
	if idx < 2*subCount {
		return int64(idx)
	}
	e := idx/subCount - 1
	m := uint64(idx%subCount + subCount)
	return int64((m+1)<<e) - 1
}

func (h *histogram) record(v int64) {
	if v < 0 {
		v = 0
	}
	h.counts[bucketOf(v)]++
	h.total++
	if v > h.max {
		h.max = v
	}
}

// merge adds sparse [index, count] pairs (as sent by a child) to h.
func (h *histogram) merge(pairs [][2]uint64, max int64) {
	for _, p := range pairs {
		if p[0] < numBuckets {
			h.counts[p[0]] += p[1]
			h.total += p[1]
		}
	}
	if max > h.max {
		h.max = max
	}
}

// sparse returns the non-empty buckets as [index, count] pairs.
func (h *histogram) sparse() [][2]uint64 {
	var out [][2]uint64
	for i, c := range h.counts {
		if c != 0 {
			out = append(out, [2]uint64{uint64(i), c})
		}
	}
	return out
}

// percentile returns an upper bound (the bucket's high edge, capped at the
// exact maximum) of the value below or at which a fraction q of the
// observations lie; 0 when empty.
func (h *histogram) percentile(q float64) int64 {
	if h.total == 0 {
		return 0
	}
	rank := uint64(q*float64(h.total) + 0.999999999)
	if rank < 1 {
		rank = 1
	}
	if rank > h.total {
		rank = h.total
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			v := bucketHigh(i)
			if v > h.max {
				v = h.max
			}
			return v
		}
	}
	return h.max
}
