package wsconn

import (
	"fmt"
	"net/http"
)

// Stream is an HTTP connection taken over from net/http once its
// response's headers are out: a response body the daemon writes itself (an
// SSE stream), on the same corkable socket as a WebSocket's, with the same
// parking of its idle read side. Once taken over, the connection holds no
// net/http goroutine and no buffer of net/http's: an idle stream is its
// socket and the caller's state.
type Stream struct {
	socket
}

// Hijack takes w's connection over from net/http. The response's headers
// and whatever was written and flushed before stay as net/http sent them;
// what follows is the caller's to write (with net/http's framing: for a
// chunked response, chunks and the last chunk). Bytes the client sent
// after its request are dropped.
func Hijack(w http.ResponseWriter) (*Stream, error) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return nil, fmt.Errorf("take over the connection: %w", err)
	}
	return &Stream{socket{newBatchConn(conn)}}, nil
}

// Write writes p to the socket, or collects it while corked.
func (s *Stream) Write(p []byte) (int, error) { return s.out.Write(p) }

// Read reads what the client sent; it waits when there is nothing, so the
// read side calls it once the parking lot says the socket is readable.
func (s *Stream) Read(p []byte) (int, error) { return s.out.Conn.Read(p) }

// Close closes the socket (it may be called while another goroutine
// writes to it) and resumes a parked read side, which finds it closed.
func (s *Stream) Close() error { return s.out.Close() }

// Park hands the idle read side to the parking lot (park_linux.go), as
// Conn.Park does: when it reports true the caller returns at once, and
// resume (SetResume) runs on a new goroutine when the socket becomes
// readable (bytes, or the client's end) or is closed. It reports false when
// the stream cannot park; the caller then reads itself.
func (s *Stream) Park() bool {
	if s.out.resume == nil {
		return false
	}
	return lot.park(s.out)
}
