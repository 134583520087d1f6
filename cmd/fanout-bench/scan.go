package main

import (
	"bytes"
	"math"
	"strconv"
)

// benchEvent is the part of a published event a child needs.
type benchEvent struct {
	user   []byte // aliases the read buffer
	seq    int64
	sentNs int64
	phase  int
}

var (
	keyUser  = []byte(`"user":"`)
	keySeq   = []byte(`"seq":`)
	keySent  = []byte(`"sent_ns":`)
	keyPhase = []byte(`"ph":`)
)

// scanEvent hand-scans the fields of an event built by appendEvent. It does
// not validate JSON; it only finds the few fields. ok is false when one is
// missing or malformed.
func scanEvent(b []byte) (ev benchEvent, ok bool) {
	i := bytes.Index(b, keyUser)
	if i < 0 {
		return ev, false
	}
	rest := b[i+len(keyUser):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return ev, false
	}
	ev.user = rest[:j]
	var good bool
	if ev.seq, good = scanInt(b, keySeq); !good {
		return ev, false
	}
	if ev.sentNs, good = scanInt(b, keySent); !good {
		return ev, false
	}
	ph, good := scanInt(b, keyPhase)
	if good {
		ev.phase = int(ph)
	}
	return ev, true
}

func scanInt(b, key []byte) (int64, bool) {
	i := bytes.Index(b, key)
	if i < 0 {
		return 0, false
	}
	var n int64
	digits := 0
	for _, c := range b[i+len(key):] {
		if c < '0' || c > '9' {
			break
		}
		d := int64(c - '0')
		if n > (math.MaxInt64-d)/10 {
			return 0, false // would overflow
		}
		n = n*10 + d
		digits++
	}
	return n, digits > 0
}

// appendEvent appends one event padded with a "pad" field so the whole JSON
// is payload bytes long (or minimal when payload is smaller than that).
func appendEvent(dst []byte, user string, seq, sentNs int64, phase, payload int) []byte {
	start := len(dst)
	dst = append(dst, `{"type":"bench","user":"`...)
	dst = append(dst, user...)
	dst = append(dst, `","seq":`...)
	dst = strconv.AppendInt(dst, seq, 10)
	dst = append(dst, `,"sent_ns":`...)
	dst = strconv.AppendInt(dst, sentNs, 10)
	dst = append(dst, `,"ph":`...)
	dst = strconv.AppendInt(dst, int64(phase), 10)
	const padOverhead = len(`,"pad":""}`)
	if n := payload - (len(dst) - start) - padOverhead; n >= 0 {
		dst = append(dst, `,"pad":"`...)
		for k := 0; k < n; k++ {
			dst = append(dst, 'x')
		}
		dst = append(dst, '"')
	}
	return append(dst, '}')
}
