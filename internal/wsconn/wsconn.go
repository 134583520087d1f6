// Package wsconn is the socket machinery under fanout's WebSocket
// connections: it hands gorilla/websocket a socket that can be corked (so a
// batch of frames leaves in one write), a small read buffer the read pump can
// look into, a write that never waits, a wait for readability on a shallow
// stack, and a reader of the client's ping and pong frames that keeps them
// out of gorilla's deep read path. An SSE stream (Stream, stream.go) gets the
// same corkable socket and the same parking of its idle read side, without
// gorilla.
//
// Everything here that depends on how gorilla/websocket works inside is
// listed below. It was checked against v1.5.3; upgrading gorilla means
// checking each point again (the package's tests pin most of them):
//
//  1. Upgrade calls the ResponseWriter's Hijack, and with
//     Upgrader.ReadBufferSize 0 it reads through the hijacked bufio.Reader
//     when that reader is larger than 256 bytes (server.go, Upgrade). It
//     refuses the upgrade when that reader already holds bytes.
//  2. Conn reads only through that bufio.Reader (Peek and Discard), so the
//     bytes it holds are exactly what gorilla has received and not parsed.
//  3. Between messages gorilla keeps no state about the stream: once a
//     message has been read to its end (io.EOF from its reader), the next
//     byte is the start of a frame, and consuming whole control frames
//     there leaves gorilla's state as it would have left it itself
//     (advanceFrame handles a control frame entirely within itself).
//  4. Every frame gorilla writes (WriteMessage, WritePreparedMessage,
//     WriteControl) goes to the net.Conn as SetWriteDeadline followed by
//     one or more Write calls, under gorilla's own write lock; frames are
//     never split across two lock holders.
//  5. gorilla writes from its reader only for a protocol error or an
//     over-limit message (a 1002 or 1009 close frame, WriteControl), and
//     for a close frame from the peer when no close handler is set (the
//     daemon sets one). After writing any close frame, every later write
//     fails with websocket.ErrCloseSent.
//  6. The frame header of a server frame is 2, 4 or 10 bytes (FrameSize):
//     the daemon counts delivered frames from the bytes a write took.
//  7. Conn's reader is not tied to a goroutine: between messages, the next
//     read may come from another goroutine than the last one (Park hands
//     the read side to a new goroutine when the socket is readable again).
//  8. Conn.Close closes the net.Conn it was given (our batchConn), and
//     gorilla closes the socket nowhere else: batchConn.Close takes it out
//     of the parking lot's epoll set before its descriptor is closed.
package wsconn

