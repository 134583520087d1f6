package wsconn

import (
	"syscall"

	"github.com/gorilla/websocket"
)

// AwaitReadable returns when the socket has bytes (or an end or error) for
// the next read, or with the error that ends the wait: the read deadline
// (the pong wait) or a closed socket. An idle connection's read pump parks
// here rather than inside gorilla's read path, whose depth (about 1.7 KB of
// frames) would double the goroutine's stack to 4 KiB: parked here, its
// stack stays at (or the GC shrinks it back to) 2 KiB. It returns at once
// when gorilla's read buffer holds bytes, or when the socket cannot be
// waited on this way.
func (c *Conn) AwaitReadable() error {
	if c.in == nil || c.out.raw == nil || c.in.Buffered() > 0 {
		return nil
	}
	return c.out.raw.Read(socketReadable)
}

// Park hands an idle read side to the parking lot (park_linux.go) instead
// of waiting for the socket on a goroutine. When it reports true the caller
// returns at once, holding nothing: resume (SetResume) runs on a new
// goroutine when the socket becomes readable, its read deadline passes, or
// it is closed, and reads on where the caller stopped (AwaitReadable). It
// reports false when gorilla's read buffer holds bytes, or the connection
// cannot park; the caller then reads on itself. Like AwaitReadable, it is
// called only between messages.
func (c *Conn) Park() bool {
	if c.in == nil || c.out.resume == nil || c.in.Buffered() > 0 {
		return false
	}
	return lot.park(c.out)
}

// socketReadable reports whether a socket has something to read without
// reading it: bytes, the peer's end of stream, or an error for the next
// read to report. It is called again after each readiness notification.
func socketReadable(fd uintptr) bool {
	var b [1]byte
	_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return err != syscall.EAGAIN && err != syscall.EINTR
}

// maxControlPayload is the largest payload of a control frame (RFC 6455).
const maxControlPayload = 125

// NextControl reads the next frame itself when it is a well-formed ping or
// pong from the client (final, masked, no reserved bits, at most 125 bytes
// of payload), and returns its type (websocket.PingMessage or
// websocket.PongMessage) and unmasked payload. Anything else (a data frame,
// a close frame, a malformed frame) is left unread and NextControl returns
// 0: gorilla's NextReader reads it, with gorilla's checks and answers.
//
// It must be called only between messages (point 3 of the package
// comment): the read pump calls it after a message has been read to its end
// or before the first one. Pings and pongs read here never enter gorilla's
// read path, where the read pump would stay parked after handling them, on a
// 4 KiB stack instead of 2. It waits, on a shallow stack, for the rest of a
// control frame that has arrived in part; the read deadline applies.
func (c *Conn) NextControl() (op int, payload []byte, err error) {
	if c.in == nil {
		return 0, nil, nil
	}
	h, err := c.in.Peek(2)
	if err != nil {
		return 0, nil, err
	}
	const (
		final    = 0x80
		reserved = 0x70
		masked   = 0x80
	)
	op = int(h[0] & 0x0f)
	size := int(h[1] & 0x7f)
	if h[0]&(final|reserved) != final || h[1]&masked == 0 || size > maxControlPayload ||
		(op != websocket.PingMessage && op != websocket.PongMessage) {
		return 0, nil, nil
	}
	frame, err := c.in.Peek(2 + 4 + size)
	if err != nil {
		return 0, nil, err
	}
	key := frame[2:6]
	payload = make([]byte, size)
	for i := range payload {
		payload[i] = frame[6+i] ^ key[i&3]
	}
	_, _ = c.in.Discard(2 + 4 + size)
	return op, payload, nil
}
