package main

// SSE streams (-transport sse): each connection is a GET /events held open
// by a lean raw HTTP/1.1 client (a source-bound net.Dialer, the request
// written by hand, the status line and headers read with a small
// bufio.Reader, the chunked body decoded by httputil), parsed as
// EventSource does (simplified WHATWG rules): "id:" sets the event's id,
// "data:" lines (joined by \n) its payload, "event:" names it (the
// daemon's "resync" controls), a line starting with ":" is a comment (the
// daemon's heartbeats, counted), "retry:" and unknown fields are ignored,
// and an empty line dispatches the event. The payload and the id go
// through the same bookkeeping as a WebSocket frame's (account).

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http/httputil"
	"net/url"
	"strings"
	"time"
)

const (
	transportWS  = "ws"
	transportSSE = "sse"
)

// sseHeartbeatEvery is the daemon's SSE heartbeat period (fixed): a
// settle at least this long is meant to read RSS after heartbeats.
const sseHeartbeatEvery = 15 * time.Second

// sseBufSize is the size of a stream's read buffers: the socket's, and
// the decoded body's when it is chunked. An event's line longer than that
// is assembled in sseStream.long.
const sseBufSize = 512

// sseMaxLine bounds a line and an event's data, as the WebSocket reader's
// read limit bounds a frame.
const sseMaxLine = 1 << 20

// sseURL is the /events URL of the daemon whose /ws URL is u:
// ws://host:port/ws becomes http://host:port/events (a path ending in /ws
// has it replaced, any other gets /events appended). An http:// URL is
// taken as it is (/events when it has no path). The raw client speaks
// plain HTTP only: wss:// and https:// are refused.
func sseURL(u string) (string, error) {
	p, err := url.Parse(u)
	if err != nil {
		return "", fmt.Errorf("-url %q: %w", u, err)
	}
	if p.Host == "" {
		return "", fmt.Errorf("-url %q: no host", u)
	}
	switch p.Scheme {
	case "ws":
		p.Scheme = "http"
		p.Path = strings.TrimSuffix(strings.TrimSuffix(p.Path, "/"), "/ws") + "/events"
		p.RawPath = ""
	case "http":
		if p.Path == "" || p.Path == "/" {
			p.Path = "/events"
		}
	default:
		return "", fmt.Errorf("-url %q: -transport sse dials plain ws:// or http:// URLs only", u)
	}
	p.RawQuery, p.Fragment = "", ""
	return p.String(), nil
}

// sseTarget is an /events URL taken apart for the raw client.
type sseTarget struct {
	addr string // host:port to dial
	host string // the Host header
	path string // the request path, without query
}

func parseSSETarget(u string) (sseTarget, error) {
	p, err := url.Parse(u)
	if err != nil {
		return sseTarget{}, err
	}
	if p.Scheme != "http" || p.Host == "" {
		return sseTarget{}, fmt.Errorf("SSE URL %q: want http://host[:port]/path", u)
	}
	t := sseTarget{addr: p.Host, host: p.Host, path: p.EscapedPath()}
	if p.Port() == "" {
		t.addr = net.JoinHostPort(p.Hostname(), "80")
	}
	if t.path == "" {
		t.path = "/"
	}
	return t, nil
}

// sseHandshakeTimeout bounds the request and the response headers, as
// the WebSocket dialers' HandshakeTimeout.
const sseHandshakeTimeout = 10 * time.Second

// dialSSE opens one stream: it dials t with nd, sends GET t.path+query
// and reads the response headers, which must say 200 and
// text/event-stream. It returns the socket and the stream's parser, or an
// error (the socket then closed).
func dialSSE(ctx context.Context, nd *net.Dialer, t sseTarget, query string) (net.Conn, *sseStream, error) {
	conn, err := nd.DialContext(ctx, "tcp", t.addr)
	if err != nil {
		return nil, nil, err
	}
	deadline := time.Now().Add(sseHandshakeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	conn.SetDeadline(deadline)
	st, err := sseHandshake(conn, t, query)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	conn.SetDeadline(time.Time{})
	return conn, st, nil
}

// sseHandshake writes the request on rw and reads the response headers.
func sseHandshake(rw io.ReadWriter, t sseTarget, query string) (*sseStream, error) {
	req := "GET " + t.path + query + " HTTP/1.1\r\nHost: " + t.host + "\r\nAccept: text/event-stream\r\n\r\n"
	if _, err := io.WriteString(rw, req); err != nil {
		return nil, err
	}
	br := bufio.NewReaderSize(rw, sseBufSize)
	chunked, err := readSSEHeaders(br)
	if err != nil {
		return nil, err
	}
	return newSSEStream(br, chunked), nil
}

// readSSEHeaders reads the status line and the headers of an /events
// response from br, up to the empty line: the status must be 200 and the
// Content-Type text/event-stream. chunked says the body has
// Transfer-Encoding: chunked.
func readSSEHeaders(br *bufio.Reader) (chunked bool, err error) {
	line, err := headerLine(br)
	if err != nil {
		return false, fmt.Errorf("sse: status line: %w", err)
	}
	proto, status, _ := strings.Cut(line, " ")
	code, _, _ := strings.Cut(status, " ")
	if !strings.HasPrefix(proto, "HTTP/1.") || len(code) != 3 {
		return false, fmt.Errorf("sse: bad status line %q", line)
	}
	if code != "200" {
		return false, fmt.Errorf("sse: status %s", status)
	}
	contentType := ""
	for {
		line, err := headerLine(br)
		if err != nil {
			return false, fmt.Errorf("sse: headers: %w", err)
		}
		if line == "" {
			break
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			return false, fmt.Errorf("sse: bad header line %q", line)
		}
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		switch {
		case strings.EqualFold(name, "Content-Type"):
			contentType = value
		case strings.EqualFold(name, "Transfer-Encoding"):
			for _, coding := range strings.Split(value, ",") {
				if strings.EqualFold(strings.TrimSpace(coding), "chunked") {
					chunked = true
				}
			}
		}
	}
	if media, _, _ := strings.Cut(contentType, ";"); !strings.EqualFold(strings.TrimSpace(media), "text/event-stream") {
		return false, fmt.Errorf("sse: Content-Type %q, want text/event-stream", contentType)
	}
	return chunked, nil
}

// headerLine reads one header line (it must fit br's buffer), without
// its CRLF.
func headerLine(br *bufio.Reader) (string, error) {
	line, err := br.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		return "", errors.New("line too long")
	}
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(line), "\r\n"), nil
}