import (
	"bufio"
	"errors"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

const (
	// FlushBytes is how much a batch collects before it is written, so that
	// a long queue goes out in chunks of at most about this size.
	FlushBytes = 32 << 10
	// batchBufKeep is the largest batch buffer returned to the pool.
	batchBufKeep = 64 << 10
	// readBufferSize is the size of a connection's read buffer. Clients
	// send only control frames (at most 131 bytes) and the odd small
	// message, so it is small; gorilla takes the reader it is handed only
	// when it is larger than 256 bytes, and 288 is an allocation size class.
	readBufferSize = 288
)

// batchBufs holds the buffers of batches being written; idle connections
// hold none.
var batchBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

// Conn is one upgraded connection: gorilla's Conn, the corkable socket
// under it, and gorilla's read buffer.
type Conn struct {
	*websocket.Conn
	socket
	// in is gorilla's read buffer; nil when the client sent data before
	// the handshake's answer, and the read pump then waits in gorilla.
	in *bufio.Reader
}

// NewUpgrader returns a gorilla Upgrader set up for Upgrade: gorilla reads
// through the read buffer Upgrade hands it, and idle connections hold no
// write buffer (one is taken from a pool for each write). The caller sets
// CheckOrigin and Error.
func NewUpgrader() websocket.Upgrader {
	return websocket.Upgrader{
		ReadBufferSize:  0,
		WriteBufferSize: 4096,
		WriteBufferPool: &sync.Pool{},
	}
}

// Upgrade is u.Upgrade with the connection's socket in a batchConn and a
// read buffer of ours. u's ReadBufferSize must be 0 (NewUpgrader).
func Upgrade(u *websocket.Upgrader, w http.ResponseWriter, r *http.Request) (*Conn, error) {
	h := &hijacker{ResponseWriter: w}
	conn, err := u.Upgrade(h, r, nil)
	if err != nil {
		return nil, err
	}
	return &Conn{Conn: conn, socket: socket{h.out}, in: h.in}, nil
}

// UpgradeHeld is Upgrade with the handshake's answer (101 Switching
// Protocols) held back: it waits, corked, with whatever is written after
// it, until the caller's Flush. The caller can so make the connection
// ready to receive before the client learns it is open.
func UpgradeHeld(u *websocket.Upgrader, w http.ResponseWriter, r *http.Request) (*Conn, error) {
	h := &hijacker{ResponseWriter: w, hold: true}
	conn, err := u.Upgrade(h, r, nil)
	if err != nil {
		return nil, err
	}
	return &Conn{Conn: conn, socket: socket{h.out}, in: h.in}, nil
}

// hijacker hands gorilla's Upgrade the socket wrapped in a batchConn, and a
// read buffer of ours, so that the read pump can see whether gorilla has
// bytes buffered.
type hijacker struct {
	http.ResponseWriter
	out *batchConn
	in  *bufio.Reader
	// hold corks the socket before gorilla writes its answer (UpgradeHeld).
	hold bool
}

func (h *hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	h.out = newBatchConn(conn)
	if h.hold {
		h.out.cork()
	}
	if brw.Reader.Buffered() > 0 {
		// The client sent data before the handshake's answer: gorilla
		// refuses the upgrade when it sees it.
		return h.out, brw, nil
	}
	h.in = bufio.NewReaderSize(h.out, readBufferSize)
	return h.out, bufio.NewReadWriter(h.in, brw.Writer), nil
}

// socket is the corkable socket under a connection (a WebSocket's Conn,
// an SSE Stream) and what its holder of the write right does with it.
type socket struct {
	out *batchConn
}

// CanWriteNow reports whether TryFlush can write to the socket without
// waiting (the socket exposes its file descriptor).
func (s socket) CanWriteNow() bool { return s.out.raw != nil }

// Cork starts collecting writes for one Flush.
func (s socket) Cork() { s.out.cork() }

// TryCork is Cork unless another goroutine is writing to the socket, as
// gorilla does from a WebSocket's read pump (point 5 above), possibly in a
// write that waits for the socket: it never waits.
func (s socket) TryCork() bool { return s.out.tryCork() }

// Buffered is how many bytes wait for Flush.
func (s socket) Buffered() int { return s.out.buffered() }

// Flush writes what was collected in one write with the given deadline and
// uncorks. It returns how many of the collected bytes reached the socket.
func (s socket) Flush(deadline time.Time) (int, error) { return s.out.flush(deadline) }

// TryFlush is Flush without waiting: it writes what the socket takes at
// once. done reports whether that was everything and the socket is
// uncorked; otherwise the rest stays collected, still corked, for Flush.
func (s socket) TryFlush() (done bool, err error) { return s.out.tryFlush() }

// Discard drops what was collected and uncorks, returning the buffer to the
// pool; it is how a connection's end gives the buffer back.
func (s socket) Discard() { s.out.discard() }

// SetResume sets the read side's entry point: the function Park has the
// parking lot start on a new goroutine. It is set once, before the first
// Park.
func (s socket) SetResume(resume func()) { s.out.resume = resume }

// FrameSize is the size on the wire of a server frame (unmasked) with n
// bytes of payload.
func FrameSize(n int) int {
	switch {
	case n < 126:
		return 2 + n
	case n < 1<<16:
		return 4 + n
	default:
		return 10 + n
	}
}

// batchConn is the socket under gorilla's Conn. While corked, the frames
// gorilla writes are collected in one buffer, and flush hands them to the
// kernel in a single write: one system call per batch instead of one per
// frame. Uncorked, it is the plain socket.
//
// Frames written by other goroutines (gorilla answering a protocol error
// from the read pump) keep their place in the stream: mu is held across
// every write to the socket.
type batchConn struct {
	net.Conn
	// raw is the socket's file descriptor, for tryFlush and the read
	// side's readiness wait; nil when the socket has none.
	raw syscall.RawConn

	// mu guards corked and buf, and is held across every socket write.
	mu     sync.Mutex
	corked bool
	buf    *[]byte

	// readDeadline is the socket's read deadline (UnixNano, 0 for none),
	// for the parking lot's sweep.
	readDeadline atomic.Int64
	// The parking state (park_linux.go), guarded by lot.mu: the socket's
	// descriptor (-1 when it cannot park), whether it is in the epoll set,
	// parked or closed, and resume, the read side's entry point.
	fd         int32
	registered bool
	parked     bool
	closed     bool
	resume     func()
}

// newBatchConn wraps a hijacked connection's socket, uncorked.
func newBatchConn(conn net.Conn) *batchConn {
	b := &batchConn{Conn: conn, fd: -1}
	if sc, ok := conn.(syscall.Conn); ok {
		b.raw, _ = sc.SyscallConn()
		b.fd = socketFD(b.raw)
	}
	return b
}

// Close takes the socket out of the parking lot before closing it, and
// resumes a parked read side, which finds the socket closed.
func (b *batchConn) Close() error {
	wasParked := lot.forget(b)
	err := b.Conn.Close()
	if wasParked {
		go b.resume()
	}
	return err
}

// SetReadDeadline records the deadline for the parking lot too.
func (b *batchConn) SetReadDeadline(t time.Time) error {
	b.noteReadDeadline(t)
	return b.Conn.SetReadDeadline(t)
}

// SetDeadline records the read deadline for the parking lot too.
func (b *batchConn) SetDeadline(t time.Time) error {
	b.noteReadDeadline(t)
	return b.Conn.SetDeadline(t)
}

// noteReadDeadline keeps t (0 for none) for the parking lot's sweep.
func (b *batchConn) noteReadDeadline(t time.Time) {
	var at int64
	if !t.IsZero() {
		at = t.UnixNano()
	}
	b.readDeadline.Store(at)
}

// expired reports whether the read deadline has passed at now.
func (b *batchConn) expired(now time.Time) bool {
	at := b.readDeadline.Load()
	return at != 0 && now.UnixNano() >= at
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

func (b *batchConn) tryCork() bool {
	if !b.mu.TryLock() {
		return false
	}
	defer b.mu.Unlock()
	b.corkLocked()
	return true
}

func (b *batchConn) buffered() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf == nil {
		return 0
	}
	return len(*b.buf)
}

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

func (b *batchConn) discard() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.corked = false
	if b.buf != nil {
		b.release()
	}
}

// release gives the batch buffer back to the pool; b.mu must be held and
// b.buf set.
func (b *batchConn) release() {
	buf := b.buf
	b.buf = nil
	if cap(*buf) <= batchBufKeep {
		*buf = (*buf)[:0]
		batchBufs.Put(buf)
	}
}

// HoldWrites blocks every write to the socket, as a writer outside the
// write right does while the socket is full (gorilla answering a protocol
// error from the read pump), until release is called. For tests.
func (s socket) HoldWrites() (release func()) {
	s.out.mu.Lock()
	return s.out.mu.Unlock
}

// SetSendBuffer sets the socket's send buffer (SO_SNDBUF), which turns off
// the kernel's tuning of it: for tests whose burst must outgrow the socket
// buffers on any kernel.
func (s socket) SetSendBuffer(bytes int) error {
	if s.out.raw == nil {
		return errors.New("wsconn: the socket has no file descriptor")
	}
	var serr error
	if err := s.out.raw.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, bytes)
	}); err != nil {
		return err
	}
	return serr
}
