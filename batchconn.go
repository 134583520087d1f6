package main

import (
	"bufio"
	"errors"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

const (
	// batchFlushBytes is how much a write pump buffers before it writes,
	// so that a long queue goes out in chunks of at most about this size.
	batchFlushBytes = 32 << 10
	// batchBufKeep is the largest batch buffer returned to the pool.
	batchBufKeep = 64 << 10
)

// batchBufs holds the buffers of batches being written; idle connections
// hold none.
var batchBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

// batchConn is the socket under a client's websocket.Conn. While the write
// pump holds it corked, the frames gorilla writes are collected in one
// buffer, and flush hands them to the kernel in a single write: one system
// call per batch instead of one per frame. Uncorked, it is the plain socket.
//
// Frames written by other goroutines (gorilla answers a protocol error or a
// client's close from the read pump) keep their place in the stream: mu is
// held across every write to the socket.
type batchConn struct {
	net.Conn
	// raw is the socket's file descriptor, for tryFlush; nil when the
	// socket has none (tests' wrapped connections).
	raw syscall.RawConn

	mu     sync.Mutex
	corked bool
	buf    *[]byte
}

func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.corked {
		*b.buf = append(*b.buf, p...)
		return len(p), nil
	}
	return b.Conn.Write(p)
}

// SetWriteDeadline is ignored while corked: nothing reaches the socket
// until flush, which sets its own deadline.
func (b *batchConn) SetWriteDeadline(t time.Time) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.corked {
		return nil
	}
	return b.Conn.SetWriteDeadline(t)
}

// cork starts collecting writes.
func (b *batchConn) cork() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.corkLocked()
}

// corkLocked corks; b.mu must be held.
func (b *batchConn) corkLocked() {
	b.corked = true
	if b.buf == nil {
		b.buf = batchBufs.Get().(*[]byte)
	}
}

// tryCork is cork unless another goroutine holds the conn, possibly in a
// write that waits for the socket: it never waits.
func (b *batchConn) tryCork() bool {
	if !b.mu.TryLock() {
		return false
	}
	defer b.mu.Unlock()
	b.corkLocked()
	return true
}

// buffered is how many bytes wait for flush.
func (b *batchConn) buffered() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf == nil {
		return 0
	}
	return len(*b.buf)
}

// flush writes what was collected in one write with the given deadline and
// uncorks. It returns how many of the collected bytes reached the socket.
func (b *batchConn) flush(deadline time.Time) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.corked = false
	if b.buf == nil {
		return 0, nil
	}
	defer b.release()
	if len(*b.buf) == 0 {
		return 0, nil
	}
	if err := b.Conn.SetWriteDeadline(deadline); err != nil {
		return 0, err
	}
	return b.Conn.Write(*b.buf)
}

// readBufferSize is the size of a connection's read buffer. Clients send
// only control frames (at most 131 bytes) and the odd small message, so it
// is small; gorilla takes the reader it is handed only when it is larger
// than 256 bytes, and 288 is an allocation size class.
const readBufferSize = 288

// tryFlush is flush without waiting: it writes what the socket takes at
// once. done reports whether that was everything and the conn is uncorked;
// otherwise the rest stays collected, still corked, for flush.
func (b *batchConn) tryFlush() (done bool, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.raw == nil || b.buf == nil {
		return false, nil
	}
	buf := *b.buf
	n := 0
	var werr error
	write := func(fd uintptr) bool {
		n, werr = syscall.Write(int(fd), buf)
		return true // never wait for the socket
	}
	err = b.raw.Write(write)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		// The deadline of an earlier write (a pump's flush, gorilla's
		// answer from the read pump) has passed, and RawConn refuses to
		// write at all until it is cleared. This write never waits, so it
		// needs none.
		if err = b.Conn.SetWriteDeadline(time.Time{}); err == nil {
			err = b.raw.Write(write)
		}
	}
	if err != nil {
		return false, err
	}
	if werr == syscall.EAGAIN || werr == syscall.EINTR {
		n, werr = 0, nil
	}
	if werr != nil {
		return false, werr
	}
	if n < len(buf) {
		*b.buf = buf[:copy(buf, buf[n:])]
		return false, nil
	}
	b.corked = false
	b.release()
	return true, nil
}

// release gives the batch buffer back to the pool; b.mu must be held.
func (b *batchConn) release() {
	buf := b.buf
	b.buf = nil
	if cap(*buf) <= batchBufKeep {
		*buf = (*buf)[:0]
		batchBufs.Put(buf)
	}
}

// hijacker hands gorilla's Upgrade the socket wrapped in a batchConn, and a
// read buffer of ours, so that the read pump can see whether gorilla has
// bytes buffered (Client.awaitReadable). The Upgrader's ReadBufferSize must
// be 0 for gorilla to use it.
type hijacker struct {
	http.ResponseWriter
	out *batchConn
	in  *bufio.Reader
}

func (h *hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	h.out = &batchConn{Conn: conn}
	if sc, ok := conn.(syscall.Conn); ok {
		h.out.raw, _ = sc.SyscallConn()
	}
	if brw.Reader.Buffered() > 0 {
		// The client sent data before the handshake's answer: gorilla
		// refuses the upgrade when it sees it.
		return h.out, brw, nil
	}
	h.in = bufio.NewReaderSize(h.out, readBufferSize)
	return h.out, bufio.NewReadWriter(h.in, brw.Writer), nil
}

// upgraded is a connection as upgrade returns it: gorilla's Conn, the
// batchConn under it and gorilla's read buffer.
type upgraded struct {
	conn *websocket.Conn
	out  *batchConn
	in   *bufio.Reader
}

// upgrade is u.Upgrade with the connection's socket in a batchConn and a
// read buffer of ours.
func upgrade(u *websocket.Upgrader, w http.ResponseWriter, r *http.Request) (upgraded, error) {
	h := &hijacker{ResponseWriter: w}
	conn, err := u.Upgrade(h, r, nil)
	if err != nil {
		return upgraded{}, err
	}
	return upgraded{conn: conn, out: h.out, in: h.in}, nil
}

// frameSize is the size on the wire of a server frame (unmasked) with n
// bytes of payload.
func frameSize(n int) int {
	switch {
	case n < 126:
		return 2 + n
	case n < 1<<16:
		return 4 + n
	default:
		return 10 + n
	}
}