// sseStream parses an SSE body into events. After next returns an event,
// data, id (when hasID) and event hold it until the following call.
type sseStream struct {
	r     *bufio.Reader // the body's lines
	long  []byte        // a line longer than r's buffer, assembled
	data  []byte        // the data lines, joined by \n
	id    []byte        // the value of the event's id: line
	event []byte        // the value of the event's event: line ("" for a plain message)
	// hasData: a data: line was seen (an empty line dispatches only
	// then); hasID: an id: line was.
	hasData, hasID bool
	dispatched     bool // the last call returned an event: clear it first
	chunked        bool // the body is read through a chunked reader
}

// newSSEStream reads the body that follows the headers in br, decoding
// its chunks when chunked (with a second small buffer, for the lines).
func newSSEStream(br *bufio.Reader, chunked bool) *sseStream {
	r := br
	if chunked {
		// NewChunkedReader reads br as it is (a *bufio.Reader).
		r = bufio.NewReaderSize(httputil.NewChunkedReader(br), sseBufSize)
	}
	return &sseStream{r: r, chunked: chunked}
}

// sseKind is what sseStream.next read.
type sseKind int

const (
	sseEvent   sseKind = iota // an event was dispatched
	sseComment                // a comment line (a heartbeat)
)

// next reads lines until an event is dispatched or a comment line is
// read. The end of the body is io.EOF (an event without its empty line
// is dropped, as EventSource drops it).
func (p *sseStream) next() (sseKind, error) {
	if p.dispatched {
		p.reset()
	}
	for {
		line, err := p.readLine()
		if err != nil {
			return 0, err
		}
		if len(line) == 0 {
			if !p.hasData {
				// Nothing to dispatch (the retry: preamble, or a
				// heartbeat's end): forget the field values.
				p.reset()
				continue
			}
			p.dispatched = true
			return sseEvent, nil
		}
		if line[0] == ':' {
			return sseComment, nil
		}
		field, value := line, []byte(nil)
		if i := bytes.IndexByte(line, ':'); i >= 0 {
			field, value = line[:i], line[i+1:]
			if len(value) > 0 && value[0] == ' ' {
				value = value[1:]
			}
		}
		switch string(field) {
		case "data":
			if p.hasData {
				p.data = append(p.data, '\n')
			}
			if len(p.data)+len(value) > sseMaxLine {
				return 0, fmt.Errorf("sse: event data over %d bytes", sseMaxLine)
			}
			p.data = append(p.data, value...)
			p.hasData = true
		case "id":
			if bytes.IndexByte(value, 0) < 0 {
				p.id = append(p.id[:0], value...)
				p.hasID = true
			}
		case "event":
			p.event = append(p.event[:0], value...)
		}
		// retry: and unknown fields are ignored.
	}
}

// eventID is the dispatched event's id, nil when it had no id: line.
func (p *sseStream) eventID() []byte {
	if !p.hasID {
		return nil
	}
	if p.id == nil {
		return []byte{}
	}
	return p.id
}

func (p *sseStream) reset() {
	p.data, p.id, p.event = p.data[:0], p.id[:0], p.event[:0]
	p.hasData, p.hasID, p.dispatched = false, false, false
}

// readLine returns the next line without its \n (or \r\n); it is valid
// until the next call.
func (p *sseStream) readLine() ([]byte, error) {
	line, err := p.r.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		p.long = append(p.long[:0], line...)
		for err == bufio.ErrBufferFull {
			if len(p.long) > sseMaxLine {
				return nil, fmt.Errorf("sse: line over %d bytes", sseMaxLine)
			}
			line, err = p.r.ReadSlice('\n')
			p.long = append(p.long, line...)
		}
		line = p.long
	}
	if err != nil {
		return nil, err
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}

// readSSE is an SSE stream's goroutine: each event goes through account,
// as a WebSocket frame does; a named event ("resync") is a control;
// comments (heartbeats) are counted, per child and per stream. When the
// stream ends (the daemon ended the response or closed the socket, or the
// bench closed it) it closes the socket.
func (s *childState) readSSE(c *benchConn, j int) {
	defer close(c.done)
	shard := j % len(s.hists)
	for {
		kind, err := c.sse.next()
		if err != nil {
			if !s.stopping.Load() && !c.leaving.Load() {
				s.disconnects.Add(1)
			}
			c.conn.Close()
			return
		}
		if kind == sseComment {
			// The stream first: the progress reports read heartbeats
			// first.
			if !c.sawBeat {
				c.sawBeat = true
				s.beatStreams.Add(1)
			}
			s.heartbeats.Add(1)
			continue
		}
		now := time.Now().UnixNano()
		if len(c.sse.event) > 0 && string(c.sse.event) != "message" {
			s.control(append(append(append([]byte("event: "), c.sse.event...), " data: "...), c.sse.data...))
			continue
		}
		s.account(c, shard, c.sse.data, c.sse.eventID(), now)
	}
}
